"""Client and AsyncClient: talk to a running watchd over its Unix socket.

Both clients share one design: a single reader sorts every incoming line into either a reply
(matched to its request by id; replies come in request order) or a pushed message (an event or
a notice), which is queued for the subscription it names. Reading happens only on demand, when a
caller waits for a reply or for the next pushed message, so a consumer that stops reading leaves
the data in the kernel and the daemon's drop policy applies, instead of memory growing here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from watchd.errors import WatchdError
from watchd.protocol import PROTOCOL_VERSION, ProtocolError, decode_message, encode

__all__ = [
    "DEFAULT_SOCKET",
    "SOCKET_ENV",
    "AsyncClient",
    "AsyncSubscription",
    "Client",
    "ClientError",
    "Message",
    "ServerError",
    "Subscription",
    "resolve_socket_path",
]

DEFAULT_SOCKET = "/run/watchd/watchd.sock"
SOCKET_ENV = "WATCHD_SOCKET"

# Event lines carry paths of up to PATH_MAX bytes in which every byte that is not UTF-8 grows to a
# six-character escape; 16 MiB leaves ample room and still bounds what a confused peer can make
# us buffer.
MAX_LINE_BYTES = 16 * 1024 * 1024
_RECV_BYTES = 65536

# Messages the daemon pushes on its own; everything else answers a request.
PUSHED_TYPES = frozenset({"event", "overflow", "dropped", "watch_lost", "watch_restored",
                          "watch_degraded"})

JSONDict = dict[str, Any]
PathLikeArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]
# One path or several; bytes and PathLike are accepted so that names that are not UTF-8 work.
PathsArg = PathLikeArg | Iterable[PathLikeArg] | None


class ClientError(WatchdError):
    """The daemon could not be reached or the connection failed; the message says what to do."""

    def __init__(self, message: str, socket_path: str | None = None) -> None:
        self.socket_path = socket_path
        super().__init__(message)


class ServerError(ClientError):
    """The daemon answered a request with an error reply."""

    def __init__(self, reply: JSONDict, socket_path: str | None = None) -> None:
        self.reply = reply
        self.code = str(reply.get("code", "unknown"))
        self.message = str(reply.get("message", ""))
        super().__init__(f"{self.code}: {self.message}", socket_path)


@dataclass(frozen=True, slots=True)
class Message:
    """One line from the daemon: the bytes exactly as received, and the decoded object."""

    raw: bytes
    data: JSONDict


def resolve_socket_path(socket_path: str | None = None) -> str:
    """The socket to use: the argument, else $WATCHD_SOCKET, else DEFAULT_SOCKET."""
    if socket_path:
        return socket_path
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def connect_error(socket_path: str, error: OSError) -> ClientError:
    """A ClientError for a failed connect, with a hint that fits the errno."""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOENT:
        hint = f"is watchd running? start it or set {SOCKET_ENV} to its socket"
    elif error.errno in (errno.EACCES, errno.EPERM):
        hint = f"you need to be in the socket's group (see: ls -l {socket_path}) or run as root"
    elif error.errno == errno.ECONNREFUSED:
        hint = "nothing is listening there: watchd is not running (stale socket?); start it"
    elif error.errno == errno.ENOTDIR:
        hint = f"check the path, or set {SOCKET_ENV} to the socket of a running watchd"
    else:
        hint = f"check that watchd is running and {SOCKET_ENV} names its socket"
    return ClientError(f"cannot connect to watchd at {socket_path}: {reason}; {hint}", socket_path)


def decode_line(raw: bytes, socket_path: str) -> Message:
    """Decode one line from the daemon; anything but a JSON object is a ClientError."""
    try:
        data = decode_message(raw)
    except ProtocolError as e:
        raise ClientError(
            f"{socket_path} sent a line watchd would not send ({e.message}); "
            "is it really watchd's socket?",
            socket_path,
        ) from e
    return Message(raw, data)


def check_hello(message: Message, socket_path: str) -> JSONDict:
    """The greeting, validated; an error greeting (too_many_clients) raises ServerError."""
    data = message.data
    kind = data.get("type")
    if kind == "error":
        raise ServerError(data, socket_path)
    if kind != "hello" or data.get("server") != "watchd":
        raise ClientError(
            f"{socket_path} did not greet like watchd; is it watchd's socket?", socket_path
        )
    if data.get("protocol") != PROTOCOL_VERSION:
        raise ClientError(
            f"watchd at {socket_path} speaks protocol {data.get('protocol')!r}, this client "
            f"speaks {PROTOCOL_VERSION}; use a client from the same watchd version",
            socket_path,
        )
    return data


def check_reply(message: Message, expected: str, socket_path: str) -> JSONDict:
    """The reply's object when it has the expected type; an error reply raises ServerError."""
    data = message.data
    if data.get("type") == "error":
        raise ServerError(data, socket_path)
    if data.get("type") != expected:
        raise ClientError(
            f"watchd at {socket_path} answered {data.get('type')!r} where {expected!r} was due",
            socket_path,
        )
    return data


