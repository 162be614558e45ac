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
from watchd.protocol import EVENT_HEAD
from watchd.subscription import Connection

# Lines handed to a sink per write while draining a queue: a transport that pauses part-way
# is overfilled by at most this much, and the syscalls are still batched.
FLUSH_LINES = 512
# Held events a replay looks at per turn of the loop and connection before it lets the others
# have theirs: a replay never holds the loop for long, however selective its filter.
REPLAY_STEP = 4096


@dataclass(slots=True)
class QueueLimits:
    """What every connection's queue is held to: one record, shared by whoever queues or
    drains, so that a reload changes it in one place."""

    client_queue: int  # a connection's queued events past which its events are dropped
    levels: QueueLevels  # of client_queue, for the hold-back

    @classmethod
    def of(cls, client_queue: int) -> QueueLimits:
        """The limits for a given daemon.client_queue."""
        return cls(client_queue, QueueLevels.of(client_queue))

    def set(self, client_queue: int) -> None:
        """Take a new daemon.client_queue (a reload)."""
        self.client_queue = client_queue
        self.levels = QueueLevels.of(client_queue)


class Outbox:
    """Drains connection queues, and asks a producer for more while a connection reads."""

    def __init__(
        self,
        limits: QueueLimits,
        produce: Callable[[Connection, int], int],
        defer: Callable[[Callable[[], None]], object] | None,
    ) -> None:
        self.limits = limits
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
                # Event lines, and no other line, begin with EVENT_HEAD.
                conn.queued_events -= sum(1 for line in chunk if line.startswith(EVENT_HEAD))
                sink.write(chunk)
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
