"""Frames shared between connections that drain their queues: a run of events a publish queued
for several batched subscriptions that are behind is framed once, and every connection writes
the same bytes behind its own head. The real Broker, sinks that record what they are given.
"""

from __future__ import annotations

from typing import Any

from tests.test_broker import (
    INSTANCE,
    FakeSink,
    FakeWatch,
    burst,
    events,
    item,
    join,
    make_broker,
    publish,
    seqs,
    shape,
    sub,
    unframe,
)
from watchd import protocol
from watchd.broker import Broker, Connection
from watchd.events import Kind
from watchd.outbox import SHARED_RUN
from watchd.protocol.event_lines import FRAME_HEAD

LONG = SHARED_RUN + 8  # a run long enough to go out in frames of its own


def two_batched(
    client_queue: int = 1000,
) -> tuple[Broker, tuple[FakeSink, Connection], tuple[FakeSink, Connection]]:
    """A broker with two connections, each with a batched subscription and nothing to read."""
    broker = make_broker(client_queue=client_queue)
    a, b = join(broker), join(broker)
    for sink, conn in (a, b):
        sub(broker, conn, batch=True)
        sink.take()
    return broker, a, b


def sid_of(conn: Connection) -> str:
    return next(iter(conn.subs))


def behind(*sinks: FakeSink) -> None:
    for sink in sinks:
        sink.open = False


def drain(broker: Broker, *pairs: tuple[FakeSink, Connection]) -> None:
    for sink, conn in pairs:
        sink.open = True
        broker.resume(conn)


def bodies(sink: FakeSink) -> list[bytes]:
    """The bodies of the frames written to a sink (the chunks after each frame head)."""
    return [sink.chunks[i + 1] for i, chunk in enumerate(sink.chunks)
            if chunk.startswith(FRAME_HEAD)]


def frames_of(messages: list[dict[str, Any]]) -> list[list[int]]:
    return [[e["seq"] for e in m["events"]] for m in messages if m["type"] == "events"]


def test_connections_that_drain_the_same_run_write_the_same_frame_bodies() -> None:
    broker, (a, conn_a), (b, conn_b) = two_batched()
    sid_a, sid_b = sid_of(conn_a), sid_of(conn_b)
    behind(a, b)
    burst(broker, LONG)
    burst(broker, LONG, at=2.0)
    drain(broker, (a, conn_a), (b, conn_b))
    shared_a, shared_b = bodies(a), bodies(b)
    assert len(shared_a) == len(shared_b) == 2
    # Made once: the very same objects, not equal copies.
    assert all(x is y for x, y in zip(shared_a, shared_b, strict=True))
    msgs_a, msgs_b = a.take(), b.take()
    assert {m["subscription"] for m in msgs_a} == {sid_a}
    assert {m["subscription"] for m in msgs_b} == {sid_b}
    expected = [list(range(1, LONG + 1)), list(range(LONG + 1, 2 * LONG + 1))]
    assert frames_of(msgs_a) == frames_of(msgs_b) == expected
    # What a connection that was never behind is written, byte for byte, but for its sid.
    live_sink, live = join(broker)
    sid_live = sub(broker, live, batch=True, id=9)
    live_sink.take()
    behind(a)
    burst(broker, LONG, at=3.0)
    drain(broker, (a, conn_a))
    head_a, head_live = protocol.frame_head(sid_a), protocol.frame_head(sid_live)
    assert b"".join(a.chunks).replace(head_a, head_live) == b"".join(live_sink.chunks)


def test_subscriptions_with_different_filters_never_get_each_others_frames() -> None:
    broker = make_broker(client_queue=1000)
    (a, conn_a), (b, conn_b), (c, conn_c) = join(broker), join(broker), join(broker)
    sid_a = sub(broker, conn_a, batch=True, glob=("f1*",))
    sid_b = sub(broker, conn_b, batch=True)
    sid_c = sub(broker, conn_c, batch=True, events=["moved_to"])
    for sink in (a, b, c):
        sink.take()
    behind(a, b, c)
    burst(broker, 3 * LONG)
    drain(broker, (a, conn_a), (b, conn_b), (c, conn_c))
    got_a, got_b, got_c = (unframe(s.take()) for s in (a, b, c))
    assert {m["subscription"] for m in got_a} == {sid_a}
    assert {m["subscription"] for m in got_b} == {sid_b}
    assert {m["subscription"] for m in got_c} == {sid_c}
    assert seqs(got_b) == list(range(1, 3 * LONG + 1))
    assert [m["path"] for m in got_a] == [m["path"] for m in got_b
                                          if m["path"].startswith("/a/f1")]
    assert [m["seq"] for m in got_c] == [m["seq"] for m in got_b if m["kind"] == "moved_to"]


