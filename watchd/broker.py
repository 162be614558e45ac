"""Sequence numbers, fan-out with a drop policy, and notices to subscribers; no sockets.

The daemon's event loop owns one Broker. Every event is numbered and serialized once; each
subscription that wants it gets the same tail bytes behind its own prefix. A connection whose
transport is paused gets a bounded queue of its own: past `client_queue` events its events are
discarded and each subscription is told exactly which seqs it missed, so a slow reader never slows
the others and never misses anything silently.

Subscriptions and their filters are in watchd.subscription; the replay history and `since`
replays in watchd.replay; opening and ending subscriptions in watchd.subscribe; the notices in
watchd.notices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from watchd.channel import Item
from watchd.counters import Counters
from watchd.fanout import FanOut
from watchd.flow import QueueLevels
from watchd.notices import Notices
from watchd.outbox import FLUSH_LINES, REPLAY_STEP, Outbox, QueueLimits
from watchd.protocol import DEFAULT_MAX_BATCH
from watchd.replay import History, Replays
from watchd.subscribe import Subscriptions
from watchd.subscription import (
    Connection,
    Filter,
    Peer,
    Sink,
    Subscription,
    WatchInfo,
)

__all__ = [
    "FLUSH_LINES",
    "REPLAY_STEP",
    "Broker",
    "Connection",
    "Filter",
    "Item",
    "Peer",
    "Sink",
    "Subscription",
    "WatchInfo",
]


class Broker:
    """Numbers, serializes, holds and fans out events to the subscriptions of connections."""

    def __init__(
        self,
        *,
        instance: str,
        client_queue: int,
        replay_buffer: int,
        max_subscriptions: int,
        max_patterns: int = 64,
        max_paths: int = 256,
        max_batch: int = DEFAULT_MAX_BATCH,
        defer: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.instance = instance
        self._counts = Counters()
        self._watches: dict[str, WatchInfo] = {}
        self._conns: dict[Connection, None] = {}  # insertion-ordered set
        self._history = History(replay_buffer)
        # A replay that ends takes live events from then on: the routes change.
        self._replays = Replays(self._history, self._routes_changed)
        self._limits = QueueLimits.of(client_queue, max_batch)
        self._outbox = Outbox(self._limits, self._replays.step, defer)
        self._fanout = FanOut(self._conns, self._history, self._replays, self._counts,
                              limits=self._limits, pump=self._outbox.pump)
        # Number, serialize, hold and fan out reads of one watch in a row, each (time, items).
        # A daemon that fell behind finds many small batches waiting; handing them on together
        # costs one write per connection instead of one per batch. The fan-out's own method,
        # not one calling it: this is the hot path, and most calls carry a single event.
        # Returns when the first client write began (wall clock), None if none was written to.
        self.publish_reads: Callable[[str, list[tuple[float, list[Item]]]], float | None] = (
            self._fanout.publish)
        # The notices to subscribers, handed on as the methods of their own part (as above: no
        # call in between): overflow, resynced, watch_lost, watch_restored, watch_degraded.
        notices = Notices(self._conns, self._history, self._counts, self._outbox.pump)
        self.overflow = notices.overflow
        self.resynced = notices.resynced
        self.watch_lost = notices.watch_lost
        self.watch_restored = notices.watch_restored
        self.watch_degraded = notices.watch_degraded
        # Subscribing and unsubscribing, handed on the same way (see watchd.subscribe).
        self._subscriptions = subscriptions = Subscriptions(
            instance, self._history, self._replays, self._outbox.pump, self._routes_changed,
            max_subscriptions=max_subscriptions, max_patterns=max_patterns, max_paths=max_paths)
        self.subscribe = subscriptions.subscribe
        self.unsubscribe = subscriptions.unsubscribe

    # --- configuration ---------------------------------------------------------------------------

    def set_watches(self, watches: Iterable[WatchInfo]) -> None:
        """Take the configured watches (at start and after a reload) and recompute every ACL.

        A subscription that loses a watch it received is told watch_lost (reason forbidden);
        one that gets such a watch back, watch_restored.
        """
        old, self._watches = self._watches, {w.name: w for w in watches}
        self._subscriptions.watches = self._watches
        for conn in self._conns:
            # A list, not any() over a generator: every subscription is reviewed.
            told = [sub.review(old, self._watches) for sub in conn.subs.values()]
            if any(told):
                self._outbox.pump(conn)
        self._routes_changed()

    def set_limits(
        self,
        *,
        client_queue: int,
        replay_buffer: int,
        max_subscriptions: int,
        max_patterns: int = 64,
        max_paths: int = 256,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        """Apply new limits (a reload); the replay history keeps its newest events.

        The history is resized first: it alone takes memory, and a MemoryError there leaves
        every limit as it was.
        """
        if replay_buffer != self.replay_buffer:
            self._replays.before_evict(len(self._history) - replay_buffer)
            self._history.resize(replay_buffer)
        self._limits.set(client_queue, max_batch)
        subscriptions = self._subscriptions
        subscriptions.max_subscriptions = max_subscriptions
        subscriptions.max_patterns = max_patterns
        subscriptions.max_paths = max_paths
        # A larger queue may let lagging connections report their gaps now.
        for conn in self._conns:
            self._outbox.pump(conn)

    @property
    def client_queue(self) -> int:
        """Event lines a connection may have queued before its events are dropped."""
        return self._limits.client_queue

    @property
    def levels(self) -> QueueLevels:
        """The queue levels of client_queue that flow control looks at."""
        return self._limits.levels

    @property
    def near_full_reached(self) -> bool:
        """Whether a connection's queue reached levels.near_full since take_near_full."""
        return self._fanout.near_full_reached

    def take_near_full(self) -> bool:
        """near_full_reached, which this clears: the hold-back has taken the signal."""
        reached = self._fanout.near_full_reached
        self._fanout.near_full_reached = False
        return reached

    @property
    def history(self) -> History:
        """The replay history (a durable daemon restores it and records what it takes)."""
        return self._history

    @property
    def max_batch(self) -> int:
        """The most events in one frame of a batched subscription."""
        return self._limits.max_batch

    @property
    def replay_buffer(self) -> int:
        """Events held for `since`."""
        return self._history.size

    # --- connections -----------------------------------------------------------------------------

    def connect(self, sink: Sink, peer: Peer) -> Connection:
        """Register a new connection."""
        conn = Connection(sink=sink, peer=peer)
        self._conns[conn] = None
        return conn

    def disconnect(self, conn: Connection) -> None:
        """Forget a connection: its subscriptions, its queue and its dropped ranges."""
        conn.closed = True
        self._replays.forget(conn)
        conn.subs.clear()
        conn.lagging.clear()
        conn.queue.clear()
        conn.queued_events = 0
        if conn in self._conns:
            del self._conns[conn]
            self._counts.gone(conn)
        self._routes_changed()

    def reply(self, conn: Connection, line: bytes) -> None:
        """Send a reply or notice line to a connection, in order with its events; never dropped."""
        if conn.closed:
            return
        conn.queue.append(line)
        self._outbox.pump(conn)

    def resume(self, conn: Connection) -> None:
        """The connection's sink is writable again: drain its queue and report its gaps."""
        if not conn.closed:
            self._outbox.pump(conn)

    # --- counters --------------------------------------------------------------------------------

    @property
    def subscription_count(self) -> int:
        """Subscriptions over all connections."""
        return sum(len(conn.subs) for conn in self._conns)

    @property
    def last_seq(self) -> int:
        """The newest seq assigned."""
        return self._history.last_seq

    @property
    def oldest(self) -> int:
        """The oldest seq held for replay; last_seq + 1 when none is held."""
        return self._history.oldest

    @property
    def events(self) -> int:
        """Events published."""
        return self._counts.events

    @property
    def overflows(self) -> int:
        """Overflow occasions, however many subscriptions were told."""
        return self._counts.overflows

    @property
    def dropped(self) -> int:
        """Event lines discarded for slow connections, closed ones included."""
        return self._counts.dropped(self._conns)

    @property
    def counts(self) -> Counters:
        """The counters, as the metrics read them."""
        return self._counts

    @property
    def delivered(self) -> int:
        """Events handed to clients' sockets, one per subscription that received each: written
        at once by the fan-out, or later from a connection's queue."""
        return self._counts.delivered + self._outbox.delivered

    def stats(self) -> dict[str, int]:
        """The counters reported by status."""
        return self._counts.stats(self._conns, self.last_seq, self.oldest)

    def stats_for(self, uid: int, visible: Iterable[str]) -> dict[str, int]:
        """stats() as a peer that sees only some watches may read them (see Counters.stats)."""
        return self._counts.stats(self._conns, self.last_seq, self.oldest, (uid, visible))

    # --- internals -------------------------------------------------------------------------------

    def _routes_changed(self) -> None:
        self._fanout.routes.clear()
