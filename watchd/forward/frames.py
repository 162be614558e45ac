"""A frame of the daemon's events as the messages a forwarder publishes: (seq, watch,
payload) each, the payload the v1 event object (`"type":"event"`, no `subscription`).

The forwarder's hot path: each event's object is cut out of the frame as the daemon encoded
it (watchd.protocol.event_lines), not parsed and encoded again. A raw '"' never occurs
inside a JSON string (it is escaped there), so neither does the boundary between two events,
'},{"seq":'. A frame of another layout is parsed as JSON instead.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from watchd.protocol.event_lines import FRAME_END

EVENT_SPLIT: Final = b'},{"seq":'
# An event object's start, after '{"seq":': its seq and its watch (a watch's name is never
# escaped in JSON: letters, digits, '_', '.' and '-').
EVENT_START: Final = re.compile(rb'(\d+),"time":[^,]*,"watch":"([^"\\]*)"')
PAYLOAD_HEAD: Final = b'{"type":"event","seq":'

Message = tuple[int, str, bytes]  # (seq, watch, payload): a tuple, one per event on the hot path


def frame_messages(line: bytes, head: int) -> list[Message]:
    """The events of a frame (a line whose first `head` bytes are its frame_head)."""
    if line.endswith(FRAME_END):
        # head + '"seq":1,...},{"seq":2,...}' + FRAME_END: after the head's '{', the first
        # event's seq; before FRAME_END, the last event's closing brace.
        pieces = line[head + 6:-len(FRAME_END) - 1].split(EVENT_SPLIT)
        out = []
        match = EVENT_START.match
        for piece in pieces:
            start = match(piece)
            if start is None:
                break
            out.append((int(start[1]), start[2].decode(), PAYLOAD_HEAD + piece + b"}"))
        else:
            return out
    return parsed_messages(json.loads(line)["events"])


def parsed_messages(events: list[dict[str, Any]]) -> list[Message]:
    """The messages of events parsed from JSON."""
    return [(event["seq"], event["watch"],
             b'{"type":"event",' + json.dumps(event, separators=(",", ":")).encode()[1:])
            for event in events]
