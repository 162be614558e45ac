"""The blocking client: a socket under the sans-IO core.

Reading happens only on demand, when a caller waits for a reply or for the next pushed message,
so a consumer that stops reading leaves the data in the kernel and the daemon's drop policy
applies, instead of memory growing here.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Self

from watchd.client.core import (
    READ_BYTES,
    ClientCore,
    ClientRequest,
    PathsArg,
    SubscribeRequest,
    SubscriptionState,
    check_hello,
    for_connection,
    resolve_socket_path,
    subscribe_request,
    subscribed,
)
from watchd.client.errors import (
    ClientError,
    JSONDict,
    ServerError,
    connect_error,
    connect_timeout_error,
    timeout_error,
)
from watchd.client.follow import Backoff, FollowerState, FollowOptions, RetryHook, follow_options
from watchd.client.frames import Message
from watchd.protocol import Metrics, Ping, Status


class Client:
    """A blocking connection to watchd; a context manager. Not safe to share between threads."""

    def __init__(self, socket_path: str | None = None, timeout: float | None = 10.0) -> None:
        self.socket_path = resolve_socket_path(socket_path)
        self.timeout = timeout
        self._core = ClientCore(self.socket_path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._connect()
            self.hello: JSONDict = check_hello(
                self._read_message(self._deadline()), self.socket_path
            )
        except BaseException:
            self._sock.close()
            raise

    def _connect(self) -> None:
        try:
            self._sock.connect(self.socket_path)
        except TimeoutError as e:
            raise connect_timeout_error(self.socket_path, self.timeout) from e
        except OSError as e:
            raise connect_error(self.socket_path, e) from e

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; in a forked child this closes only the child's copy."""
        # No shutdown(): after a fork it would cut the parent's connection too.
        self._sock.close()
        self._core.close()

    def ping(self) -> None:
        """Ask the daemon for a pong."""
        self._request(Ping(), "pong")

    def status(self) -> JSONDict:
        """The daemon's status object."""
        return self._request(Status(), "status")

    def metrics(self) -> str:
        """The daemon's metrics, in the Prometheus text format (as this user may see them)."""
        text = self._request(Metrics(), "metrics").get("text")
        return text if isinstance(text, str) else ""

    # The filters are positional too, in the documented order, like the wire's field list.
    def subscribe(  # noqa: PLR0917
        self,
        watch: str | Iterable[str] | None = None,
        events: str | Iterable[str] | None = None,
        paths: PathsArg = None,
        glob: str | Iterable[str] | None = None,
        since: int | None = None,
        instance: str | None = None,
        *,
        fields: str | Iterable[str] | None = None,
    ) -> Subscription:
        """Subscribe; returns, once the daemon confirmed, an iterator of event and notice dicts.

        fields: the event members wanted (see docs/protocol.md), where the daemon offers them
        (its hello lists "fields"); events then carry those alone, besides type and
        subscription. None: every member."""
        return self.subscribe_to(
            subscribe_request(watch, events, paths, glob, since, instance, fields=fields))

    def subscribe_to(self, request: SubscribeRequest) -> Subscription:
        """Subscribe with a request built by watchd.client.core.subscribe_request; in frames
        where the daemon offers them (the iterator still yields one event at a time)."""
        request = for_connection(request, self.hello)
        return Subscription(self, *subscribed(self._request(request, "subscribed"), request))

    # The filters are positional too, in the same order as subscribe's.
    @classmethod
    def follow(  # noqa: PLR0917
        cls,
        watch: str | Iterable[str] | None = None,
        events: str | Iterable[str] | None = None,
        paths: PathsArg = None,
        glob: str | Iterable[str] | None = None,
        since: int | None = None,
        instance: str | None = None,
        *,
        socket_path: str | None = None,
        timeout: float | None = 10.0,
        backoff: Backoff | None = None,
        on_retry: RetryHook | None = None,
    ) -> Follower:
        """A subscription that follows the daemon through restarts; see Follower.

        It connects on the first read, and again (after a backoff) whenever the connection
        fails, resuming after the last message it handed out.
        """
        request = subscribe_request(watch, events, paths, glob, since, instance)
        return Follower(request, follow_options(socket_path, timeout, backoff, on_retry))

    def unsubscribe(self, subscription: str) -> None:
        """End a subscription; its unread messages are dropped."""
        self._request(self._core.unsubscribe(subscription), "unsubscribed")

    def _request(self, request: ClientRequest, expected: str) -> JSONDict:
        with self._core.exchange(request, expected) as exchange:
            deadline = self._deadline()
            self._send(exchange.line, deadline)
            while (reply := self._core.router.take_reply(exchange.rid)) is None:
                self._core.router.feed(self._read_message(deadline))
            return exchange.answer(reply)

    def next_message(self, sid: str, timeout: float | None) -> Message | None:
        """The next pushed message of subscription sid; None once timeout seconds passed."""
        self._core.check_usable()
        deadline = None if timeout is None else time.monotonic() + timeout
        while (message := self._core.router.pop(sid)) is None:
            if not self._core.router.is_open(sid):
                raise StopIteration
            try:
                self._core.router.feed(self._read_message(deadline, quiet_timeout=True))
            except TimeoutError:
                return None
        return message

    def _deadline(self) -> float | None:
        return None if self.timeout is None else time.monotonic() + self.timeout

    def _send(self, line: bytes, deadline: float | None) -> None:
        try:
            self._sock.settimeout(_remaining(deadline))
            self._sock.sendall(line)
        except TimeoutError as e:
            raise timeout_error(self.socket_path, self.timeout) from e
        except OSError as e:
            raise self._core.lost() from e

    def _read_message(self, deadline: float | None, quiet_timeout: bool = False) -> Message:
        """Read one message; TimeoutError passes through only when quiet_timeout is set."""
        while (message := self._core.next_message()) is None:
            try:
                self._sock.settimeout(_remaining(deadline))
                chunk = self._sock.recv(READ_BYTES)
            except TimeoutError as e:
                if quiet_timeout:
                    raise
                raise timeout_error(self.socket_path, self.timeout) from e
            except OSError as e:
                raise self._core.lost() from e
            self._core.receive(chunk)
        return message


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


