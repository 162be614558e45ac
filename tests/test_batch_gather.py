"""Batched events gather while the peer has not read what it was sent: the broker's side.

The server answers Connection.unread from the socket (TIOCOUTQ) and calls Broker.resume when
the peer reads; here a flag stands for the socket (the daemon's own is in
tests/e2e/test_batch.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_broker import (
    FakeSink,
    burst,
    join,
    make_broker,
    seqs,
    shape,
    sub,
    unframe,
)
from watchd.broker import Broker, Connection


class Peer:
    """Whether the client has read all it was sent, as the connection asks it."""

    def __init__(self, conn: Connection) -> None:
        self.behind = True
        conn.unread = lambda: self.behind


def gathering(client_queue: int = 10000, **filters: Any
              ) -> tuple[Broker, FakeSink, Connection, Peer]:
    broker = make_broker(client_queue=client_queue)
    sink, conn = join(broker)
    sub(broker, conn, batch=True, **filters)
    sink.take()
    return broker, sink, conn, Peer(conn)


def test_events_wait_for_the_peer_to_read_then_leave_as_one_frame() -> None:
    broker, sink, conn, peer = gathering()
    for at in range(5):
        burst(broker, 2, at=float(at))
    assert sink.take() == []
    peer.behind = False
    broker.resume(conn)  # what the server does when the peer reads
    msgs = sink.take()
    assert shape(msgs) == [("events", 10)]
    assert seqs(unframe(msgs)) == list(range(1, 11))
    assert not conn.held and not conn.queue and conn.queued_events == 0


def test_a_peer_that_has_read_gets_each_batch_at_once() -> None:
    broker, sink, _, peer = gathering()
    peer.behind = False
    burst(broker, 1)
    assert shape(sink.take()) == [("events", 1)]


def test_a_batch_joins_what_waited_when_the_peer_read_meanwhile() -> None:
    broker, sink, _, peer = gathering()
    burst(broker, 3)
    peer.behind = False
    burst(broker, 2, at=2.0)
    assert shape(sink.take()) == [("events", 5)]


def test_no_more_than_a_frame_waits() -> None:
    broker, sink, _, _ = gathering()
    for at in range(300):
        burst(broker, 1, at=float(at))
    msgs = sink.take()
    assert shape(msgs) == [("events", broker.max_batch)]


def test_a_reply_or_notice_sends_what_waited_first() -> None:
    broker, sink, conn, _ = gathering()
    burst(broker, 3)
    broker.overflow("a", "kernel_queue")
    burst(broker, 2, at=2.0)
    broker.reply(conn, b'{"type":"pong","id":1}\n')
    msgs = sink.take()
    assert shape(msgs) == [("events", 3), ("overflow", 0), ("events", 2), ("pong", 0)]
    assert seqs(unframe(msgs)) == [1, 2, 3, 4, 5]


def test_a_connection_with_a_line_subscription_never_waits() -> None:
    broker, sink, conn, _ = gathering()
    sub(broker, conn, id=2)
    sink.take()
    burst(broker, 1)
    burst(broker, 1, at=2.0)
    assert sorted(m["type"] for m in sink.take()) == ["event", "event", "events", "events"]


@pytest.mark.parametrize("client_queue", [10, 100])
def test_a_tiny_client_queue_never_waits(client_queue: int) -> None:
    """Gathered events count in the queue: with a client_queue this small they would bring the
    hold-back rule's levels near, so none wait."""
    broker, sink, _, _ = gathering(client_queue=client_queue)
    burst(broker, 1)
    burst(broker, 1, at=2.0)
    assert shape(sink.take()) == [("events", 1), ("events", 1)]


def test_a_paused_sink_queues_as_before_and_drops_are_told() -> None:
    broker, sink, conn, peer = gathering(client_queue=2100)
    sink.open = False
    for at in range(30):
        burst(broker, 100, at=float(at))
    sink.open = True
    peer.behind = False
    broker.resume(conn)
    msgs = sink.take()
    dropped = [m for m in msgs if m["type"] == "dropped"]
    assert sum(m["count"] for m in dropped) + len(unframe(msgs)) - len(dropped) == 3000
    assert seqs(unframe(msgs)) == sorted(seqs(unframe(msgs)))
