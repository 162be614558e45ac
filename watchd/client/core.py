"""The client's sans-IO core: requests, framing, the router and the checks both transports share.

Nothing here touches a socket. A transport hands the core the bytes it received and takes back
messages; it asks the core for the line of a request and for the checked reply. A single reader
sorts every incoming line into either a reply (matched to its request by id; replies come in
request order) or a pushed message (an event or a notice), which is queued for the subscription
it names. A frame of events (a subscription that asked for "batch") is handed out as its events,
one message each, as the daemon would have sent them as lines.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

from watchd.client.errors import (
    DEFAULT_SOCKET,
    MAX_LINE_BYTES,
    SOCKET_ENV,
    ClientError,
    JSONDict,
    ServerError,
    closed_error,
    fork_error,
    long_line_error,
)
from watchd.client.frames import Message, unframe, wants_batch
from watchd.protocol import (
    PROTOCOL_VERSION,
    LineFramer,
    LineTooLong,
    Metrics,
    Ping,
    ProtocolError,
    Status,
    Unsubscribe,
    decode_message,
    encode_request,
    encode_subscribe,
)

# Messages the daemon pushes on its own; everything else answers a request.
PUSHED_TYPES = frozenset(
    {"event", "overflow", "dropped", "watch_lost", "watch_restored", "watch_degraded",
     "resynced"}
)

# How much a transport asks its socket for at once: a burst of events is read in few calls.
READ_BYTES = 65536

PathLikeArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]
# One path or several; bytes and PathLike are accepted so that names that are not UTF-8 work.
PathsArg = PathLikeArg | Iterable[PathLikeArg] | None


# --- messages and their checks ------------------------------------------------------------------


def resolve_socket_path(socket_path: str | None = None) -> str:
    """The socket to use: the argument, else $WATCHD_SOCKET, else DEFAULT_SOCKET."""
    if socket_path:
        return socket_path
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


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


def confirmation(reply: JSONDict) -> tuple[str, int]:
    """The subscription id and the daemon's last seq from a checked "subscribed" reply."""
    return str(reply["subscription"]), int(reply.get("seq", 0))


def subscribed(reply: JSONDict, request: SubscribeRequest) -> tuple[str, int, int | None]:
    """A Subscription's id, seq and last_seq from the confirmation of request."""
    # Until an event comes, the point to resume from is where the caller asked to start.
    return (*confirmation(reply), request.since)


