"""The daemon-watcher channel: framing, and merging of queued event messages."""

from __future__ import annotations

from collections import deque
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from watchd import channel


def events(watch: str, time: float, n: int) -> tuple[Any, ...]:
    return (channel.EVENTS, watch, [(time, [(0x100, 0, f"/{watch}/{time}-{i}", None)
                                            for i in range(n)])])


def test_frames_survive_any_chunking() -> None:
    messages = [events("a", 1.0, 3), (channel.HEARTBEAT, {"a": ("active", 1, 0, None, None)}),
                (channel.OVERFLOW, "a")]
    data = b"".join(channel.frame(m) for m in messages)
    for size in (1, 2, 7, len(data)):
        reader = channel.FrameReader()
        got: list[tuple[Any, ...]] = []
        for i in range(0, len(data), size):
            got += reader.feed(data[i : i + size])
        assert got == [tuple(m) for m in messages]


def test_consecutive_reads_of_one_watch_come_out_as_one_message() -> None:
    backlog = deque([events("a", 1.0, 2), events("a", 2.0, 3), events("a", 3.0, 1)])
    merged = channel.next_message(backlog)
    assert not backlog
    assert merged[:2] == (channel.EVENTS, "a")
    assert [(time, len(items)) for time, items in merged[2]] == [(1.0, 2), (2.0, 3), (3.0, 1)]


def test_merging_stops_at_another_watch_a_notice_or_the_batch_limit() -> None:
    overflow = (channel.OVERFLOW, "a")
    backlog = deque([events("a", 1.0, 1), events("b", 2.0, 1), events("b", 3.0, 1), overflow,
                     events("b", 4.0, 1), events("c", 5.0, channel.MERGE_MAX - 1),
                     events("c", 6.0, 1), events("c", 7.0, 1)])
    out = []
    while backlog:
        out.append(channel.next_message(backlog))
    assert [(m[1], [t for t, _ in m[2]]) if m[0] == channel.EVENTS else m for m in out] == [
        ("a", [1.0]), ("b", [2.0, 3.0]), overflow, ("b", [4.0]), ("c", [5.0, 6.0]),
        ("c", [7.0])]


@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 600)), max_size=40))
def test_merging_keeps_every_event_in_order_within_the_limit(reads: list[tuple[str, int]]) -> None:
    backlog = deque(events(w, float(i), n) for i, (w, n) in enumerate(reads))
    flat = [(w, float(i), n) for i, (w, n) in enumerate(reads)]
    out = []
    while backlog:
        message = channel.next_message(backlog)
        assert sum(len(items) for _, items in message[2]) <= max(
            channel.MERGE_MAX, len(message[2][0][1]))
        out += [(message[1], time, len(items)) for time, items in message[2]]
    assert out == flat