def subscribe_request(  # noqa: PLR0917 -- the filters, in the documented order
    watch: str | Iterable[str] | None,
    events: str | Iterable[str] | None,
    paths: PathsArg,
    glob: str | Iterable[str] | None,
    since: int | None,
    instance: str | None,
) -> JSONDict:
    """The fields of a subscribe request; absent filters are left out."""
    request: JSONDict = {"op": "subscribe"}
    if watch is not None:
        request["watch"] = watch if isinstance(watch, str) else list(watch)
    if events is not None:
        request["events"] = [str(kind) for kind in _as_list(events)]
    if paths is not None:
        many = [paths] if isinstance(paths, str | bytes | os.PathLike) else list(paths)
        # fsdecode keeps a name that is not UTF-8 as surrogateescape characters.
        request["paths"] = [os.fsdecode(path) for path in many]
    if glob is not None:
        request["glob"] = _as_list(glob)
    if since is not None:
        request["since"] = since
    if instance is not None:
        request["instance"] = instance
    return request


def _as_list(value: str | Iterable[str]) -> list[str]:
    # A lone string is one item, not a sequence of one-letter items.
    return [value] if isinstance(value, str) else list(value)


class Router:
    """Sorts incoming messages into replies and per-subscription queues; no I/O of its own."""

    def __init__(self, socket_path: str) -> None:
        self._socket_path = socket_path
        self._ids = itertools.count(1)
        self._pending: deque[int] = deque()  # request ids awaiting a reply, oldest first
        self._abandoned: set[int] = set()  # requests whose caller gave up waiting
        self._replies: dict[int, Message] = {}
        self._queues: dict[str, deque[Message]] = {}
        self._gone: set[str] = set()
        self._early: set[str] = set()  # queues opened before their confirmation was read
        self._subscribing = 0
        self.unsolicited: ServerError | None = None

    def request(self, op: str, fields: JSONDict | None = None) -> tuple[int, bytes]:
        """A fresh request id and the line to send; the caller must send lines in this order."""
        rid = next(self._ids)
        body: JSONDict = {"op": op, "id": rid}
        body.update(fields or {})
        self._pending.append(rid)
        if op == "subscribe":
            self._subscribing += 1
        # encode escapes a name that is not UTF-8 (surrogateescape characters) as \\udcXX,
        # which the daemon turns back into the same bytes.
        return rid, encode(body)

    def feed(self, message: Message) -> None:
        """Route one incoming message."""
        data = message.data
        if data.get("type") in PUSHED_TYPES or ("subscription" in data and "id" not in data):
            self._push(message)
            return
        if not self._pending:
            # Only an error is sent unasked (e.g. before the daemon closes the connection).
            if data.get("type") == "error":
                self.unsolicited = ServerError(data, self._socket_path)
            return
        rid = self._pending.popleft()
        # A null id is the daemon saying it could not tell which request this answers.
        if data.get("id") is not None and data["id"] != rid:
            raise ClientError(
                f"watchd at {self._socket_path} answered request {data['id']!r} "
                f"where {rid} was due; the connection is out of step",
                self._socket_path,
            )
        if rid in self._abandoned:
            self._abandoned.discard(rid)
        else:
            self._replies[rid] = message

    def _push(self, message: Message) -> None:
        sid = message.data.get("subscription")
        if not isinstance(sid, str):
            return
        queue = self._queues.get(sid)
        if queue is None and self._subscribing and sid not in self._gone:
            # A subscription's first lines may come before its confirmation is read.
            queue = self._queues[sid] = deque()
            self._early.add(sid)
        if queue is not None:
            queue.append(message)

    def take_reply(self, rid: int) -> Message | None:
        """The reply to request rid, once it has arrived."""
        return self._replies.pop(rid, None)

    def abandon(self, rid: int) -> None:
        """Forget request rid: its caller stopped waiting, so its late reply is dropped."""
        if self._replies.pop(rid, None) is None and rid in self._pending:
            self._abandoned.add(rid)

    def subscribe_done(self, sid: str | None) -> None:
        """A subscribe request was answered: open the queue of sid (None: it failed)."""
        self._subscribing -= 1
        if sid is not None:
            self._queues.setdefault(sid, deque())
            self._early.discard(sid)
        if not self._subscribing:
            # No confirmation is due any more: early queues nobody claimed never will be.
            for early in self._early:
                self._queues.pop(early, None)
            self._early.clear()

    def close(self, sid: str) -> None:
        """Stop queueing for sid and drop what it had not read."""
        self._queues.pop(sid, None)
        self._gone.add(sid)

    def is_open(self, sid: str) -> bool:
        """Whether messages for sid are still being queued."""
        return sid in self._queues

    def pop(self, sid: str) -> Message | None:
        """The oldest unread message of sid, if any."""
        queue = self._queues.get(sid)
        return queue.popleft() if queue else None


