"""The daemon-watcher channel: framing, and merging of queued event messages."""

from __future__ import annotations

from collections import deque
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from watchd import channel
from watchd.protocol import LostReason


def events(watch: str, time: float, n: int) -> tuple[Any, ...]:
    """An Events message as it comes off the wire (merging works on those)."""
    return channel.Events(watch, [(time, [(0x100, 0, f"/{watch}/{time}-{i}", None)
                                          for i in range(n)])]).wire()


def test_frames_survive_any_chunking() -> None:
    messages: list[channel.FromWatcher] = [
        channel.Events("a", [(1.0, [(0x100, 0, "/a/x", None), (0x40, 3, "/a/y", "/a/z")])]),
        channel.Heartbeat({"a": channel.WatchReport(channel.Phase.ACTIVE, 1, 0, None, None)}),
        channel.Overflow("a")]
    data = b"".join(channel.frame(m) for m in messages)
    for size in (1, 2, 7, len(data)):
        reader = channel.FrameReader()
        got: list[tuple[Any, ...]] = []
        for i in range(0, len(data), size):
            got += reader.feed(data[i : i + size])
        assert got == [m.wire() for m in messages]


def test_the_watcher_frames_events_as_the_record_does() -> None:
    reads: list[channel.Read] = [(1.0, [(0x100, 0, "/a/x", None)])]
    records: list[channel.Records] = [{"/a/x": 5}]
    assert channel.events_frame("a", reads, records) == channel.frame(
        channel.Events("a", reads, records))


def test_every_record_comes_back_as_itself_with_its_enums() -> None:
    spec = channel.Spec("a", "/srv/a", True, 0x300, ("*.c",), (".git",), "/data/a")
    report = channel.WatchReport(channel.Phase.DEGRADED, 5, 2, "budget",
                                 channel.Limit.MAX_DIRECTORIES)
    to_watcher: list[channel.ToWatcher] = [
        channel.Configure(3, (spec,), {"a": 5}), channel.Stop(), channel.Rescan("a")]
    from_watcher: list[channel.Notice] = [
        channel.Hello(42), channel.Applied(3), channel.Heartbeat({"a": report}),
        channel.Lost("a", "/srv/a", LostReason.UNMOUNTED), channel.Restored("a", "/srv/a"),
        channel.Progress("a", 1000)]
    reader = channel.FrameReader()
    assert [channel.to_watcher(m) for m in reader.feed(
        b"".join(channel.frame(m) for m in to_watcher))] == to_watcher
    back = [channel.from_watcher(m) for m in reader.feed(
        b"".join(channel.frame(m) for m in from_watcher))]
    assert back == from_watcher
    heartbeat, lost = back[2], back[3]
    assert isinstance(heartbeat, channel.Heartbeat)
    assert type(heartbeat.reports["a"].limit) is channel.Limit
    assert isinstance(lost, channel.Lost)
    assert type(lost.reason) is LostReason


def test_a_tag_of_no_version_of_ours_decodes_to_nothing() -> None:
    assert channel.from_watcher(("from-the-future", 1)) is None
    assert channel.to_watcher(channel.Hello(1).wire()) is None


def test_consecutive_reads_of_one_watch_come_out_as_one_message() -> None:
    backlog = deque([events("a", 1.0, 2), events("a", 2.0, 3), events("a", 3.0, 1)])
    merged = channel.next_message(backlog)
    assert not backlog
    assert merged[:2] == (channel.Tag.EVENTS, "a")
    assert [(time, len(items)) for time, items in merged[2]] == [(1.0, 2), (2.0, 3), (3.0, 1)]


def test_merged_reads_keep_each_its_own_records() -> None:
    # A path recorded at the end of the first read and deleted in the second: its record
    # holds for the first read only, so the records stay one per read, never merged.
    first = channel.Events("a", [(1.0, [(0x100, 0, "/a/x", None)])], [{"/a/x": 7}]).wire()
    second = channel.Events("a", [(2.0, [(0x200, 0, "/a/x", None)])], [{}]).wire()
    plain = channel.Events("a", [(3.0, [(0x100, 0, "/a/y", None)])]).wire()
    merged = channel.next_message(deque([first, second, plain]))
    assert [time for time, _ in merged[2]] == [1.0, 2.0, 3.0]
    assert merged[3] == [{"/a/x": 7}, {}, None]


def test_merging_stops_at_another_watch_a_notice_or_the_batch_limit() -> None:
    overflow = channel.Overflow("a").wire()
    backlog = deque([events("a", 1.0, 1), events("b", 2.0, 1), events("b", 3.0, 1), overflow,
                     events("b", 4.0, 1), events("c", 5.0, channel.MERGE_MAX - 1),
                     events("c", 6.0, 1), events("c", 7.0, 1)])
    out = []
    while backlog:
        out.append(channel.next_message(backlog))
    assert [(m[1], [t for t, _ in m[2]]) if m[0] == channel.Tag.EVENTS else m for m in out] == [
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
