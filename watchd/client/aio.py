"""The asyncio client: a stream under the sans-IO core, read by whichever task is waiting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
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
    MAX_LINE_BYTES,
    ClientError,
    JSONDict,
    ServerError,
    connect_error,
    not_connected_error,
    timeout_error,
)
from watchd.client.follow import Backoff, FollowerState, FollowOptions, RetryHook, follow_options
from watchd.client.frames import Message
from watchd.protocol import Metrics, Ping, Status


class AsyncClient:
    """An asyncio connection to watchd: `async with AsyncClient(path) as c` or `await connect()`."""

    def __init__(self, socket_path: str | None = None, timeout: float | None = 10.0) -> None:
        self.socket_path = resolve_socket_path(socket_path)
        self.timeout = timeout
        self.hello: JSONDict = {}
        self._core = ClientCore(self.socket_path)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls, socket_path: str | None = None, timeout: float | None = 10.0
    ) -> AsyncClient:
        """A connected client that has read the daemon's greeting."""
        client = cls(socket_path, timeout)
        await client.open()
        return client

    async def open(self) -> None:
        """Connect and read the greeting."""
        try:
            async with asyncio.timeout(self.timeout):
                # Lines are framed, and their length bounded, by the core; the stream's limit
                # only caps what it buffers before it stops reading from the socket.
                self._reader, self._writer = await asyncio.open_unix_connection(
                    self.socket_path, limit=MAX_LINE_BYTES
                )
                self.hello = check_hello(await self._read_message(), self.socket_path)
        except TimeoutError as e:
            await self.close()
            raise timeout_error(self.socket_path, self.timeout) from e
        except OSError as e:
            await self.close()
            raise connect_error(self.socket_path, e) from e
        except BaseException:
            await self.close()
            raise

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection."""
        self._core.close()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            # The peer may have gone first; the connection is closed either way.
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    aclose = close

    async def ping(self) -> None:
        """Ask the daemon for a pong."""
        await self._request(Ping(), "pong")

    async def status(self) -> JSONDict:
        """The daemon's status object."""
        return await self._request(Status(), "status")

    async def metrics(self) -> str:
        """The daemon's metrics, in the Prometheus text format (as this user may see them)."""
        text = (await self._request(Metrics(), "metrics")).get("text")
        return text if isinstance(text, str) else ""

    # The filters are positional too, in the documented order, like the wire's field list.
    async def subscribe(  # noqa: PLR0917
        self,
        watch: str | Iterable[str] | None = None,
        events: str | Iterable[str] | None = None,
        paths: PathsArg = None,
        glob: str | Iterable[str] | None = None,
        since: int | None = None,
        instance: str | None = None,
        *,
        fields: str | Iterable[str] | None = None,
    ) -> AsyncSubscription:
        """Subscribe; returns, once the daemon confirmed, an async iterator of message dicts.
        fields: as for the synchronous Client.subscribe."""
        return await self.subscribe_to(
            subscribe_request(watch, events, paths, glob, since, instance, fields=fields)
        )

    async def subscribe_to(self, request: SubscribeRequest) -> AsyncSubscription:
        """Subscribe with a request built by watchd.client.core.subscribe_request; in frames
        where the daemon offers them (the iterator still yields one event at a time)."""
        request = for_connection(request, self.hello)
        reply = await self._request(request, "subscribed")
        return AsyncSubscription(self, *subscribed(reply, request))

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
    ) -> AsyncFollower:
        """A subscription that follows the daemon through restarts; see AsyncFollower.

        Not a coroutine: it connects on the first read, and again (after a backoff) whenever
        the connection fails, resuming after the last message it handed out.
        """
        request = subscribe_request(watch, events, paths, glob, since, instance)
        return AsyncFollower(request, follow_options(socket_path, timeout, backoff, on_retry))

    async def unsubscribe(self, subscription: str) -> None:
        """End a subscription; its unread messages are dropped."""
        await self._request(self._core.unsubscribe(subscription), "unsubscribed")

    async def _request(self, request: ClientRequest, expected: str) -> JSONDict:
        self._core.check_usable()
        if self._writer is None:
            raise not_connected_error(self.socket_path)
        # Ids are taken and lines written with no await between, so the wire order matches.
        with self._core.exchange(request, expected) as exchange:
            try:
                async with asyncio.timeout(self.timeout):
                    self._writer.write(exchange.line)
                    try:
                        await self._writer.drain()
                    except OSError as e:
                        raise self._core.lost() from e
                    reply = await self._wait(lambda: self._core.router.take_reply(exchange.rid))
            except TimeoutError as e:
                raise timeout_error(self.socket_path, self.timeout) from e
            return exchange.answer(reply)

    async def next_message(self, sid: str, timeout: float | None) -> Message | None:
        """The next pushed message of subscription sid; None once timeout seconds passed."""
        self._core.check_usable()

        def ready() -> Message | None:
            if not self._core.router.is_open(sid):
                raise StopAsyncIteration
            return self._core.router.pop(sid)

        try:
            async with asyncio.timeout(timeout):
                return await self._wait(ready)
        except TimeoutError:
            return None

    async def _wait(self, ready: Callable[[], Message | None]) -> Message:
        # Whoever holds the lock reads one message and routes it, then lets the others look: a
        # reply read by a subscription's reader is found by its caller on the next pass.
        while True:
            if (found := ready()) is not None:
                return found
            async with self._read_lock:
                if (found := ready()) is not None:
                    return found
                self._core.router.feed(await self._read_message())

    async def _read_message(self) -> Message:
        assert self._reader is not None
        while (message := self._core.next_message()) is None:
            try:
                # A bounded read: the core's framer refuses a line over MAX_LINE_BYTES.
                chunk = await self._reader.read(READ_BYTES)
            except OSError as e:
                raise self._core.lost() from e
            self._core.receive(chunk)
        return message