def _fork_error(owner: int) -> ClientError:
    return ClientError(
        f"this watchd connection was opened by process {owner}; a forked child shares its "
        "socket, so open a new client in the child instead"
    )


def _closed_error(socket_path: str) -> ClientError:
    return ClientError(
        f"watchd closed the connection ({socket_path}); it may have stopped or restarted: "
        "check that it runs, then connect again",
        socket_path,
    )


class _Connection:
    """What the blocking and the asyncio client share: their settings and how they fail."""

    def __init__(self, socket_path: str | None, timeout: float | None) -> None:
        self.socket_path = resolve_socket_path(socket_path)
        self.timeout = timeout
        self._pid = os.getpid()
        self._router = Router(self.socket_path)
        self._failure: ClientError | None = None

    def _fail(self, error: ClientError) -> ClientError:
        self._failure = error
        return error

    def _long_line_error(self) -> ClientError:
        return ClientError(
            f"watchd at {self.socket_path} sent a line over {MAX_LINE_BYTES} bytes; "
            "is it really watchd's socket?",
            self.socket_path,
        )

    def _timeout_error(self) -> ClientError:
        return ClientError(
            f"watchd at {self.socket_path} did not answer within {self.timeout}s; "
            "it may be overloaded or stuck",
            self.socket_path,
        )


