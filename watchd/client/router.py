"""The router: one reader sorts every incoming message into a reply (matched to its request
by id; replies come in request order) or a pushed message (an event or a notice), queued for
the subscription it names; no I/O of its own."""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque

from watchd.client.errors import ClientError, JSONDict, ServerError
from watchd.client.frames import Message
from watchd.client.requests import (
    ClientRequest,
    SubscribeRequest,
    check_reply,
    confirmation,
    request_line,
)

# Messages the daemon pushes on its own; everything else answers a request.
PUSHED_TYPES = frozenset(
    {"event", "overflow", "dropped", "watch_lost", "watch_restored", "watch_degraded",
     "resynced"}
)


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

    def __exit__(self, *exc_info: object) -> None:
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