class AsyncMessages(AsyncIterator[JSONDict]):
    """`async for` and get() over get_message(), the same for a subscription and a follower."""

    async def get_message(self, timeout: float | None = None) -> Message | None:
        """The next message, or None when none came in time; StopAsyncIteration once closed."""
        raise NotImplementedError

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> JSONDict:
        message = await self.get_message()
        assert message is not None  # no timeout: only StopAsyncIteration or an error ends it
        return message.data

    async def get(self, timeout: float | None = None) -> JSONDict | None:
        """The next message, or None when none came within timeout seconds (or once closed)."""
        try:
            message = await self.get_message(timeout)
        except StopAsyncIteration:
            return None
        return None if message is None else message.data


class AsyncSubscription(SubscriptionState, AsyncMessages):
    """The messages of one subscription, as dicts, for `async for`."""

    def __init__(self, client: AsyncClient, subscription: str, seq: int, since: int | None) -> None:
        super().__init__(subscription, seq, since)
        self.client = client

    async def get_message(self, timeout: float | None = None) -> Message | None:
        """Like get(), with the raw line; raises StopAsyncIteration after unsubscribe."""
        return self._note(await self.client.next_message(self.subscription, timeout))

    async def close(self) -> None:
        """Unsubscribe."""
        await self.client.unsubscribe(self.subscription)


class AsyncFollower(FollowerState, AsyncMessages):
    """The asyncio twin of watchd.client.Follower: a subscription that follows the daemon.

    It runs in the task that iterates it (no task of its own); aclose() from another task ends
    that iteration.
    """

    def __init__(self, request: SubscribeRequest, options: FollowOptions) -> None:
        super().__init__(request, options)
        self._client: AsyncClient | None = None
        self._sub: AsyncSubscription | None = None
        self._stop = asyncio.Event()

    @property
    def hello(self) -> JSONDict:
        """The greeting of the current connection ({} while there is none)."""
        return {} if self._client is None else self._client.hello

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def get_message(self, timeout: float | None = None) -> Message | None:
        """Like get(), with the raw line; raises StopAsyncIteration after aclose()."""
        try:
            async with asyncio.timeout(timeout):
                return await self._next()
        except TimeoutError:
            return None

    async def start(self) -> None:
        """Connect and subscribe now; see Follower.start."""
        with contextlib.suppress(StopAsyncIteration):  # aclose() came meanwhile
            while self._sub is None and not self._stop.is_set():
                await self._wait_turn()
                await self._attempt()
        if self._stop.is_set():
            await self._release()

    async def aclose(self) -> None:
        """Stop following: close the connection; an iteration waiting in another task ends."""
        self._stop.set()
        if self._client is not None:
            await self._client.close()

    close = aclose

    async def _next(self) -> Message:
        while not self._stop.is_set():
            if self._core.pending:
                return self._core.pending.popleft()
            if self._sub is None:
                await self._wait_turn()
                await self._attempt()
                continue
            try:
                message = await self._sub.get_message()
            except ClientError as e:
                await self._failed(e)
                continue
            assert message is not None  # no timeout given
            if self._core.admit(message):
                return message
        await self._release()  # an attempt under way when aclose() came may have connected
        raise StopAsyncIteration

    async def _wait_turn(self) -> None:
        """Wait out the backoff, or until aclose()."""
        left = self._core.wait_left()
        if left:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._stop.wait()

    async def _attempt(self) -> None:
        """Connect and subscribe, resuming if the daemon can; a failure schedules the next."""
        if self._stop.is_set():
            return
        client = self._client = AsyncClient(self.socket_path, self.timeout)
        try:
            await client.open()
            request = self._resuming(client.hello)
            try:
                sub = await client.subscribe_to(request)
            except ServerError as e:
                sub = await client.subscribe_to(self._after_refusal(e, request))
        except ClientError as e:
            await self._failed(e)
            return
        except BaseException:
            # Cancelled (a get() timeout) mid-attempt: the next read starts a fresh one.
            await self._release()
            raise
        self._sub = sub
        self._subscribed(client.hello, sub)

    async def _release(self) -> None:
        client, self._client, self._sub = self._client, None, None
        if client is not None:
            await client.close()

    async def _failed(self, error: ClientError) -> None:
        """Drop the connection; raise error unless it is retried after a backoff."""
        await self._release()
        if self._stop.is_set():
            raise StopAsyncIteration from error  # aclose() ended the connection under us
        self._schedule(error)