def test_connections_at_different_positions_each_get_their_own_events_once() -> None:
    broker, (a, conn_a), (b, conn_b) = two_batched()
    behind(a)
    burst(broker, LONG)  # a queues it; b is written it at once
    behind(b)
    burst(broker, LONG, at=2.0)  # both queue it: one run for the two
    drain(broker, (b, conn_b))
    burst(broker, LONG, at=3.0)  # a queues it; b is written it at once
    drain(broker, (a, conn_a))
    everything = list(range(1, 3 * LONG + 1))
    assert seqs(unframe(a.take())) == seqs(unframe(b.take())) == everything


def test_a_notice_keeps_its_place_between_shared_frames() -> None:
    broker, (a, conn_a), (b, conn_b) = two_batched()
    behind(a, b)
    burst(broker, LONG)
    broker.overflow("a", "kernel_queue")
    burst(broker, 2, at=2.0)  # a short run between long ones: framed per connection
    burst(broker, LONG, at=3.0)
    broker.watch_lost("a", "/srv", "deleted")
    drain(broker, (a, conn_a), (b, conn_b))
    expected = [("events", LONG), ("overflow", 0), ("events", 2), ("events", LONG),
                ("watch_lost", 0)]
    msgs_a, msgs_b = a.take(), b.take()
    assert shape(msgs_a) == shape(msgs_b) == expected
    assert msgs_a[1]["seq"] == LONG
    assert seqs(unframe(msgs_a)) == list(range(1, 2 * LONG + 3))


def test_a_subscriber_short_of_room_gets_its_drops_told_and_the_others_all_events() -> None:
    broker, (a, conn_a), (b, conn_b) = two_batched(client_queue=LONG + 10)
    sid_a = sid_of(conn_a)
    behind(a, b)
    burst(broker, LONG)
    drain(broker, (b, conn_b))
    behind(b)
    # b has room for all of it, a for 10: a's part is a run of its own, b's the whole.
    burst(broker, LONG, at=2.0)
    drain(broker, (a, conn_a), (b, conn_b))
    msgs_a, msgs_b = a.take(), b.take()
    assert seqs(unframe(msgs_b)) == list(range(1, 2 * LONG + 1))
    assert seqs(unframe(msgs_a)) == list(range(1, LONG + 11))
    assert msgs_a[-1] == {"type": "dropped", "subscription": sid_a, "count": LONG - 10,
                          "first_seq": LONG + 11, "last_seq": 2 * LONG}
    assert not [m for m in msgs_b if m["type"] == "dropped"]


def test_frames_shared_before_a_reload_are_made_again_for_a_new_max_batch() -> None:
    broker = Broker(instance=INSTANCE, client_queue=1000, replay_buffer=1000,
                    max_subscriptions=8, max_batch=256)
    broker.set_watches([FakeWatch("a")])
    (a, conn_a), (b, conn_b) = join(broker), join(broker)
    sub(broker, conn_a, batch=True)
    sub(broker, conn_b, batch=True)
    a.take(), b.take()
    behind(a, b)
    burst(broker, LONG)
    drain(broker, (a, conn_a))
    broker.set_limits(client_queue=1000, replay_buffer=1000, max_subscriptions=8,
                      max_batch=SHARED_RUN)
    drain(broker, (b, conn_b))
    assert shape(a.take()) == [("events", LONG)]
    assert shape(b.take()) == [("events", SHARED_RUN), ("events", LONG - SHARED_RUN)]


def test_short_runs_of_a_connection_are_still_gathered_into_one_frame() -> None:
    broker = make_broker(client_queue=1000)
    sink, conn = join(broker)
    sub(broker, conn, batch=True)
    sink.take()
    behind(sink)
    for n in range(5):
        publish(broker, "a", float(n), [item(Kind.CREATE, f"/a/{n}")])
    drain(broker, (sink, conn))
    msgs = sink.take()
    assert shape(msgs) == [("events", 5)]
    assert [e["path"] for e in events(unframe(msgs))] == [f"/a/{n}" for n in range(5)]


def test_a_long_batched_replay_is_framed_whole_with_its_marker_in_place() -> None:
    # A replay fills its run while it queues it: framed once it leaves the queue, whole.
    broker = make_broker(client_queue=1000)
    burst(broker, LONG)
    broker.overflow(None, "kernel_queue")
    burst(broker, LONG, at=2.0)
    sink, conn = join(broker)
    sid = sub(broker, conn, batch=True, since=1)
    msgs = sink.take()
    assert shape(msgs) == [("subscribed", 0), ("events", LONG - 1), ("overflow", 0),
                           ("events", LONG)]
    assert seqs(unframe(msgs), sid) == list(range(2, 2 * LONG + 1))