class Messages(Iterator[JSONDict]):
    """Iteration and get() over get_message(), the same for a Subscription and a Follower."""

    def get_message(self, timeout: float | None = None) -> Message | None:
        """The next message, or None when none came in time; StopIteration once closed."""
        raise NotImplementedError

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> JSONDict:
        message = self.get_message()
        assert message is not None  # no timeout: only StopIteration or an error ends the wait
        return message.data

    def get(self, timeout: float | None = None) -> JSONDict | None:
        """The next message, or None when none came within timeout seconds (or once closed)."""
        try:
            message = self.get_message(timeout)
        except StopIteration:
            return None
        return None if message is None else message.data


class Subscription(SubscriptionState, Messages):
    """The messages of one subscription, as dicts; iterating blocks until the next one."""

    def __init__(self, client: Client, subscription: str, seq: int, since: int | None) -> None:
        super().__init__(subscription, seq, since)
        self.client = client

    def get_message(self, timeout: float | None = None) -> Message | None:
        """Like get(), with the raw line; raises StopIteration after unsubscribe."""
        return self._note(self.client.next_message(self.subscription, timeout))

    def close(self) -> None:
        """Unsubscribe."""
        self.client.unsubscribe(self.subscription)


class Follower(FollowerState, Messages):
    """A subscription that follows the daemon through restarts and dropped connections.

    Iterating yields event and notice dicts in order, none twice (by seq). After a failure it
    connects again after a backoff and subscribes with `since` = the last seq it yielded and
    the instance it saw. When the daemon cannot resume (another instance, or since_expired), it
    yields an `overflow` notice with `"resync": false` (rescan) once it is subscribed again.
    Errors that another attempt would meet again are raised (see watchd.client.follow.retryable).
    close(), also from another thread, ends the iteration; nothing runs in the background.
    """

    def __init__(self, request: SubscribeRequest, options: FollowOptions) -> None:
        super().__init__(request, options)
        self._client: Client | None = None
        self._sub: Subscription | None = None
        self._stop = threading.Event()

    @property
    def hello(self) -> JSONDict:
        """The greeting of the current connection ({} while there is none)."""
        return {} if self._client is None else self._client.hello

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def get_message(self, timeout: float | None = None) -> Message | None:
        """Like get(), with the raw line; raises StopIteration after close()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            if self._core.pending:
                return self._core.pending.popleft()
            if self._sub is None:
                if not self._wait_turn(deadline):
                    if self._stop.is_set():
                        break
                    return None
                self._attempt()
                continue
            try:
                message = self._sub.get_message(_left(deadline))
            except ClientError as e:
                self._failed(e)
                continue
            if message is None:
                return None
            if self._core.admit(message):
                return message
        self._release()  # an attempt that was under way when close() came may have connected
        raise StopIteration

    def start(self) -> None:
        """Connect and subscribe now, waiting out failures as reading would.

        On return the subscription is in place: a scan made now, plus the messages that follow,
        is complete. Raises what reading would raise; does nothing when already subscribed.
        """
        with contextlib.suppress(StopIteration):  # close() came meanwhile
            while self._sub is None and not self._stop.is_set():
                if self._wait_turn(None):
                    self._attempt()
        if self._stop.is_set():
            self._release()

    def close(self) -> None:
        """Stop following: close the connection; a blocked iteration ends."""
        self._stop.set()
        client = self._client
        if client is not None:
            # shutdown wakes a thread blocked reading it; close alone would not. (Not
            # connected any more: nothing to wake.)
            with contextlib.suppress(OSError):
                client._sock.shutdown(socket.SHUT_RDWR)
            client.close()

    def _wait_turn(self, deadline: float | None) -> bool:
        """Wait out the backoff, or until deadline or close(); whether to attempt now."""
        left = self._core.wait_left()
        if left and deadline is not None and deadline - time.monotonic() < left:
            self._stop.wait(max(0.0, deadline - time.monotonic()))
            return False
        if left:
            self._stop.wait(left)
        return not self._stop.is_set()

    def _attempt(self) -> None:
        """Connect and subscribe, resuming if the daemon can; a failure schedules the next."""
        try:
            client = self._client = Client(self.socket_path, self.timeout)
            request = self._resuming(client.hello)
            try:
                sub = client.subscribe_to(request)
            except ServerError as e:
                sub = client.subscribe_to(self._after_refusal(e, request))
        except ClientError as e:
            self._failed(e)
            return
        self._sub = sub
        self._subscribed(client.hello, sub)

    def _release(self) -> None:
        client, self._client, self._sub = self._client, None, None
        if client is not None:
            client.close()

    def _failed(self, error: ClientError) -> None:
        """Drop the connection; raise error unless it is retried after a backoff."""
        self._release()
        if self._stop.is_set():
            raise StopIteration from error  # close() ended the connection under us
        self._schedule(error)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
