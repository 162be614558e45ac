"""The broker's hot path: number, serialize once, hold, and write the same bytes to many.

Each batch of events is encoded once; every connection that receives a watch gets the tails
behind its subscriptions' prefixes in one write, and a batched subscription gets them as frames
spliced from the same tails (protocol.frames), once per filter, not once per subscriber. A
connection that is behind gets its events queued (bounded by client_queue) or counted as
dropped.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import itemgetter
from time import time as wall_clock
from typing import TYPE_CHECKING

from watchd import protocol
from watchd.counters import Counters
from watchd.events import KIND_BITS, Kind
from watchd.outbox import QueueLimits
from watchd.replay import Held, History, Replays
from watchd.subscription import KIND_BITS_ALL, Connection, Filter, Subscription

if TYPE_CHECKING:
    from watchd.channel import Item


@dataclass(frozen=True, slots=True)
class _Route:
    """The subscriptions of one connection that receive a given watch."""

    conn: Connection
    subs: tuple[Subscription, ...]
    prefixes: tuple[bytes, ...]  # of its line subscriptions, when every one of `subs` is simple
    heads: tuple[bytes, ...]  # the frame heads of its batched subscriptions, likewise
    simple: bool


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


# The subscriptions of one filter in a publish, each with the connection's chunks or None for
# its queue: (those served line by line, those served in frames).
_Target = tuple[Subscription, list[bytes] | None]
_Group = tuple[list[_Target], list[_Target]]


def _headed(head: bytes, framed: list[bytes]) -> list[bytes]:
    """Frames made by protocol.frames with an empty head, given a subscription's head."""
    if len(framed) == 3:
        return [head, framed[1], framed[2]]  # one frame: most publishes
    chunks = framed.copy()
    chunks[::3] = [head] * (len(framed) // 3)
    return chunks


_BIT = itemgetter(2)  # a Held's kind bit


def count_into(counts: dict[int, int], bits: Iterable[int]) -> None:
    """Add one to counts[bit] for each of bits, in Python."""
    get = counts.get
    for bit in bits:
        counts[bit] = get(bit, 0) + 1


# Counter's helper does the same in C (no Python step per event). It is private to CPython's
# collections, so an interpreter without it gets the loop above.
_count_elements: Callable[[dict[int, int], Iterable[int]], None] = getattr(
    collections, "_count_elements", count_into)


class FanOut:
    """Publishes batches of events to the connections of a broker."""

    def __init__(
        self,
        conns: Iterable[Connection],
        history: History,
        replays: Replays,
        counts: Counters,
        *,
        limits: QueueLimits,
        pump: Callable[[Connection], None],
    ) -> None:
        self.conns = conns  # the broker's connections, as they are at each publish
        self.history = history
        self.replays = replays
        self.counts = counts
        self.limits = limits  # shared with the outbox; a reload changes it there
        self.pump = pump  # drains a connection's queue (Outbox.pump)
        # A one-shot signal: a connection's queue reached levels.near_full since the hold-back
        # last looked (HoldBack.review takes it).
        self.near_full_reached = False
        self.routes: dict[str, tuple[_Route, ...]] = {}  # per watch; cleared on any change
        self._encoder = protocol.EventEncoder()
        self._kinds: dict[int, Kind] = {bit: kind for kind, bit in KIND_BITS.items()}

    def publish(self, watch: str, reads: list[tuple[float, list[Item]]]) -> float | None:
        """Number, serialize, hold and fan out the events of several reads of one watch.

        Returns when (wall clock) the first write to a client began, for the latency metric;
        None when no client was written to.
        """
        history = self.history
        if self.replays.under_way:
            # What the history is about to forget, replays that have not reached it count as
            # dropped (asked for again, it is since_expired: the client then rescans).
            incoming = sum(len(items) for _, items in reads)
            self.replays.before_evict(len(history) + incoming - history.size)
        routes = self.routes.get(watch)
        if routes is None:
            routes = self.routes[watch] = self._route(watch)
        # Connections with lines waiting send them first. That may end a replay, which puts its
        # subscription among the routes: take them again then.
        pumped = False
        for route in routes:
            conn = route.conn
            if conn.queue or conn.lagging:
                self.pump(conn)
                pumped = True
        if pumped and watch not in self.routes:
            routes = self.routes[watch] = self._route(watch)
        # Decide once per batch how each connection is served: the state of a sink only changes
        # when it is written to, which happens after the loop.
        fast: list[_Route] = []  # writable, every subscription simple: all events, no tests
        # The others, grouped by filter so that subscriptions asking the same thing (many clients
        # running the same command) cost one test per event. Out None: via the queue.
        groups: dict[Filter, _Group] = {}
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
                group = groups.get(sub.filter)
                if group is None:
                    group = groups[sub.filter] = ([], [])
                (group[0] if sub.frame is None else group[1]).append((sub, out))
        general = [(flt, lines) for flt, (lines, _) in groups.items() if lines]

        kinds = self._kinds
        tail_of = self._encoder.tail
        tails: list[bytes] = []
        batch: list[Held] = []  # for the history and the filters
        keep = batch.append
        seq = self.history.last_seq
        for time, items in reads:
            for mask, cookie, path, src_path in items:
                bit = mask & KIND_BITS_ALL
                kind = kinds.get(bit)
                if kind is None:
                    continue  # not exactly one kind bit: nothing a client could be told
                seq += 1
                tail = tail_of(seq, time, watch, kind, path, mask, cookie, src_path)
                keep((seq, watch, bit, path, tail))
                tails.append(tail)
        if len(batch) == 1:
            history.append(batch[0])  # most reads are one event: spare extend's slicing
        else:
            history.extend(batch)
        counts = self.counts
        if batch:
            of = counts.kinds_of.get(watch)
            if of is None:
                of = counts.kinds_of[watch] = {}
            if len(batch) == 1:
                bit = batch[0][2]
                of[bit] = of.get(bit, 0) + 1
            else:
                _count_elements(of, map(_BIT, batch))  # in C: no Python step per event

        first: float | None = None  # when the first write began
        delivered = 0  # events written now, one per subscription
        # Subscribers without filters first: what others' filters cost never delays them.
        if tails and fast:
            first = wall_clock()
            framed: list[bytes] | None = None  # the bodies of the frames, made once
            for route in fast:
                chunks = _interleave(route.prefixes, tails) if route.prefixes else []
                if route.heads:
                    if framed is None:
                        framed = protocol.frames(b"", tails, self.limits.max_batch)
                    for head in route.heads:
                        chunks += _headed(head, framed)
                route.conn.sink.write(chunks)
                delivered += len(tails) * len(route.subs)
        shapes: protocol.Shapes | None = None  # what filters with fields get, made once
        if general:
            for seq, _, bit, path, tail in batch:
                for flt, targets in general:
                    if flt.matches(bit, path):
                        shaped = tail
                        if flt.fields is not None:
                            if shapes is None:
                                shapes = protocol.Shapes()
                            shaped = shapes.of(flt.fields, seq, tail)
                        for sub, sink_out in targets:
                            if sink_out is None:
                                self._queue_event(sub, seq, shaped)
                            else:
                                sink_out.append(sub.prefix)
                                sink_out.append(shaped)
            # Two chunks per event line (prefix, tail): counted once per connection, not per
            # event and subscriber. Frames are added to these lists only below.
            delivered += sum(len(chunks) for _, chunks in outs) >> 1
        for flt, (_, batched) in groups.items():
            if batched:
                # A pass of its own, so that the loop above stays as it was for lines.
                matched = [held for held in batch if flt.matches(held[2], held[3])]
                if matched:
                    tails = [held[4] for held in matched]
                    if flt.fields is not None:
                        if shapes is None:
                            shapes = protocol.Shapes()
                        tails = [shapes.of(flt.fields, held[0], held[4]) for held in matched]
                    delivered += self._frame(tails, matched, batched)
        for conn, chunks in outs:
            if chunks:
                if first is None:
                    first = wall_clock()
                conn.sink.write(chunks)
        counts.delivered += delivered
        return first

    def _route(self, watch: str) -> tuple[_Route, ...]:
        routes = []
        for conn in self.conns:
            subs = tuple(
                sub
                for sub in conn.subs.values()
                if watch in sub.visible and sub.replay is None
            )
            if subs:
                simple = all(sub.filter.simple for sub in subs)
                prefixes = tuple(sub.prefix for sub in subs if sub.frame is None)
                heads = tuple(sub.frame for sub in subs if sub.frame is not None)
                routes.append(_Route(conn, subs, prefixes, heads, simple))
        return tuple(routes)

    def _frame(self, tails: list[bytes], matched: list[Held],
               batched: list[tuple[Subscription, list[bytes] | None]]) -> int:
        """Hand the events one filter matched (their tails as its subscriptions get them) to its
        batched subscriptions: as frames made once for all of them, or as one run in a queue.
        Returns the events to be written now."""
        framed: list[bytes] | None = None
        run: protocol.Run | None = None  # queued for every subscription that is behind
        now = 0
        for sub, sink_out in batched:
            assert sub.frame is not None
            if sink_out is None:
                if run is None:
                    run = protocol.Run(tails)
                self._queue_run(sub, matched, run)
                continue
            if framed is None:
                framed = protocol.frames(b"", tails, self.limits.max_batch)
            sink_out += _headed(sub.frame, framed)
            now += len(tails)
        return now

    def _queue_run(self, sub: Subscription, matched: list[Held], run: protocol.Run) -> None:
        """Queue a batched subscription's events for a connection that is behind, as one run;
        what does not fit in client_queue counts as dropped (the rule of _queue_event)."""
        assert sub.frame is not None
        conn = sub.conn
        limits = self.limits
        room = limits.client_queue - conn.queued_events
        if room > 0:
            if sub.drop_count:
                sub.settle()  # the gap is told before the events that come after it
            if len(run.tails) > room:
                run = protocol.Run(run.tails[:room])  # its own: the others' frames hold more
            conn.queue.append((sub.frame, run))  # shared, never changed: see outbox._lines
            conn.queued_events += len(run.tails)
            if conn.queued_events >= limits.levels.near_full:
                self.near_full_reached = True
        for held in matched[max(0, room) :]:
            sub.drop(held[0])

    def _queue_event(self, sub: Subscription, seq: int, tail: bytes) -> None:
        """Queue an event line for a connection that is behind, or count it as dropped."""
        conn = sub.conn
        limits = self.limits
        if conn.queued_events >= limits.client_queue:
            sub.drop(seq)
            return
        if sub.drop_count:
            # pump reports gaps as soon as there is room, so this only guards the order: a
            # gap must never be reported after an event that came later.
            sub.settle()
        conn.queue.append(sub.prefix + tail)
        conn.queued_events += 1
        if conn.queued_events >= limits.levels.near_full:
            self.near_full_reached = True