# --- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    """A subscribe request with its filters as the caller gave them; None: left out.

    protocol.Subscribe is the daemon's view after validation (a set of kinds, normalised paths).
    The client sends what it was given instead, in the caller's order, so that the daemon alone
    validates and its errors ("events"[1]: unknown event kind ...) point into the caller's list.
    """

    id: int | None = None
    watch: str | tuple[str, ...] | None = None
    events: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None
    glob: tuple[str, ...] | None = None
    since: int | None = None
    instance: str | None = None
    batch: bool | None = None  # frames of events; asked for where the daemon offers them

    def line(self) -> bytes:
        """The wire line: op and id first, then the filters given, in protocol order."""
        # A name that is not UTF-8 (surrogateescape characters) is written as \udcXX, which
        # the daemon turns back into the same bytes.
        return encode_subscribe(
            self.id,
            watch=self.watch,
            events=self.events,
            paths=self.paths,
            glob=self.glob,
            since=self.since,
            instance=self.instance,
            batch=self.batch,
        )


# What the client sends: protocol's requests, and a subscribe as given.
ClientRequest = Ping | Status | Metrics | Unsubscribe | SubscribeRequest


def subscribe_request(  # noqa: PLR0917 -- the filters, in the documented order
    watch: str | Iterable[str] | None,
    events: str | Iterable[str] | None,
    paths: PathsArg,
    glob: str | Iterable[str] | None,
    since: int | None,
    instance: str | None,
    batch: bool = False,
) -> SubscribeRequest:
    """A subscribe request from the public arguments; absent filters are left out."""
    path_list: tuple[str, ...] | None = None
    if paths is not None:
        many = [paths] if isinstance(paths, str | bytes | os.PathLike) else list(paths)
        # fsdecode keeps a name that is not UTF-8 as surrogateescape characters.
        path_list = tuple(os.fsdecode(path) for path in many)
    return SubscribeRequest(
        watch=watch if watch is None or isinstance(watch, str) else tuple(watch),
        events=None if events is None else tuple(str(kind) for kind in _as_tuple(events)),
        paths=path_list,
        glob=None if glob is None else _as_tuple(glob),
        since=since,
        instance=instance,
        batch=batch or None,
    )


def _as_tuple(value: str | Iterable[str]) -> tuple[str, ...]:
    # A lone string is one item, not a sequence of one-letter items.
    return (value,) if isinstance(value, str) else tuple(value)


def for_connection(request: SubscribeRequest, hello: JSONDict) -> SubscribeRequest:
    """The request as sent on a connection that greeted with hello.

    Frames are asked for where the daemon offers them, unless the caller chose; the
    subscription still hands out one event at a time.
    """
    if request.batch is None and wants_batch(hello):
        return dataclasses.replace(request, batch=True)
    return request


def request_line(request: ClientRequest) -> bytes:
    """The wire line of a request that carries its id."""
    if isinstance(request, SubscribeRequest):
        return request.line()
    return encode_request(request)


# --- routing ------------------------------------------------------------------------------------


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

    def request(self, request: ClientRequest) -> tuple[int, bytes]:
        """A fresh request id and the line to send; the caller must send lines in this order."""
        rid = next(self._ids)
        # Encoded before it is counted as pending: a request that cannot be encoded is never
        # sent, and must not leave a reply due that will not come.
        line = request_line(dataclasses.replace(request, id=rid))
        self._pending.append(rid)
        if isinstance(request, SubscribeRequest):
            self._subscribing += 1
        return rid, line

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


class Exchange:
    """One request in flight, as a context manager: leaving it unanswered abandons the request.

    A reply that comes after its caller gave up (a timeout, a cancelled task) is then dropped
    instead of being taken for the answer to the next request.
    """

    __slots__ = ("_router", "_socket_path", "_subscribing", "expected", "line", "rid")

    def __init__(
        self, router: Router, request: ClientRequest, expected: str, socket_path: str
    ) -> None:
        self._router = router
        self._socket_path = socket_path
        self.expected = expected
        self.rid, self.line = router.request(request)
        self._subscribing = isinstance(request, SubscribeRequest)

    def __enter__(self) -> Exchange:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._router.abandon(self.rid)  # nothing to forget once the reply was taken
        if self._subscribing:
            self._router.subscribe_done(None)

    def answer(self, message: Message) -> JSONDict:
        """The checked reply; a confirmed subscription gets its queue."""
        data = check_reply(message, self.expected, self._socket_path)
        if self._subscribing:
            sid, _ = confirmation(data)
            self._subscribing = False
            self._router.subscribe_done(sid)
        return data


# --- one connection -----------------------------------------------------------------------------


class ClientCore:
    """What a connection is apart from its socket, shared by the blocking and asyncio clients.

    It frames the bytes a transport received into messages (lines are decoded one at a time, as
    they are taken), remembers the failure that ended the connection so that every later call
    raises it, and guards against use in a forked child.
    """

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.router = Router(socket_path)
        self._pid = os.getpid()
        self._framer = LineFramer(MAX_LINE_BYTES)
        self._lines: deque[bytes] = deque()
        self._unframed: deque[Message] = deque()  # the events of a frame not yet handed out
        self._too_long = False  # a line past the limit follows the lines in _lines
        self._failure: ClientError | None = None

    def check_usable(self) -> None:
        """Raise if this process did not open the connection, or if it has failed or closed."""
        if os.getpid() != self._pid:
            raise fork_error(self._pid)
        if self._failure is not None:
            raise self._failure

    def fail(self, error: ClientError) -> ClientError:
        """Remember error as the end of the connection, and return it to raise."""
        self._failure = error
        return error

    def lost(self) -> ClientError:
        """The error for a send or receive that failed: the connection is gone."""
        return self.fail(closed_error(self.socket_path))

    def close(self) -> None:
        """Mark the connection closed by its owner (an earlier failure stays the reason)."""
        if self._failure is None:
            self._failure = ClientError(f"this watchd connection ({self.socket_path}) is closed")

    def receive(self, data: bytes) -> None:
        """Take bytes from the socket; b"" is the end of the stream, raised as the failure."""
        if not data:
            raise self.fail(self.router.unsolicited or closed_error(self.socket_path))
        try:
            self._lines.extend(self._framer.feed(data))
        except LineTooLong as e:
            # The complete lines before the long one are still handed out, then the error.
            self._lines.extend(e.lines)
            self._too_long = True

    def next_message(self) -> Message | None:
        """The next received message, or None when more bytes are needed."""
        if self._failure is not None:
            raise self._failure
        if self._unframed:
            return self._unframed.popleft()
        if self._lines:
            message = decode_line(self._lines.popleft() + b"\n", self.socket_path)
            if message.data.get("type") != "events":
                return message
            try:
                self._unframed.extend(unframe(message, self.socket_path))
            except ClientError as e:
                raise self.fail(e) from e
            return self._unframed.popleft()
        if self._too_long:
            raise self.fail(long_line_error(self.socket_path))
        return None

    def exchange(self, request: ClientRequest, expected: str) -> Exchange:
        """Start a request that expects a reply of that type; see Exchange."""
        self.check_usable()
        return Exchange(self.router, request, expected, self.socket_path)

    def unsubscribe(self, sid: str) -> Unsubscribe:
        """Stop queueing for sid at once, and the request that ends it at the daemon."""
        self.router.close(sid)
        return Unsubscribe(None, sid)


class SubscriptionState:
    """What a subscription knows of itself, the same in both clients."""

    def __init__(self, subscription: str, seq: int, since: int | None) -> None:
        self.subscription = subscription
        self.seq = seq  # the daemon's last seq when it confirmed
        self.last_seq = since  # seq of the newest event or overflow handed out (for since=)

    def _note(self, message: Message | None) -> Message | None:
        if message is not None and isinstance(seq := message.data.get("seq"), int):
            self.last_seq = seq
        return message
