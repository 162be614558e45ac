"""Connections and their subscriptions as the broker sees them: filters, ACLs, dropped ranges.

No sockets: a connection's bytes go to a `Sink` the server provides. What lies here is the
per-subscription bookkeeping the broker and the replay share: which events a subscription
wants and may see, and the range of its events dropped since it was last told.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from watchd import protocol
from watchd.events import ALL_KINDS, kinds_mask
from watchd.globs import GlobSet
from watchd.protocol import ErrorCode, LostReason, ProtocolError, Subscribe

# Every kind bit; each event's mask carries exactly one of them.
KIND_BITS_ALL = kinds_mask(ALL_KINDS)
ALL_MEMBERS = frozenset(protocol.EVENT_MEMBERS)

# What waits in a connection's queue: a line ready to send, or a run of events of a batched
# subscription as (its frame head, the run), put in frames when the queue drains
# (watchd.outbox): a short run together with the short runs of that subscription next to it, a
# longer one in the frames it shares with every connection it was queued for. A run is one item
# however many events it holds: a publish queues one per subscription, not one per event.
Queued = bytes | tuple[bytes, protocol.Run]

# Distinct filters kept compiled: subscriptions asking the same share one Filter (and so one
# test per event, see Broker.publish_reads), and a request repeated costs no compiling.
FILTER_CACHE = 1024


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

    def sees(self, watch: WatchInfo) -> bool:
        """Whether this peer may receive the watch's events."""
        return watch.may_see(self.uid, self.gid, self.groups)


# eq=False: compared and hashed by identity, which is cheap where publish groups subscriptions
# by filter; equal requests get the same object from FilterCache.
@dataclass(frozen=True, slots=True, eq=False)
class Filter:
    """A subscription's filters; all must match. None (or all kinds) means absent."""

    watches: frozenset[str] | None
    kinds: int  # the kind bits wanted
    paths: frozenset[str] | None  # exact paths; below any of them is `prefixes`
    prefixes: tuple[str, ...]  # each path with a trailing "/"
    glob: GlobSet | None  # matched on the base name
    # The event members asked for, in the order of protocol.EVENT_MEMBERS; None: all. Not a
    # filter of events but their shape, kept here so that subscriptions are grouped by it too.
    fields: protocol.Fields | None = None

    @classmethod
    def of(cls, req: Subscribe, fields: protocol.Fields | None = None) -> Filter:
        """The filter of a subscribe request; fields: its shape where the caller keeps one
        (see FilterCache), else made here."""
        paths = req.paths
        if paths is not None and "/" in paths:
            paths = None  # everything lies below the root
        glob = None if req.glob is None else GlobSet.of(req.glob)
        return cls(
            watches=None if req.watch is None else frozenset(req.watch),
            kinds=KIND_BITS_ALL if req.events is None else kinds_mask(req.events),
            paths=None if paths is None else frozenset(paths),
            prefixes=() if paths is None else tuple(p + "/" for p in paths),
            glob=glob,
            fields=fields if fields is not None else shape_of(req.fields),
        )

    @property
    def simple(self) -> bool:
        """True when only the watch names (and the ACL) decide: every event of a watch matches,
        as it is encoded for everyone."""
        return (self.kinds == KIND_BITS_ALL and self.paths is None and self.glob is None
                and self.fields is None)

    def shape(self, tail: bytes) -> bytes:
        """An event's tail as this filter's subscriptions get it: the members they asked for."""
        return tail if self.fields is None else protocol.project(tail, self.fields)

    def matches(self, bit: int, path: str) -> bool:
        """Whether an event of this kind bit on this path passes the kind, path and glob filters."""
        if not self.kinds & bit:
            return False
        if self.paths is not None and path not in self.paths and not path.startswith(
            self.prefixes
        ):
            return False
        return self.glob is None or self.glob.match(path[path.rfind("/") + 1 :])

    def visible(self, peer: Peer, watches: Mapping[str, WatchInfo]) -> frozenset[str]:
        """The configured watches a subscription with this filter receives: named and allowed."""
        return frozenset(
            name
            for name, watch in watches.items()
            if (self.watches is None or name in self.watches) and peer.sees(watch)
        )


def shape_of(fields: frozenset[str] | None) -> protocol.Fields | None:
    """A request's fields; None (every member) for all of them."""
    if fields is None or fields >= ALL_MEMBERS:
        return None
    return protocol.Fields.of(fields)


