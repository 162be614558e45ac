"""The blocking client: a socket under the sans-IO core.

Reading happens only on demand, when a caller waits for a reply or for the next pushed message,
so a consumer that stops reading leaves the data in the kernel and the daemon's drop policy
applies, instead of memory growing here.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Self

from watchd.client.core import (
    READ_BYTES,
    ClientCore,
    ClientRequest,
    PathsArg,
    SubscriptionState,
    check_hello,
    confirmation,
    resolve_socket_path,
    subscribe_request,
)
from watchd.client.errors import JSONDict, connect_error, connect_timeout_error, timeout_error
from watchd.client.frames import Message, wants_batch
from watchd.protocol import Ping, Status


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

    # The filters are positional too, in the documented order, like the wire's field list.
    def subscribe(  # noqa: PLR0917
        self,
        watch: str | Iterable[str] | None = None,
        events: str | Iterable[str] | None = None,
        paths: PathsArg = None,
        glob: str | Iterable[str] | None = None,
        since: int | None = None,
        instance: str | None = None,
    ) -> Subscription:
        """Subscribe; returns, once the daemon confirmed, an iterator of event and notice dicts."""
        request = subscribe_request(watch, events, paths, glob, since, instance,
                                    batch=wants_batch(self.hello))
        reply = self._request(request, "subscribed")
        return Subscription(self, *confirmation(reply), since)

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


class Subscription(SubscriptionState, Iterator[JSONDict]):
    """The messages of one subscription, as dicts; iterating blocks until the next one."""

    def __init__(self, client: Client, subscription: str, seq: int, since: int | None) -> None:
        super().__init__(subscription, seq, since)
        self.client = client

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> JSONDict:
        message = self.get_message()
        assert message is not None  # no timeout: only StopIteration or an error ends the wait
        return message.data

    def get(self, timeout: float | None = None) -> JSONDict | None:
        """The next message, or None when none came within timeout seconds."""
        try:
            message = self.get_message(timeout)
        except StopIteration:
            return None
        return None if message is None else message.data

    def get_message(self, timeout: float | None = None) -> Message | None:
        """Like get(), with the raw line; raises StopIteration after unsubscribe."""
        return self._note(self.client.next_message(self.subscription, timeout))

    def close(self) -> None:
        """Unsubscribe."""
        self.client.unsubscribe(self.subscription)
