"""A `since` replay gives a watch's `overflow` notices with "resync": true and their `resynced`
as the live subscribers got them: one `resynced` per such overflow, so that a client that counts
them is not left with a `resynced` that answers nothing (or, resuming, with one owed for ever)."""

from __future__ import annotations

from tests.test_broker import creates, join, make_broker, publish, sub


def test_a_resync_repeated_at_one_seq_is_replayed_overflow_and_resynced_alike() -> None:
    # Two losses of one watch, nothing published in between (the first resync found no
    # difference): a daemon started twice from its state without an event between, say.
    broker = make_broker()
    live, conn = join(broker)
    sub(broker, conn)
    publish(broker, "a", 1.0, creates("/a/1"))
    for _ in range(2):
        broker.overflow("a", "daemon_restart", frozenset({"a"}))
        broker.resynced("a", 0, 1.0)
    told = [(m["type"], m["seq"], m.get("resync")) for m in live.messages()[2:]]
    assert told == [("overflow", 1, True), ("resynced", 1, None)] * 2
    replayed, conn2 = join(broker)
    sub(broker, conn2, since=1)
    assert [(m["type"], m["seq"], m.get("resync")) for m in replayed.messages()[1:]] == told


def test_an_overflow_without_resync_repeated_at_one_seq_is_held_once() -> None:
    # It tells a re-subscriber nothing new, and repeated overflows stay bounded.
    broker = make_broker()
    publish(broker, "a", 1.0, creates("/a/1"))
    for _ in range(3):
        broker.overflow("a", "kernel_queue")
    replayed, conn = join(broker)
    sub(broker, conn, since=1)
    assert [m["type"] for m in replayed.messages()[1:]] == ["overflow"]


def test_an_answer_repeated_at_one_seq_is_replayed_after_each_announcement() -> None:
    """A loss announced, its rescan failing (root away: "resync": false), the root back unchanged
    (resynced), the same again, nothing published in between: each announcement keeps its
    answer in the replay, as live (else the journal, too, holds one unanswered)."""
    broker = make_broker()
    live, conn = join(broker)
    sub(broker, conn)
    publish(broker, "a", 1.0, creates("/a/1"))
    broker.overflow("a", "kernel_queue", frozenset({"a"}))
    broker.overflow("a", "kernel_queue")
    broker.resynced("a", 0, 1.0)
    broker.overflow("a", "kernel_queue", frozenset({"a"}))
    broker.overflow("a", "kernel_queue")
    told = [(m["type"], m.get("resync")) for m in live.messages()[2:]]
    assert told == [("overflow", True), ("overflow", False), ("resynced", None),
                    ("overflow", True), ("overflow", False)]
    replayed, conn2 = join(broker)
    sub(broker, conn2, since=1)
    assert [(m["type"], m.get("resync")) for m in replayed.messages()[1:]] == told
