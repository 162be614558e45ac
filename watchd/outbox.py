"""A connection's way out: its queue drained to its sink at the pace the client reads, gaps
reported once there is room, and the limits every queue is held to.

What waits in a queue is sent first; only then is more produced for the connection (the next
step of a `since` replay, through the producer it is given), so that nothing of a replay waits
in a queue while the client is not reading.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from watchd.flow import QueueLevels
from watchd.protocol import DEFAULT_MAX_BATCH, EVENT_HEAD, FRAME_END, frames
from watchd.subscription import Connection, Queued

# Lines handed to a sink per write while draining a queue: a transport that pauses part-way
# is overfilled by at most this much, and the syscalls are still batched.
FLUSH_LINES = 512
# Events from which a queued run is sent in frames of its own, shared by the connections it was
# queued for, rather than gathered with its neighbours into frames made per connection: past
# this a frame's own cost to a client (its line and its object, about one event's) is small.
# Its bodies live as long as any connection still holds the run: a connection that never reads
# keeps them beside the run's tails, at most one more copy of client_queue events per filter
# shared by the connections behind (they share the one copy).
SHARED_RUN = 32
# Held events a replay looks at per turn of the loop and connection before it lets the others
# have theirs: a replay never holds the loop for long, however selective its filter.
REPLAY_STEP = 4096


@dataclass(slots=True)
class QueueLimits:
    """What every connection's queue is held to: one record, shared by whoever queues or
    drains, so that a reload changes it in one place."""

    client_queue: int  # a connection's queued events past which its events are dropped
    levels: QueueLevels  # of client_queue, for the hold-back
    max_batch: int = DEFAULT_MAX_BATCH  # events in one frame at most (daemon.max_batch)

    @classmethod
    def of(cls, client_queue: int, max_batch: int = DEFAULT_MAX_BATCH) -> QueueLimits:
        """The limits for a given daemon.client_queue and daemon.max_batch."""
        return cls(client_queue, QueueLevels.of(client_queue), max_batch)

    def set(self, client_queue: int, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        """Take a new daemon.client_queue and daemon.max_batch (a reload)."""
        self.client_queue = client_queue
        self.levels = QueueLevels.of(client_queue)
        self.max_batch = max_batch


class Outbox:
    """Drains connection queues, and asks a producer for more while a connection reads."""

    def __init__(
        self,
        limits: QueueLimits,
        produce: Callable[[Connection, int], int],
        defer: Callable[[Callable[[], None]], object] | None,
    ) -> None:
        self.limits = limits
        self.delivered = 0  # events it handed to sinks (the metrics add the fan-out's)
        # Queues a step of a connection's replays, looking at no more than the given number of
        # held events; returns how many it looked at.
        self._produce = produce
        # Runs a callback at the next turn of the loop (loop.call_soon), so that a long replay
        # lets the others be served in between; None replays to the end at once (tests).
        self._defer = defer

    def pump(self, conn: Connection) -> None:
        """Move queued lines to the sink while it is writable; report gaps once there is room;
        go on with replays while the sink takes their lines (a bounded step per turn)."""
        if conn.closed:
            return
        queue = conn.queue
        sink = conn.sink
        budget = REPLAY_STEP
        while True:
            while queue and sink.writable():
                chunk = [queue.popleft() for _ in range(min(len(queue), FLUSH_LINES))]
                events, lines = _lines(chunk, self.limits.max_batch)
                conn.queued_events -= events
                self.delivered += events
                sink.write(lines)
            if conn.lagging and not (queue and conn.queued_events >= self.limits.client_queue):
                for sub in list(conn.lagging.values()):
                    sub.settle()
                continue
            # A replay is produced only as fast as the client reads it: nothing of it waits in
            # the queue while the sink is paused.
            if not conn.replays or queue or not sink.writable():
                return
            if budget <= 0:
                if self._defer is not None:
                    if not conn.replay_deferred:
                        conn.replay_deferred = True
                        self._defer(lambda: self._turn(conn))
                    return
                budget = REPLAY_STEP
            budget -= self._produce(conn, budget)

    def _turn(self, conn: Connection) -> None:
        conn.replay_deferred = False
        self.pump(conn)


def _lines(chunk: list[Queued], max_batch: int) -> tuple[int, list[bytes]]:
    """How many events a run of queued items holds, and its bytes to send.

    A run of SHARED_RUN events or more goes out in frames of its own, made once for every
    connection it was queued for (protocol.Run). Shorter runs of a batched subscription next to
    each other are gathered into frames of at most max_batch, made for this connection: a
    client that fell behind a trickle of events gets them in few frames. A notice between runs
    ends a frame (it is never sent out of its place).
    """
    lines: list[bytes] = []
    events = 0
    head = b""  # of the frame being gathered in tails
    tails: list[bytes] = []
    shared = min(SHARED_RUN, max_batch)
    for item in chunk:
        if isinstance(item, bytes):
            if tails:
                lines += frames(head, tails, max_batch)
                tails = []
            lines.append(item)
            # Event lines, and no other line, begin with EVENT_HEAD.
            events += item.startswith(EVENT_HEAD)
            continue
        item_head, run = item
        count = len(run.tails)
        events += count
        if count >= shared:
            if tails:
                lines += frames(head, tails, max_batch)
                tails = []
            for body in run.bodies(max_batch):
                lines += (item_head, body, FRAME_END)
            continue
        if item_head is not head:
            if tails:
                lines += frames(head, tails, max_batch)
                tails = []
            head = item_head
        tails += run.tails  # copied: a run may be shared by the subscriptions of one filter
    if tails:
        lines += frames(head, tails, max_batch)
    return events, lines