class Client(_Connection):
    """A blocking connection to watchd; a context manager. Not safe to share between threads."""

    def __init__(self, socket_path: str | None = None, timeout: float | None = 10.0) -> None:
        super().__init__(socket_path, timeout)
        self._buffer = bytearray()
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
            raise ClientError(
                f"watchd at {self.socket_path} did not accept the connection within "
                f"{self.timeout}s; it may be overloaded or stuck",
                self.socket_path,
            ) from e
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
        if self._failure is None:
            self._failure = ClientError(f"this watchd connection ({self.socket_path}) is closed")

    def ping(self) -> None:
        """Ask the daemon for a pong."""
        self._call("ping", "pong")

    def status(self) -> JSONDict:
        """The daemon's status object."""
        return self._call("status", "status")

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
        fields = subscribe_request(watch, events, paths, glob, since, instance)
        fields.pop("op")
        sid: str | None = None
        try:
            message = self._send_and_wait("subscribe", fields)
            reply = check_reply(message, "subscribed", self.socket_path)
            sid = str(reply["subscription"])
        finally:
            self._router.subscribe_done(sid)
        return Subscription(self, sid, int(reply.get("seq", 0)), since)

    def unsubscribe(self, subscription: str) -> None:
        """End a subscription; its unread messages are dropped."""
        self._router.close(subscription)
        self._call("unsubscribe", "unsubscribed", {"subscription": subscription})

    def _call(self, op: str, expected: str, fields: JSONDict | None = None) -> JSONDict:
        return check_reply(self._send_and_wait(op, fields), expected, self.socket_path)

    def _send_and_wait(self, op: str, fields: JSONDict | None) -> Message:
        self._check_usable()
        rid, line = self._router.request(op, fields)
        deadline = self._deadline()
        try:
            self._send(line, deadline)
            while (reply := self._router.take_reply(rid)) is None:
                self._router.feed(self._read_message(deadline))
        except BaseException:
            self._router.abandon(rid)
            raise
        return reply

    def next_message(self, sid: str, timeout: float | None) -> Message | None:
        """The next pushed message of subscription sid; None once timeout seconds passed."""
        self._check_usable()
        deadline = None if timeout is None else time.monotonic() + timeout
        while (message := self._router.pop(sid)) is None:
            if not self._router.is_open(sid):
                raise StopIteration
            try:
                self._router.feed(self._read_message(deadline, quiet_timeout=True))
            except TimeoutError:
                return None
        return message

    def _check_usable(self) -> None:
        if os.getpid() != self._pid:
            raise _fork_error(self._pid)
        if self._failure is not None:
            raise self._failure

    def _deadline(self) -> float | None:
        return None if self.timeout is None else time.monotonic() + self.timeout

    def _send(self, line: bytes, deadline: float | None) -> None:
        try:
            self._sock.settimeout(_remaining(deadline))
            self._sock.sendall(line)
        except TimeoutError as e:
            raise self._timeout_error() from e
        except OSError as e:
            raise self._fail(_closed_error(self.socket_path)) from e

    def _read_message(self, deadline: float | None, quiet_timeout: bool = False) -> Message:
        """Read one line; TimeoutError passes through only when quiet_timeout is set."""
        if self._failure is not None:
            raise self._failure
        scanned = 0
        while (end := self._buffer.find(b"\n", scanned)) < 0:
            scanned = len(self._buffer)
            if scanned > MAX_LINE_BYTES:
                raise self._fail(self._long_line_error())
            try:
                self._sock.settimeout(_remaining(deadline))
                chunk = self._sock.recv(_RECV_BYTES)
            except TimeoutError as e:
                if quiet_timeout:
                    raise
                raise self._timeout_error() from e
            except OSError as e:
                raise self._fail(_closed_error(self.socket_path)) from e
            if not chunk:
                raise self._fail(self._router.unsolicited or _closed_error(self.socket_path))
            self._buffer += chunk
        raw = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        return decode_line(raw, self.socket_path)



def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


class Subscription(Iterator[JSONDict]):
    """The messages of one subscription, as dicts; iterating blocks until the next one."""

    def __init__(self, client: Client, subscription: str, seq: int, since: int | None) -> None:
        self.client = client
        self.subscription = subscription
        self.seq = seq  # the daemon's last seq when it confirmed
        self.last_seq = since  # seq of the newest event or overflow handed out (for since=)

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
        message = self.client.next_message(self.subscription, timeout)
        if message is not None:
            self._note(message.data)
        return message

    def _note(self, data: JSONDict) -> None:
        seq = data.get("seq")
        if isinstance(seq, int):
            self.last_seq = seq

    def close(self) -> None:
        """Unsubscribe."""
        self.client.unsubscribe(self.subscription)


