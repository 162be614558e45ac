"""A frame of events as the messages a forwarder publishes: cut out of the frame as the
daemon's own encoder wrote it, and the same as parsing it."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from watchd.forward.frames import frame_messages, parsed_messages
from watchd.inotify.flags import IN_CREATE, IN_ISDIR, IN_MOVED_TO
from watchd.protocol.event_lines import EventEncoder, frame_head, frames

SID = "s7"
HEAD = frame_head(SID)
AWKWARD = ['/srv/a},{"seq":9,"time":1,"watch":"x"', "/srv/\u00e9t\u00e9\n\t\\", '/srv/"q"',
           "/srv/,", "/srv/}]}"]


def frame(paths: list[str], src: str | None = None, watch: str = "up.loads") -> bytes:
    encoder = EventEncoder()
    tails = [encoder.tail(10 + i, 1700000000.5, watch, "create", path,
                          IN_MOVED_TO if src else IN_CREATE | (IN_ISDIR if i % 2 else 0),
                          3 if src else 0, src)
             for i, path in enumerate(paths)]
    return b"".join(frames(HEAD, tails, 4096))


def check(line: bytes) -> None:
    messages = frame_messages(line, len(HEAD))
    # Cut, not parsed: the same without the head, which makes the line no JSON at all.
    assert frame_messages(b"?" * len(HEAD) + line[len(HEAD):], len(HEAD)) == messages
    events = json.loads(line)["events"]
    assert messages == parsed_messages(events)
    for (seq, watch, payload), event in zip(messages, events, strict=True):
        assert json.loads(payload) == {"type": "event", **event}
        assert (seq, watch) == (event["seq"], event["watch"])
        assert payload.startswith(b'{"type":"event","seq":')


def test_a_frame_cut_into_its_events() -> None:
    check(frame(["/srv/a", "/srv/b", *AWKWARD]))
    check(frame(["/srv/only"]))
    check(frame(AWKWARD, src='/srv/from},{"seq":1'))


@given(st.lists(st.text(min_size=1), min_size=1, max_size=5))
def test_any_paths(paths: list[str]) -> None:
    check(frame(["/" + p for p in paths]))


def test_another_layout_is_parsed() -> None:
    line = HEAD + b'"time":1.5,"seq":4,"watch":"w","kind":"create","path":"/a"}]}\n'
    assert frame_messages(line, len(HEAD)) == [
        (4, "w", b'{"type":"event","time":1.5,"seq":4,"watch":"w","kind":"create","path":"/a"}')]