class FilterCache:
    """Compiled filters of recent requests, within the caps on patterns and paths."""

    def __init__(self) -> None:
        self._filters: dict[tuple[object, ...], Filter] = {}  # see FILTER_CACHE
        # One shape per distinct set of fields (at most some thousand exist): filters that differ
        # otherwise share it, and so what a publish makes of each event for it.
        self._shapes: dict[frozenset[str], protocol.Fields | None] = {}

    def get(self, req: Subscribe, max_patterns: int, max_paths: int) -> Filter:
        """The request's filter, compiled once per distinct request; a request past a cap is
        refused."""
        for name, items, cap, key in (
            ("glob", req.glob, max_patterns, "max_patterns"),
            ("paths", req.paths, max_paths, "max_paths"),
        ):
            if items is not None and len(items) > cap:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST,
                    f'"{name}": {len(items)} given, more than one subscription may have '
                    f"(daemon.{key} = {cap}); split it over several subscriptions",
                    req.id,
                )
        key_of = tuple(
            v if v is None or isinstance(v, frozenset) else tuple(v)
            for v in (req.watch, req.events, req.paths, req.glob, req.fields)
        )
        flt = self._filters.get(key_of)
        if flt is None:
            if len(self._filters) >= FILTER_CACHE:
                del self._filters[next(iter(self._filters))]  # the oldest
            fields = None
            if req.fields is not None:
                fields = self._shapes.get(req.fields)
                if fields is None:
                    fields = self._shapes[req.fields] = shape_of(req.fields)
            flt = self._filters[key_of] = Filter.of(req, fields)
        return flt


def check_watches(peer: Peer, req: Subscribe, watches: Mapping[str, WatchInfo]) -> None:
    """Refuse a request naming a watch that is not configured or that the peer may not see."""
    for name in req.watch or ():
        watch = watches.get(name)
        # A watch this peer may not see is answered as one that does not exist: the
        # difference would tell any socket user which names are configured.
        if watch is None or not peer.sees(watch):
            known = ", ".join(sorted(n for n, w in watches.items() if peer.sees(w)))
            raise ProtocolError(
                ErrorCode.UNKNOWN_WATCH,
                f'"watch": no watch named {quote(name)} is configured; '
                f"known: {known or 'none'}",
                req.id,
            )


def quote(text: str) -> str:
    """text as a JSON string, for messages that name what the client sent."""
    return json.dumps(text)


@dataclass(eq=False, slots=True)
class Cursor:
    """How far a replay has come: it reads the history as the client reads its lines."""

    pos: int  # the next seq to look at
    marked: int  # overflow markers at seqs up to this one have been queued


@dataclass(eq=False, slots=True)
class Subscription:
    """One subscription of a connection, with the range of its events dropped since last told."""

    sid: str
    conn: Connection
    filter: Filter
    prefix: bytes  # protocol.event_prefix(sid): an event line is this + the shared tail
    visible: frozenset[str]  # watch names it receives: its watch filter within the ACL
    drop_count: int = 0
    drop_first: int = 0
    drop_last: int = 0
    # Watches a reload took away from it (it was told watch_lost, reason forbidden).
    revoked: frozenset[str] = frozenset()
    # Set while it catches up with `since`: it then takes its events, live ones included, from
    # the history (in seq order) instead of from publish.
    replay: Cursor | None = None
    # protocol.frame_head(sid) for a batched subscription (its events go out in frames), or None.
    frame: bytes | None = None

    def review(self, old: Mapping[str, WatchInfo], watches: Mapping[str, WatchInfo]) -> bool:
        """Recompute the watches it receives after a reload; True when it was told of a change.

        Told watch_lost (reason forbidden) for a watch it lost, watch_restored for one it gets
        back.
        """
        before = self.visible
        self.visible = self.filter.visible(self.conn.peer, watches)
        lost = (before - self.visible) & watches.keys()
        back = self.revoked & self.visible
        for name in sorted(lost):
            # The path the client knew: a reload that moved the watch must not say where.
            self.notice(protocol.watch_lost(self.sid, name, old[name].path, LostReason.FORBIDDEN))
        for name in sorted(back):
            self.notice(protocol.watch_restored(self.sid, name, watches[name].path))
        if lost or back:
            self.revoked = (self.revoked | lost) - back
            return True
        return False

    def drop(self, seq: int) -> None:
        """Count an event as dropped, in the range to be reported."""
        if not self.drop_count:
            self.drop_first = seq
            self.conn.lagging[self.sid] = self
        self.drop_count += 1
        self.drop_last = seq
        self.conn.dropped += 1

    def settle(self) -> None:
        """Queue the `dropped` notice of the gap and start a new range."""
        self.conn.queue.append(
            protocol.dropped(self.sid, self.drop_count, self.drop_first, self.drop_last)
        )
        self.drop_count = self.drop_first = self.drop_last = 0
        self.conn.lagging.pop(self.sid, None)

    def notice(self, line: bytes) -> None:
        """Queue a notice, after the report of any gap: a gap is never told after later news."""
        if self.drop_count:
            self.settle()
        self.conn.queue.append(line)


@dataclass(eq=False, slots=True)
class Connection:
    """A client connection as the broker sees it; the server only hands it back."""

    sink: Sink
    peer: Peer
    subs: dict[str, Subscription] = field(default_factory=dict)
    # Lines waiting for the sink to become writable, in the order they must be sent.
    queue: deque[Queued] = field(default_factory=deque)
    queued_events: int = 0  # events in `queue`: what client_queue bounds
    lagging: dict[str, Subscription] = field(default_factory=dict)  # subs with a dropped range
    dropped: int = 0  # event lines discarded for this connection (its owner's status)
    replays: dict[str, Subscription] = field(default_factory=dict)  # subs catching up
    replay_deferred: bool = False  # a turn of its replays is scheduled
    closed: bool = False

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The sids this connection holds."""
        return tuple(self.subs)
