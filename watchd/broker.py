"""Subscriptions, filters, sequence numbers, replay and fan-out with a drop policy; no sockets.

The daemon's event loop owns one Broker. Every event is numbered and serialized once; each
subscription that wants it gets the same tail bytes behind its own prefix. A connection whose
transport is paused gets a bounded queue of its own: past `client_queue` events its events are
discarded and each subscription is told exactly which seqs it missed, so a slow reader never slows
the others and never misses anything silently.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Protocol

from watchd import protocol
from watchd.channel import Item
from watchd.events import ALL_KINDS, KIND_BITS, Kind, kinds_mask
from watchd.flow import QueueLevels
from watchd.globs import GlobSet
from watchd.protocol import (
    EVENT_HEAD,
    ErrorCode,
    JsonScalar,
    LostReason,
    ProtocolError,
    Subscribe,
)

# Lines handed to a sink per write while draining a queue: a transport that pauses part-way
# is overfilled by at most this much, and the syscalls are still batched.
FLUSH_LINES = 512
# Held events a replay looks at per turn of the loop and connection before it lets the others
# have theirs: a replay never holds the loop for long, however selective its filter.
REPLAY_STEP = 4096

# Every kind bit; each event's mask carries exactly one of them.
_KIND_BITS_ALL = kinds_mask(ALL_KINDS)

# One held event: (seq, watch, kind bit, path, tail). A plain tuple because publish builds one
# per event on the hot path, where a NamedTuple or dataclass constructor costs measurably more.
_Held = tuple[int, str, int, str, bytes]


class Sink(Protocol):
    """Where a connection's bytes go: the server's per-connection transport glue."""

    def write(self, chunks: list[bytes]) -> None:
        """Hand bytes to the transport; never blocks."""

    def writable(self) -> bool:
        """False while the transport is paused (its buffer is above its high-water mark)."""


class WatchInfo(Protocol):
    """What the broker needs of a configured watch (watchd.config.WatchConfig fits)."""

    @property
    def name(self) -> str:
        """The watch's unique name."""

    @property
    def path(self) -> str:
        """The watch's root, as configured."""

    def may_see(self, uid: int, gid: int, groups: frozenset[int]) -> bool:
        """Whether a peer with these credentials may receive this watch's events."""


@dataclass(frozen=True, slots=True)
class Peer:
    """The credentials of the process at the other end of a connection."""

    uid: int
    gid: int
    groups: frozenset[int]
    pid: int


# Distinct filters kept compiled: subscriptions asking the same share one Filter (and so one
# test per event, see publish_reads), and a request repeated costs no compiling.
FILTER_CACHE = 1024


# eq=False: compared and hashed by identity, which is cheap where publish groups subscriptions
# by filter; equal requests get the same object from the broker's cache.
@dataclass(frozen=True, slots=True, eq=False)
class Filter:
    """A subscription's filters; all must match. None (or all kinds) means absent."""

    watches: frozenset[str] | None
    kinds: int  # the kind bits wanted
    paths: frozenset[str] | None  # exact paths; below any of them is `prefixes`
    prefixes: tuple[str, ...]  # each path with a trailing "/"
    glob: GlobSet | None  # matched on the base name

    @classmethod
    def of(cls, req: Subscribe) -> Filter:
        """The filter of a subscribe request."""
        paths = req.paths
        if paths is not None and "/" in paths:
            paths = None  # everything lies below the root
        glob = None if req.glob is None else GlobSet.of(req.glob)
        return cls(
            watches=None if req.watch is None else frozenset(req.watch),
            kinds=_KIND_BITS_ALL if req.events is None else kinds_mask(req.events),
            paths=None if paths is None else frozenset(paths),
            prefixes=() if paths is None else tuple(p + "/" for p in paths),
            glob=glob,
        )

    @property
    def simple(self) -> bool:
        """True when only the watch names (and the ACL) decide: every event of a watch matches."""
        return self.kinds == _KIND_BITS_ALL and self.paths is None and self.glob is None

    def matches(self, bit: int, path: str) -> bool:
        """Whether an event of this kind bit on this path passes the kind, path and glob filters."""
        if not self.kinds & bit:
            return False
        if self.paths is not None and path not in self.paths and not path.startswith(
            self.prefixes
        ):
            return False
        return self.glob is None or self.glob.match(path[path.rfind("/") + 1 :])


