"""Messages as the client hands them out, and frames of events taken apart into them.

A subscription that asked for "batch" gets its events in frames ({"type":"events"}); the client
hands each event out as its own message, as the daemon would have sent it as a line, so that
batching is invisible to its users.
"""

from __future__ import annotations

from watchd.client.errors import ClientError, JSONDict
from watchd.protocol import encode


class Message:
    """One message from the daemon: its line, and the decoded object.

    raw is the line exactly as received; for an event that came in a frame, the line the daemon
    sends for it to a subscription without "batch" (made only when asked for: most readers want
    the object alone).
    """

    __slots__ = ("_raw", "data")

    def __init__(self, raw: bytes | None, data: JSONDict) -> None:
        self._raw = raw
        self.data = data

    @property
    def raw(self) -> bytes:
        """The message's line, newline included."""
        if self._raw is None:
            # Compact ASCII JSON in the object's order: the bytes of the daemon's event line.
            self._raw = encode(self.data)
        return self._raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self.data == other.data and self.raw == other.raw

    __hash__ = None  # type: ignore[assignment]  # mutable data: not hashable, like a dict

    def __repr__(self) -> str:
        return f"Message({self.raw!r})"


def unframe(message: Message, socket_path: str) -> list[Message]:
    """The events of a frame ({"type":"events"}), each as its own event message."""
    data = message.data
    sid = data.get("subscription")
    events = data.get("events")
    # Never empty: a frame holds the events that were ready, at least one.
    if not isinstance(sid, str) or not isinstance(events, list) or not events or not all(
        isinstance(event, dict) for event in events
    ):
        raise ClientError(
            f"{socket_path} sent a frame of events watchd would not send; "
            "is it really watchd's socket?",
            socket_path,
        )
    messages = []
    for event in events:
        # type and subscription first, as in an event line.
        one: JSONDict = {"type": "event", "subscription": sid}
        one.update(event)
        messages.append(Message(None, one))
    return messages


def wants_batch(hello: JSONDict) -> bool:
    """Whether the daemon that sent this hello delivers a subscription's events in frames."""
    features = hello.get("features")
    return isinstance(features, list) and "batch" in features
