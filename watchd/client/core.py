"""The client's sans-IO core: requests, framing, the router and the checks both transports share.

Nothing here touches a socket. A transport hands the core the bytes it received and takes back
messages; it asks the core for the line of a request and for the checked reply. A single reader
sorts every incoming line into either a reply (matched to its request by id; replies come in
request order) or a pushed message (an event or a notice), which is queued for the subscription
it names. A frame of events (a subscription that asked for "batch") is handed out as its events,
one message each, as the daemon would have sent them as lines.

The requests and the checks of replies are watchd.client.requests, the router
watchd.client.router; this module is one connection, and the names the transports use.
"""

from __future__ import annotations

import os
from collections import deque

from watchd.client.errors import (
    DEFAULT_SOCKET,
    MAX_LINE_BYTES,
    SOCKET_ENV,
    ClientError,
    closed_error,
    fork_error,
    long_line_error,
)
from watchd.client.frames import Message, unframe
from watchd.client.requests import (
    ClientRequest,
    PathLikeArg,
    PathsArg,
    SubscribeRequest,
    check_hello,
    check_reply,
    confirmation,
    for_connection,
    request_line,
    subscribe_request,
    subscribed,
)
from watchd.client.router import PUSHED_TYPES, Exchange, Router
from watchd.protocol import LineFramer, LineTooLong, ProtocolError, Unsubscribe, decode_message

__all__ = [
    "MAX_LINE_BYTES",
    "PUSHED_TYPES",
    "READ_BYTES",
    "ClientCore",
    "ClientRequest",
    "Exchange",
    "PathLikeArg",
    "PathsArg",
    "Router",
    "SubscribeRequest",
    "SubscriptionState",
    "check_hello",
    "check_reply",
    "confirmation",
    "decode_line",
    "for_connection",
    "request_line",
    "resolve_socket_path",
    "subscribe_request",
    "subscribed",
]

# How much a transport asks its socket for at once: a burst of events is read in few calls.
READ_BYTES = 65536


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