class AsyncClient(_Connection):
    """An asyncio connection to watchd: `async with AsyncClient(path) as c` or `await connect()`."""

    def __init__(self, socket_path: str | None = None, timeout: float | None = 10.0) -> None:
        super().__init__(socket_path, timeout)
        self.hello: JSONDict = {}
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
                self._reader, self._writer = await asyncio.open_unix_connection(
                    self.socket_path, limit=MAX_LINE_BYTES
                )
                self.hello = check_hello(await self._read_message(), self.socket_path)
        except TimeoutError as e:
            await self.close()
            raise self._timeout_error() from e
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
        if self._failure is None:
            self._failure = ClientError(f"this watchd connection ({self.socket_path}) is closed")
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            # The peer may have gone first; the connection is closed either way.
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    aclose = close

    async def ping(self) -> None:
        """Ask the daemon for a pong."""
        await self._call("ping", "pong")

    async def status(self) -> JSONDict:
        """The daemon's status object."""
        return await self._call("status", "status")

    # The filters are positional too, in the documented order, like the wire's field list.
    async def subscribe(  # noqa: PLR0917
        self,
        watch: str | Iterable[str] | None = None,
        events: str | Iterable[str] | None = None,
        paths: PathsArg = None,
        glob: str | Iterable[str] | None = None,
        since: int | None = None,
        instance: str | None = None,
    ) -> AsyncSubscription:
        """Subscribe; returns, once the daemon confirmed, an async iterator of message dicts."""
        fields = subscribe_request(watch, events, paths, glob, since, instance)
        fields.pop("op")
        sid: str | None = None
        try:
            message = await self._send_and_wait("subscribe", fields)
            reply = check_reply(message, "subscribed", self.socket_path)
            sid = str(reply["subscription"])
        finally:
            self._router.subscribe_done(sid)
        return AsyncSubscription(self, sid, int(reply.get("seq", 0)), since)

    async def unsubscribe(self, subscription: str) -> None:
        """End a subscription; its unread messages are dropped."""
        self._router.close(subscription)
        await self._call("unsubscribe", "unsubscribed", {"subscription": subscription})

    async def _call(self, op: str, expected: str, fields: JSONDict | None = None) -> JSONDict:
        return check_reply(await self._send_and_wait(op, fields), expected, self.socket_path)

    async def _send_and_wait(self, op: str, fields: JSONDict | None) -> Message:
        self._check_usable()
        if self._writer is None:
            raise ClientError(
                "this AsyncClient is not connected: use `async with AsyncClient(...)` "
                "or `await AsyncClient.connect(...)`",
                self.socket_path,
            )
        # Ids are taken and lines written with no await between, so the wire order matches.
        rid, line = self._router.request(op, fields)
        try:
            async with asyncio.timeout(self.timeout):
                self._writer.write(line)
                try:
                    await self._writer.drain()
                except OSError as e:
                    raise self._fail(_closed_error(self.socket_path)) from e
                return await self._wait(lambda: self._router.take_reply(rid))
        except TimeoutError as e:
            raise self._timeout_error() from e
        finally:
            self._router.abandon(rid)

    async def next_message(self, sid: str, timeout: float | None) -> Message | None:
        """The next pushed message of subscription sid; None once timeout seconds passed."""
        self._check_usable()

        def ready() -> Message | None:
            if not self._router.is_open(sid):
                raise StopAsyncIteration
            return self._router.pop(sid)

        try:
            async with asyncio.timeout(timeout):
                return await self._wait(ready)
        except TimeoutError:
            return None

    async def _wait(self, ready: Callable[[], Message | None]) -> Message:
        # Whoever holds the lock reads one line and routes it, then lets the others look: a
        # reply read by a subscription's reader is found by its caller on the next pass.
        while True:
            if (found := ready()) is not None:
                return found
            async with self._read_lock:
                if (found := ready()) is not None:
                    return found
                self._router.feed(await self._read_message())

    async def _read_message(self) -> Message:
        if self._failure is not None:
            raise self._failure
        assert self._reader is not None
        try:
            raw = await self._reader.readline()
        except ValueError as e:
            raise self._fail(self._long_line_error()) from e
        except OSError as e:
            raise self._fail(_closed_error(self.socket_path)) from e
        if not raw.endswith(b"\n"):
            raise self._fail(self._router.unsolicited or _closed_error(self.socket_path))
        return decode_line(raw, self.socket_path)

    def _check_usable(self) -> None:
        if os.getpid() != self._pid:
            raise _fork_error(self._pid)
        if self._failure is not None:
            raise self._failure



class AsyncSubscription(AsyncIterator[JSONDict]):
    """The messages of one subscription, as dicts, for `async for`."""

    def __init__(self, client: AsyncClient, subscription: str, seq: int, since: int | None) -> None:
        self.client = client
        self.subscription = subscription
        self.seq = seq  # the daemon's last seq when it confirmed
        self.last_seq = since  # seq of the newest event or overflow handed out (for since=)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> JSONDict:
        message = await self.get_message()
        assert message is not None  # no timeout: only StopAsyncIteration or an error ends it
        return message.data

    async def get(self, timeout: float | None = None) -> JSONDict | None:
        """The next message, or None when none came within timeout seconds."""
        try:
            message = await self.get_message(timeout)
        except StopAsyncIteration:
            return None
        return None if message is None else message.data

    async def get_message(self, timeout: float | None = None) -> Message | None:
        """Like get(), with the raw line; raises StopAsyncIteration after unsubscribe."""
        message = await self.client.next_message(self.subscription, timeout)
        if message is not None and isinstance(seq := message.data.get("seq"), int):
            self.last_seq = seq
        return message

    async def close(self) -> None:
        """Unsubscribe."""
        await self.client.unsubscribe(self.subscription)
