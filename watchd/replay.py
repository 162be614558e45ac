"""The replay history (the newest events and overflow markers) and `since` replays through it.

A subscription with `since` reads the history at the pace its client reads its lines, a
bounded step per turn of the loop, and only then takes live events; what the history forgets
before a replay reaches it is reported as dropped. Paced by the connection's queue: the
queue's draining (watchd.outbox) asks for each step.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from watchd import protocol
from watchd.outbox import FLUSH_LINES
from watchd.protocol import ErrorCode, JsonScalar, ProtocolError
from watchd.subscription import Connection, Cursor, Subscription, quote

# One held event: (seq, watch, kind bit, path, tail). A plain tuple because publish builds one
# per event on the hot path, where a NamedTuple or dataclass constructor costs measurably more.
Held = tuple[int, str, int, str, bytes]


@dataclass(frozen=True, slots=True)
class Marker:
    """An overflow held in the replay history: events may be lost after seq. Or, with
    changes >= 0, the end of the synthetic events of a resync of `watch` (watchd.resync)."""

    seq: int
    watch: str | None
    reason: str
    resync: frozenset[str] = frozenset()  # watches whose differences follow as events
    changes: int = -1
    duration_ms: float = 0.0

    def line(self, sid: str, visible: frozenset[str]) -> bytes:
        """The notice of this marker for a subscription that receives the `visible` watches."""
        if self.changes >= 0:
            assert self.watch is not None
            return protocol.resynced(sid, self.seq, self.watch, self.changes, self.duration_ms)
        # For every watch at once, a resync follows only if it covers all this one receives.
        resync = (self.watch in self.resync if self.watch is not None
                  else bool(self.resync) and visible <= self.resync)
        return protocol.overflow(sid, self.seq, self.reason, self.watch, resync)


class Recorder(Protocol):
    """Where the history writes what it holds, as it takes it (watchd.journal, for a durable
    daemon): called before the events go to any client."""

    def events(self, entries: list[Held]) -> None:
        """Record the next events, in seq order."""

    def marker(self, marker: Marker) -> None:
        """Record a marker, in its place after the events recorded so far."""


class History:
    """The newest `size` events by seq, and the overflow markers among them.

    A ring indexed by (seq - base) % size: seqs are consecutive, so a replay finds its place in
    O(1) and reads a step in O(step), wherever it is in the history. The ring grows as events
    arrive and wraps once it holds `size` of them: memory follows what is held, not the limit.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._ring: list[Held] = []
        self._base = 1  # the seq in the ring's first slot: slot = (seq - base) % size
        self.count = 0  # events held
        self.last_seq = 0  # the newest seq assigned
        self.markers: deque[Marker] = deque()
        # Durable state (watchd.journal): every event and marker, as it is held. Called from
        # here, before the publisher writes to any client, so that a seq a client may have
        # seen is always on record (see watchd.state).
        self.recorder: Recorder | None = None

    def __len__(self) -> int:
        return self.count

    @property
    def oldest(self) -> int:
        """The oldest seq held; last_seq + 1 when none is held."""
        return self.last_seq - self.count + 1

    def append(self, entry: Held) -> None:
        """Hold the next event: extend() for one, without its slicing (most reads are one event)."""
        if self.recorder is not None:
            self.recorder.events([entry])
        ring = self._ring
        if self.count == self.size:
            if ring:
                ring[(entry[0] - self._base) % self.size] = entry
        else:
            if not ring:
                self._base = entry[0]
            ring.append(entry)
            self.count += 1
        self.last_seq = entry[0]

    def extend(self, entries: list[Held]) -> None:
        """Hold the next events in seq order (the oldest are forgotten past `size`)."""
        n = len(entries)
        size = self.size
        if n and self.recorder is not None:
            self.recorder.events(entries)
        if not n or not size:
            self.last_seq += n
            return
        last = entries[-1][0]
        if n >= size:  # the batch alone fills the history: it replaces all of it
            self._ring = entries[n - size :]
            self._base, self.count, self.last_seq = self._ring[0][0], size, last
            return
        ring = self._ring
        if not ring:
            self._base = entries[0][0]
        room = size - len(ring)
        if room:  # still growing: take what fits in order, then wrap with the rest
            ring.extend(entries[:room] if len(entries) > room else entries)
            entries = entries[room:]
        if entries:
            at = (entries[0][0] - self._base) % size
            first = min(len(entries), size - at)
            # Two slice copies in C, not one store per event: this is on publish's path.
            ring[at : at + first] = entries[:first]
            ring[: len(entries) - first] = entries[first:]
        self.count = len(ring)
        self.last_seq = last

    def between(self, start: int, stop: int) -> list[Held]:
        """The held events with start <= seq < stop, in seq order."""
        start = max(start, self.oldest)
        stop = min(stop, self.last_seq + 1)
        if start >= stop:
            return []
        size, base = self.size, self._base
        i, j = (start - base) % size, (stop - base) % size
        ring = self._ring
        # Every slot from oldest to last_seq holds an event (j is 0 when stop is one past the
        # ring's last slot: then ring[i:] is all of it).
        return ring[i:j] if i < j else ring[i:] + ring[:j]

    def resize(self, size: int) -> None:
        """Hold at most `size` events from now on, keeping the newest.

        The new ring is built before anything changes: if memory runs out, the history is as it
        was.
        """
        kept = self.between(max(self.oldest, self.last_seq + 1 - size), self.last_seq + 1)
        self.size, self._ring, self.count = size, kept, len(kept)
        if kept:
            self._base = kept[0][0]
        self.prune_markers()

    def mark(self, marker: Marker) -> None:
        """Hold a marker. The same overflow twice at one seq tells a re-subscriber nothing
        new, and skipping it bounds the markers when overflows repeat; but every `resynced` is
        held, alike or not: each answers an overflow of its own (see watchd.resync), and so is
        every overflow that announces a resync, so that a replay pairs them as the live
        subscribers got them (those are bounded by the scans they wait for)."""
        if marker.changes >= 0 or marker.resync or not self._marked(marker):
            self.markers.append(marker)
            self.prune_markers()
            if self.recorder is not None:
                self.recorder.marker(marker)

    def restore(self, entries: list[Held], markers: list[Marker], last_seq: int) -> None:
        """Take what a previous run of the daemon held (watchd.journal) as the history: its
        events in seq order, its markers, and the last seq it assigned."""
        recorder, self.recorder = self.recorder, None  # all of it is on record already
        try:
            self.extend(entries[-self.size :] if self.size else [])
            self.last_seq = max(self.last_seq, last_seq)
            self.markers.extend(markers)
            self.prune_markers()
        finally:
            self.recorder = recorder

    def _marked(self, marker: Marker) -> bool:
        """Whether this very marker is already held, with no announcement of a resync or answer
        to one after it (markers at one seq are at the right end): past such a marker, an alike
        overflow is a new answer, and a replay without it would leave the resync unanswered."""
        for held in reversed(self.markers):
            if held.seq != marker.seq:
                return False
            if held == marker:
                return True
            if held.resync or held.changes >= 0:
                return False
        return False

    def prune_markers(self) -> None:
        """Forget overflow markers that lie before every `since` still accepted."""
        floor = self.oldest - 1
        while self.markers and self.markers[0].seq < floor:
            self.markers.popleft()

    def next_marker(self, after: int) -> float:
        """The seq of the first overflow marker past `after` (inf when there is none)."""
        for marker in self.markers:
            if marker.seq > after:
                return marker.seq
        return math.inf

    def check_since(
        self, since: int, instance: str | None, own: str, req_id: JsonScalar
    ) -> None:
        """Refuse a `since` this history cannot replay from, saying what to do instead."""
        oldest = self.oldest
        if instance is not None and instance != own:
            raise ProtocolError(
                ErrorCode.SINCE_EXPIRED,
                f'"instance": {quote(instance)} is not this daemon\'s instance '
                f"({quote(own)}): the daemon restarted and its seqs began anew; "
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


class Replays:
    """The replays under way: each produces its lines when the connection's queue asks."""

    def __init__(self, history: History, on_end: Callable[[], None]) -> None:
        self.history = history
        # Called when a replay ends: its subscription takes live events from then on.
        self._on_end = on_end
        self.under_way: dict[Subscription, None] = {}

    def start(self, sub: Subscription, since: int) -> None:
        """Replay every seq after `since` to sub, up to the newest, before it takes live ones."""
        sub.replay = Cursor(pos=since + 1, marked=since - 1)
        sub.conn.replays[sub.sid] = sub
        self.under_way[sub] = None

    def end(self, sub: Subscription) -> None:
        """The replay of sub is over (done or unsubscribed)."""
        sub.replay = None
        sub.conn.replays.pop(sub.sid, None)
        self.under_way.pop(sub, None)
        self._on_end()

    def forget(self, conn: Connection) -> None:
        """The connection is gone: its replays with it."""
        for sub in conn.replays.values():
            self.under_way.pop(sub, None)
        conn.replays.clear()

    def step(self, conn: Connection, budget: int) -> int:
        """Queue the next lines of the connection's first replay: at most FLUSH_LINES of them,
        looking at no more than `budget` held events; returns how many it looked at."""
        sub = next(iter(conn.replays.values()))
        cur = sub.replay
        assert cur is not None
        return self.advance(sub, min(self.history.last_seq + 1, cur.pos + budget), FLUSH_LINES)

    def advance(self, sub: Subscription, stop: int, max_lines: int | None) -> int:
        """Move a replay through the history up to seq `stop` (excluded); returns how many
        held events it looked at.

        With max_lines, it queues what matches and stops after that many lines; with None,
        what matches counts as dropped (the history is about to forget it). A replay that
        reaches the newest event ends: the subscription then takes live events.
        """
        cur = sub.replay
        assert cur is not None
        history = self.history
        oldest = history.oldest
        if cur.pos < oldest:  # not expected (see before_evict), but never silent
            for seq in range(cur.pos, oldest):
                sub.drop(seq)
            cur.pos = oldest
        conn = sub.conn
        flt = sub.filter
        visible = sub.visible
        queue = conn.queue
        prefix, frame = sub.prefix, sub.frame
        shaped = flt.fields is not None  # only the members the subscription asked for
        run: list[bytes] | None = None  # a batched subscription's tails being queued, in order
        next_mark = history.next_marker(cur.marked)
        pos = cur.pos
        lines = 0
        stop = min(stop, history.last_seq + 1)
        # Copied from the history a chunk at a time, no larger than the lines that may be
        # queued: a step that stops after max_lines copies little more than it looks at.
        chunk = stop - pos if max_lines is None else max_lines
        while pos < stop and (max_lines is None or lines < max_lines):
            for seq, watch, bit, path, tail in history.between(pos, min(stop, pos + chunk)):
                if seq - 1 >= next_mark:
                    self._markers(sub, seq - 1)
                    next_mark = history.next_marker(cur.marked)
                    run = None  # a notice ends a frame
                pos = seq + 1
                if watch in visible and flt.matches(bit, path):
                    if max_lines is None:
                        sub.drop(seq)
                        continue
                    if sub.drop_count:
                        sub.settle()
                        run = None
                    if shaped:
                        tail = flt.shape(tail)
                    if frame is None:
                        queue.append(prefix + tail)
                    else:
                        if run is None:
                            run = []
                            queue.append((frame, protocol.Run(run)))
                        run.append(tail)
                    conn.queued_events += 1
                    lines += 1
                    if lines >= max_lines:
                        break
        examined = pos - cur.pos
        cur.pos = pos
        if pos > history.last_seq:
            self._markers(sub, history.last_seq)
            self.end(sub)
        return examined

    def _markers(self, sub: Subscription, upto: int) -> None:
        """Queue the overflow markers a replay passes, up to seq `upto`, in their place."""
        cur = sub.replay
        assert cur is not None
        for marker in self.history.markers:
            if cur.marked < marker.seq <= upto and (
                marker.watch is None or marker.watch in sub.visible
            ):
                sub.notice(marker.line(sub.sid, sub.visible))
        cur.marked = max(cur.marked, upto)

    def before_evict(self, count: int) -> None:
        """The `count` oldest held events are about to be forgotten: replays that have not
        reached them yet count what of them they match as dropped."""
        if count <= 0:
            return
        first_kept = self.history.oldest + count
        for sub in list(self.under_way):
            cur = sub.replay
            if cur is not None and cur.pos < first_kept:
                self.advance(sub, first_kept, None)