@dataclass(eq=False, slots=True)
class _Cursor:
    """How far a replay has come: it reads the history as the client reads its lines."""

    pos: int  # the next seq to look at
    marked: int  # overflow markers at seqs up to this one have been queued


@dataclass(eq=False, slots=True)
class Subscription:
    """One subscription of a connection, with the range of its events dropped since last told."""

    sid: str
    conn: Connection
    filter: Filter
    prefix: bytes  # EVENT_HEAD + sid: an event line is this + the shared tail
    visible: frozenset[str]  # watch names it receives: its watch filter within the ACL
    drop_count: int = 0
    drop_first: int = 0
    drop_last: int = 0
    # Watches a reload took away from it (it was told watch_lost, reason forbidden).
    revoked: frozenset[str] = frozenset()
    # Set while it catches up with `since`: it then takes its events, live ones included, from
    # the history (in seq order) instead of from publish.
    replay: _Cursor | None = None


@dataclass(eq=False, slots=True)
class Connection:
    """A client connection as the broker sees it; the server only hands it back."""

    sink: Sink
    peer: Peer
    subs: dict[str, Subscription] = field(default_factory=dict)
    # Lines waiting for the sink to become writable, in the order they must be sent.
    queue: deque[bytes] = field(default_factory=deque)
    queued_events: int = 0  # event lines in `queue`: what client_queue bounds
    lagging: dict[str, Subscription] = field(default_factory=dict)  # subs with a dropped range
    dropped: int = 0  # event lines discarded for this connection (its owner's status)
    replays: dict[str, Subscription] = field(default_factory=dict)  # subs catching up
    replay_deferred: bool = False  # a turn of its replays is scheduled
    closed: bool = False

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The sids this connection holds."""
        return tuple(self.subs)


@dataclass(frozen=True, slots=True)
class _Route:
    """The subscriptions of one connection that receive a given watch."""

    conn: Connection
    subs: tuple[Subscription, ...]
    prefixes: tuple[bytes, ...]  # of `subs`, when every one of them is simple
    simple: bool


@dataclass(frozen=True, slots=True)
class _Marker:
    """An overflow held in the replay history: events may be lost after seq."""

    seq: int
    watch: str | None
    reason: str


def _interleave(prefixes: tuple[bytes, ...], tails: list[bytes]) -> list[bytes]:
    """[p1, t1, p2, t1, ..., p1, t2, p2, t2, ...]: every tail behind every prefix, in seq order."""
    n = len(tails)
    step = 2 * len(prefixes)
    chunks: list[bytes] = [b""] * (step * n)
    # Slice assignment does the per-event work in C: one pass per subscription, not per event.
    for j, prefix in enumerate(prefixes):
        chunks[2 * j :: step] = [prefix] * n
        chunks[2 * j + 1 :: step] = tails
    return chunks


def _quote(text: str) -> str:
    return json.dumps(text)


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
        defer: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.instance = instance
        # Runs a callback at the next turn of the loop (loop.call_soon), so that a long replay
        # lets the others be served in between; None replays to the end at once (tests).
        self._defer = defer
        self.client_queue = client_queue
        self.replay_buffer = replay_buffer
        self.max_subscriptions = max_subscriptions
        self.max_patterns = max_patterns
        self.max_paths = max_paths
        self._filters: dict[tuple[object, ...], Filter] = {}  # see FILTER_CACHE
        self.levels = QueueLevels.of(client_queue)
        # Set when a connection's queue reaches levels.near_full: worth a look at the congestion.
        self.queues_filling = False
        self.last_seq = 0
        self.events = 0  # published
        self.dropped = 0  # event lines discarded for slow connections
        self.overflows = 0  # overflow occasions, however many subscriptions were told
        # The same per watch ("" for every watch at once), for a status limited to some watches.
        self._events_of: dict[str, int] = {}
        self._overflows_of: dict[str, int] = {}
        self._encoder = protocol.EventEncoder()
        self._kinds: dict[int, Kind] = {bit: kind for kind, bit in KIND_BITS.items()}
        self._watches: dict[str, WatchInfo] = {}
        self._conns: dict[Connection, None] = {}  # insertion-ordered set
        self._held: deque[_Held] = deque(maxlen=replay_buffer)
        self._markers: deque[_Marker] = deque()
        self._routes: dict[str, tuple[_Route, ...]] = {}  # per watch; cleared on any change
        self._replaying: dict[Subscription, None] = {}  # subscriptions with a replay under way
        self._sids = 0

    # --- configuration ---------------------------------------------------------------------------

    def set_watches(self, watches: Iterable[WatchInfo]) -> None:
        """Take the configured watches (at start and after a reload) and recompute every ACL.

        A subscription that loses a watch it received is told watch_lost (reason forbidden);
        one that gets such a watch back, watch_restored.
        """
        old, self._watches = self._watches, {w.name: w for w in watches}
        for conn in self._conns:
            touched = False
            for sub in conn.subs.values():
                before = sub.visible
                sub.visible = self._visible(conn.peer, sub.filter)
                lost = (before - sub.visible) & self._watches.keys()
                back = sub.revoked & sub.visible
                for name in sorted(lost):
                    # The path the client knew: a reload that moved the watch must not say where.
                    line = protocol.watch_lost(sub.sid, name, old[name].path, LostReason.FORBIDDEN)
                    self._notice(sub, line)
                for name in sorted(back):
                    line = protocol.watch_restored(sub.sid, name, self._watches[name].path)
                    self._notice(sub, line)
                if lost or back:
                    sub.revoked = (sub.revoked | lost) - back
                    touched = True
            if touched:
                self._pump(conn)
        self._routes.clear()

    def set_limits(
        self,
        *,
        client_queue: int,
        replay_buffer: int,
        max_subscriptions: int,
        max_patterns: int = 64,
        max_paths: int = 256,
    ) -> None:
        """Apply new limits (a reload); the replay history keeps its newest events."""
        self.client_queue = client_queue
        self.levels = QueueLevels.of(client_queue)
        self.max_subscriptions = max_subscriptions
        self.max_patterns = max_patterns
        self.max_paths = max_paths
        if replay_buffer != self.replay_buffer:
            self._before_evict(len(self._held) - replay_buffer)
            self.replay_buffer = replay_buffer
            self._held = deque(self._held, maxlen=replay_buffer)
            self._prune_markers()
        # A larger queue may let lagging connections report their gaps now.
        for conn in self._conns:
            self._pump(conn)

    # --- connections -----------------------------------------------------------------------------

    def connect(self, sink: Sink, peer: Peer) -> Connection:
        """Register a new connection."""
        conn = Connection(sink=sink, peer=peer)
        self._conns[conn] = None
        return conn

    def disconnect(self, conn: Connection) -> None:
        """Forget a connection: its subscriptions, its queue and its dropped ranges."""
        conn.closed = True
        for sub in conn.replays.values():
            self._replaying.pop(sub, None)
        conn.replays.clear()
        conn.subs.clear()
        conn.lagging.clear()
        conn.queue.clear()
        conn.queued_events = 0
        self._conns.pop(conn, None)
        self._routes.clear()

    def reply(self, conn: Connection, line: bytes) -> None:
        """Send a reply or notice line to a connection, in order with its events; never dropped."""
        if conn.closed:
            return
        conn.queue.append(line)
        self._pump(conn)

    def resume(self, conn: Connection) -> None:
        """The connection's sink is writable again: drain its queue and report its gaps."""
        if not conn.closed:
            self._pump(conn)

    # --- subscriptions ---------------------------------------------------------------------------

    def subscribe(self, conn: Connection, req: Subscribe) -> str:
        """Add a subscription; queue `subscribed` then the replayed events; return its sid."""
        self._check_watches(conn.peer, req)
        if len(conn.subs) >= self.max_subscriptions:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"this connection already holds {len(conn.subs)} subscriptions, the most allowed "
                "(daemon.max_subscriptions); unsubscribe one or open another connection",
                req.id,
            )
        if req.since is not None:
            self._check_since(req.since, req.instance, req.id)
        flt = self._filter(req)
        self._sids += 1
        sid = f"s{self._sids}"
        sub = Subscription(
            sid=sid,
            conn=conn,
            filter=flt,
            prefix=EVENT_HEAD + sid.encode("ascii"),
            visible=self._visible(conn.peer, flt),
        )
        conn.subs[sid] = sub
        self._routes.clear()
        conn.queue.append(protocol.subscribed(req.id, sid, self.last_seq))
        if req.since is not None:
            # The replay reads the history up to the newest event, live ones included, and only
            # then hands the subscription to publish: every seq after `since` once, in order.
            sub.replay = _Cursor(pos=req.since + 1, marked=req.since - 1)
            conn.replays[sid] = sub
            self._replaying[sub] = None
        self._pump(conn)
        return sid

    def unsubscribe(self, conn: Connection, sid: str, req_id: JsonScalar) -> None:
        """End one of the connection's subscriptions and queue `unsubscribed`."""
        sub = conn.subs.pop(sid, None)
        if sub is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_SUBSCRIPTION,
                f'"subscription": {_quote(sid)} is not a subscription of this connection',
                req_id,
            )
        self._routes.clear()
        if sub.replay is not None:
            self._end_replay(sub)
        if sub.drop_count:
            self._settle(sub)  # its gap is still news to the client
        conn.queue.append(protocol.unsubscribed(req_id, sid))
        self._pump(conn)

    @property
    def subscription_count(self) -> int:
        """Subscriptions over all connections."""
        return sum(len(conn.subs) for conn in self._conns)

    @property
    def oldest(self) -> int:
        """The oldest seq held for replay; last_seq + 1 when none is held."""
        return self._held[0][0] if self._held else self.last_seq + 1

    def stats(self) -> dict[str, int]:
        """The counters reported by status."""
        return {
            "clients": len(self._conns),
            "subscriptions": self.subscription_count,
            "events": self.events,
            "dropped": self.dropped,
            "overflows": self.overflows,
            "seq": self.last_seq,
            "oldest": self.oldest,
        }

    def stats_for(self, uid: int, visible: Iterable[str]) -> dict[str, int]:
        """stats() as a peer that sees only some watches may read them.

        Counters of events and overflows cover the visible watches; clients, subscriptions and
        drops those of the peer's own user, so that nothing is told of the others' activity.
        """
        mine = [conn for conn in self._conns if conn.peer.uid == uid]
        names = set(visible)
        return {
            "clients": len(mine),
            "subscriptions": sum(len(conn.subs) for conn in mine),
            "events": sum(n for w, n in self._events_of.items() if w in names),
            "dropped": sum(conn.dropped for conn in mine),
            "overflows": sum(n for w, n in self._overflows_of.items() if w in names or not w),
            "seq": self.last_seq,
            "oldest": self.oldest,
        }

    # --- events and notices ----------------------------------------------------------------------

    def publish(self, watch: str, time: float, items: list[Item]) -> None:
        """Number, serialize, hold and fan out a batch of events of one watch read at `time`."""
        self.publish_reads(watch, [(time, items)])

    def publish_reads(self, watch: str, reads: list[tuple[float, list[Item]]]) -> None:
        """publish for several reads of one watch in a row, each (time, items): one write each.

        A daemon that fell behind finds many small batches waiting; handing them on together
        costs one write per connection instead of one per batch.
        """
        if self._replaying:
            # What the history is about to forget, replays that have not reached it count as
            # dropped (asked for again, it is since_expired: the client then rescans).
            incoming = sum(len(items) for _, items in reads)
            self._before_evict(len(self._held) + incoming - self.replay_buffer)
        routes = self._routes.get(watch)
        if routes is None:
            routes = self._routes[watch] = self._route(watch)
        # Connections with lines waiting send them first. That may end a replay, which puts its
        # subscription among the routes: take them again then.
        pumped = False
        for route in routes:
            conn = route.conn
            if conn.queue or conn.lagging:
                self._pump(conn)
                pumped = True
        if pumped and watch not in self._routes:
            routes = self._routes[watch] = self._route(watch)
        # Decide once per batch how each connection is served: the state of a sink only changes
        # when it is written to, which happens after the loop.
        fast: list[_Route] = []  # writable, every subscription simple: all events, no tests
        # The others, grouped by filter so that subscriptions asking the same thing (many clients
        # running the same command) cost one test per event. Out None: via the queue.
        groups: dict[Filter, list[tuple[Subscription, list[bytes] | None]]] = {}
        outs: list[tuple[Connection, list[bytes]]] = []
        for route in routes:
            out: list[bytes] | None = None
            if not route.conn.queue and route.conn.sink.writable():
                if route.simple:
                    fast.append(route)
                    continue
                out = []
                outs.append((route.conn, out))
            for sub in route.subs:
                groups.setdefault(sub.filter, []).append((sub, out))
        general = list(groups.items())

        kinds = self._kinds
        tail_of = self._encoder.tail
        hold = self._held.append
        tails: list[bytes] = []
        batch: list[_Held] = []  # for the filters, when there are any
        keep = batch.append if general else None
        seq = self.last_seq
        for time, items in reads:
            for mask, cookie, path, src_path in items:
                bit = mask & _KIND_BITS_ALL
                kind = kinds.get(bit)
                if kind is None:
                    continue  # not exactly one kind bit: nothing a client could be told
                seq += 1
                tail = tail_of(seq, time, watch, kind, path, mask, cookie, src_path)
                entry = (seq, watch, bit, path, tail)
                hold(entry)
                tails.append(tail)
                if keep is not None:
                    keep(entry)
        published = seq - self.last_seq
        if published:
            self.events += published
            self._events_of[watch] = self._events_of.get(watch, 0) + published
        self.last_seq = seq

        # Subscribers without filters first: what others' filters cost never delays them.
        if tails:
            for route in fast:
                route.conn.sink.write(_interleave(route.prefixes, tails))
        for seq, _, bit, path, tail in batch:
            for flt, targets in general:
                if flt.matches(bit, path):
                    for sub, sink_out in targets:
                        if sink_out is None:
                            self._queue_event(sub, seq, tail)
                        else:
                            sink_out.append(sub.prefix)
                            sink_out.append(tail)
        for conn, chunks in outs:
            if chunks:
                conn.sink.write(chunks)

    def overflow(self, watch: str | None, reason: str) -> None:
        """Tell the subscribers of a watch (all, for None) that events may have been lost here."""
        self.overflows += 1
        self._overflows_of[watch or ""] = self._overflows_of.get(watch or "", 0) + 1
        seq = self.last_seq
        marker = _Marker(seq, watch, reason)
        # The same occasion twice at one seq tells a re-subscriber nothing new; skipping it also
        # bounds the markers when overflows repeat with no event in between.
        if not self._marked(marker):
            self._markers.append(marker)
            self._prune_markers()
        # A replay under way meets the marker in the history, in its place among the events.
        self._notify(watch, lambda sid: protocol.overflow(sid, seq, reason, watch), live_only=True)

    def watch_lost(self, watch: str, path: str, reason: str) -> None:
        """Tell a watch's subscribers that its root went away (call before a reload removes it)."""
        self._notify(watch, lambda sid: protocol.watch_lost(sid, watch, path, reason))

    def watch_restored(self, watch: str, path: str) -> None:
        """Tell a watch's subscribers that its root is watched again."""
        self._notify(watch, lambda sid: protocol.watch_restored(sid, watch, path))

    def watch_degraded(self, watch: str, unwatched: int, reason: str) -> None:
        """Tell a watch's subscribers that a limit leaves some of its directories unwatched."""
        self._notify(watch, lambda sid: protocol.watch_degraded(sid, watch, unwatched, reason))

    # --- internals -------------------------------------------------------------------------------

    def _check_watches(self, peer: Peer, req: Subscribe) -> None:
        for name in req.watch or ():
            watch = self._watches.get(name)
            # A watch this peer may not see is answered as one that does not exist: the
            # difference would tell any socket user which names are configured.
            if watch is None or not self._sees(peer, watch):
                known = ", ".join(
                    sorted(n for n, w in self._watches.items() if self._sees(peer, w))
                )
                raise ProtocolError(
                    ErrorCode.UNKNOWN_WATCH,
                    f'"watch": no watch named {_quote(name)} is configured; '
                    f"known: {known or 'none'}",
                    req.id,
                )

    def _filter(self, req: Subscribe) -> Filter:
        """The request's filter within the caps, compiled once per distinct request."""
        for name, items, cap, key in (
            ("glob", req.glob, self.max_patterns, "max_patterns"),
            ("paths", req.paths, self.max_paths, "max_paths"),
        ):
            if items is not None and len(items) > cap:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST,
                    f'"{name}": {len(items)} given, more than one subscription may have '
                    f"(daemon.{key} = {cap}); split it over several subscriptions",
                    req.id,
                )
        key_of = tuple(
            None if v is None else tuple(v)
            for v in (req.watch, req.events, req.paths, req.glob)
        )
        flt = self._filters.get(key_of)
        if flt is None:
            if len(self._filters) >= FILTER_CACHE:
                del self._filters[next(iter(self._filters))]  # the oldest
            flt = self._filters[key_of] = Filter.of(req)
        return flt

    def _check_since(self, since: int, instance: str | None, req_id: JsonScalar) -> None:
        oldest = self.oldest
        if instance is not None and instance != self.instance:
            raise ProtocolError(
                ErrorCode.SINCE_EXPIRED,
                f'"instance": {_quote(instance)} is not this daemon\'s instance '
                f"({_quote(self.instance)}): the daemon restarted and its seqs began anew; "
                "rescan, then subscribe without since",
                req_id,
                extra={"oldest": oldest},
            )
        if since > self.last_seq:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f'"since": {since} is past the last seq assigned ({self.last_seq}); '
                "use a seq this daemon sent",
                req_id,
            )
        if since < oldest - 1:
            raise ProtocolError(
                ErrorCode.SINCE_EXPIRED,
                f'"since": the events after {since} are no longer held (the oldest is {oldest}, '
                "daemon.replay_buffer); rescan, then subscribe without since",
                req_id,
                extra={"oldest": oldest},
            )

    @staticmethod
    def _sees(peer: Peer, watch: WatchInfo) -> bool:
        return watch.may_see(peer.uid, peer.gid, peer.groups)

    def _visible(self, peer: Peer, flt: Filter) -> frozenset[str]:
        """The configured watches a subscription receives: named by its filter and allowed."""
        return frozenset(
            name
            for name, watch in self._watches.items()
            if (flt.watches is None or name in flt.watches) and self._sees(peer, watch)
        )

    def _route(self, watch: str) -> tuple[_Route, ...]:
        routes = []
        for conn in self._conns:
            subs = tuple(
                sub
                for sub in conn.subs.values()
                if watch in sub.visible and sub.replay is None
            )
            if subs:
                simple = all(sub.filter.simple for sub in subs)
                routes.append(_Route(conn, subs, tuple(sub.prefix for sub in subs), simple))
        return tuple(routes)

    def _queue_event(self, sub: Subscription, seq: int, tail: bytes) -> None:
        """Queue an event line for a connection that is behind, or count it as dropped."""
        conn = sub.conn
        if conn.queued_events >= self.client_queue:
            self._drop(sub, seq)
            return
        if sub.drop_count:
            # _pump reports gaps as soon as there is room, so this only guards the order: a
            # gap must never be reported after an event that came later.
            self._settle(sub)
        conn.queue.append(sub.prefix + tail)
        conn.queued_events += 1
        if conn.queued_events >= self.levels.near_full:
            self.queues_filling = True

    def _notice(self, sub: Subscription, line: bytes) -> None:
        """Queue a notice for a subscription, after the report of any gap it has."""
        if sub.drop_count:
            self._settle(sub)
        sub.conn.queue.append(line)

    def _drop(self, sub: Subscription, seq: int) -> None:
        """Count an event of a subscription as dropped, in its range to be reported."""
        if not sub.drop_count:
            sub.drop_first = seq
            sub.conn.lagging[sub.sid] = sub
        sub.drop_count += 1
        sub.drop_last = seq
        self.dropped += 1
        sub.conn.dropped += 1

    def _settle(self, sub: Subscription) -> None:
        """Queue the `dropped` notice of a subscription's gap and start a new range."""
        sub.conn.queue.append(
            protocol.dropped(sub.sid, sub.drop_count, sub.drop_first, sub.drop_last)
        )
        sub.drop_count = sub.drop_first = sub.drop_last = 0
        sub.conn.lagging.pop(sub.sid, None)

    def _pump(self, conn: Connection) -> None:
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
            if conn.lagging and not (queue and conn.queued_events >= self.client_queue):
                for sub in list(conn.lagging.values()):
                    self._settle(sub)
                continue
            # A replay is produced only as fast as the client reads it: nothing of it waits in
            # the queue while the sink is paused.
            if not conn.replays or queue or not sink.writable():
                return
            if budget <= 0:
                if self._defer is not None:
                    if not conn.replay_deferred:
                        conn.replay_deferred = True
                        self._defer(lambda: self._replay_turn(conn))
                    return
                budget = REPLAY_STEP
            sub = next(iter(conn.replays.values()))
            cur = sub.replay
            assert cur is not None
            budget -= self._advance(sub, min(self.last_seq + 1, cur.pos + budget), FLUSH_LINES)

    def _replay_turn(self, conn: Connection) -> None:
        conn.replay_deferred = False
        self._pump(conn)

    def _advance(self, sub: Subscription, stop: int, max_lines: int | None) -> int:
        """Move a replay through the history up to seq `stop` (excluded); returns how many
        held events it looked at.

        With max_lines, it queues what matches and stops after that many lines; with None,
        what matches counts as dropped (the history is about to forget it). A replay that
        reaches the newest event ends: the subscription then takes live events.
        """
        cur = sub.replay
        assert cur is not None
        conn = sub.conn
        oldest = self.oldest
        if cur.pos < oldest:  # not expected (see _before_evict), but never silent
            for seq in range(cur.pos, oldest):
                self._drop(sub, seq)
            cur.pos = oldest
        flt = sub.filter
        visible = sub.visible
        queue = conn.queue
        prefix = sub.prefix
        next_mark = self._next_marker(cur.marked)
        start = cur.pos - oldest
        pos = cur.pos
        lines = 0
        for seq, watch, bit, path, tail in islice(self._held, start, start + stop - cur.pos):
            if seq - 1 >= next_mark:
                self._replay_markers(sub, seq - 1)
                next_mark = self._next_marker(cur.marked)
            pos = seq + 1
            if watch in visible and flt.matches(bit, path):
                if max_lines is None:
                    self._drop(sub, seq)
                    continue
                if sub.drop_count:
                    self._settle(sub)
                queue.append(prefix + tail)
                conn.queued_events += 1
                lines += 1
                if lines >= max_lines:
                    break
        examined = pos - cur.pos
        cur.pos = pos
        if pos > self.last_seq:
            self._replay_markers(sub, self.last_seq)
            self._end_replay(sub)
        return examined

    def _next_marker(self, after: int) -> float:
        """The seq of the first overflow marker past `after` (inf when there is none)."""
        for marker in self._markers:
            if marker.seq > after:
                return marker.seq
        return math.inf

    def _replay_markers(self, sub: Subscription, upto: int) -> None:
        """Queue the overflow markers a replay passes, up to seq `upto`, in their place."""
        cur = sub.replay
        assert cur is not None
        for marker in self._markers:
            if cur.marked < marker.seq <= upto and (
                marker.watch is None or marker.watch in sub.visible
            ):
                if sub.drop_count:
                    self._settle(sub)
                sub.conn.queue.append(self._marker_line(sub.sid, marker))
        cur.marked = max(cur.marked, upto)

    def _end_replay(self, sub: Subscription) -> None:
        sub.replay = None
        sub.conn.replays.pop(sub.sid, None)
        self._replaying.pop(sub, None)
        self._routes.clear()  # it takes live events from now on

    def _before_evict(self, count: int) -> None:
        """The `count` oldest held events are about to be forgotten: replays that have not
        reached them yet count what of them they match as dropped."""
        if count <= 0:
            return
        first_kept = self.oldest + count
        for sub in list(self._replaying):
            cur = sub.replay
            if cur is not None and cur.pos < first_kept:
                self._advance(sub, first_kept, None)

    def _notify(
        self, watch: str | None, line_for: Callable[[str], bytes], *, live_only: bool = False
    ) -> None:
        """Queue a notice to every subscription concerned by a watch (all of them for None);
        live_only leaves out replays under way."""
        for conn in self._conns:
            touched = False
            for sub in conn.subs.values():
                if live_only and sub.replay is not None:
                    continue
                if watch is None or watch in sub.visible:
                    if sub.drop_count:
                        self._settle(sub)
                    conn.queue.append(line_for(sub.sid))
                    touched = True
            if touched:
                self._pump(conn)

    @staticmethod
    def _marker_line(sid: str, marker: _Marker) -> bytes:
        return protocol.overflow(sid, marker.seq, marker.reason, marker.watch)

    def _marked(self, marker: _Marker) -> bool:
        """Whether this very marker is already held (markers at one seq are at the right end)."""
        for held in reversed(self._markers):
            if held.seq != marker.seq:
                return False
            if held == marker:
                return True
        return False

    def _prune_markers(self) -> None:
        """Forget overflow markers that lie before every `since` still accepted."""
        floor = self.oldest - 1
        while self._markers and self._markers[0].seq < floor:
            self._markers.popleft()
