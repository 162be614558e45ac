"""Exact recovery, on the daemon's side: one index per watch, and what to publish after a loss.

Where the index lives: in the daemon. The daemon is the one place that outlives a watcher
crash, and it is where events are published, so the index holds exactly the state "as of the
last event the daemon published": each batch updates it just before it goes out (see
TreeIndex.apply), with the records of the paths it names that the watcher took before sending
it (watchd.records.Recorder: the system calls stay off the daemon's event path). The watcher
also scans: once a watch's inotify watches are in place (established, re-established after an
overflow, or in a replacement watcher), it sends the tree as it finds it (channel.SCAN); here
that scan is compared with the index, and the differences are published as synthetic events;
then, once the watcher has sent every event older than the scan (channel.Caught), a `resynced`
notice.

The rule for what happens during the rescan: the scan starts after the watches are in place,
so every change from then on is also in the kernel's queue, and its events are published after
the synthetic ones. A path changed while the scan ran can be reported twice (by its synthetic
event, then by its kernel events); applied in order, both end in the state the tree has. But
a move replayed that way would empty its destination: such moves are dropped as they are
published (TreeIndex.apply).

The first scan of a watch (at start, or after a reload changed the watch: other include,
exclude or events) only fills the index: no events.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from watchd.config.model import WatchConfig
from watchd.diff import diff, keep_unentered
from watchd.events import kinds_mask
from watchd.index import TreeIndex
from watchd.listing import AtRest, Index, Listing, at_rest
from watchd.narrowed import compared
from watchd.reasons import OverflowReason
from watchd.records import Item, Records

if TYPE_CHECKING:
    from watchd.broker import Broker

log = logging.getLogger("watchd")

# Cookies of synthetic move pairs: past the kernel's (32 bits), so that a client that pairs
# moves by cookie never mixes the two.
FIRST_COOKIE = 1 << 32
# The kind bits a synthetic event is filtered by (the watch's `events`).
_KIND_BITS = 0x00000FFF
BATCH_MAX = 1024  # synthetic events per publish, as the watcher's batches
# Rescans after a scan race (Resyncer.rescan_raced): a watch is rescanned again no sooner than
# this after its last one, the wait doubling (to RESCAN_MAX_S) while races keep coming, so that
# a user renaming a directory back and forth cannot keep the daemon scanning a whole tree.
RESCAN_MIN_S = 1.0
RESCAN_MAX_S = 60.0


@dataclass(frozen=True, slots=True)
class Resync:
    """What to publish for one scan: the events (after the watch's `events` filter), the
    notice's figures, and how many `resynced` notices follow them (0 for a scan that only
    filled the index)."""

    items: list[Item]
    changes: int
    duration_ms: float
    resynced_owed: int
    compared: bool = True  # False: a first scan, which only filled the index


@dataclass(slots=True)
class _Watch:
    index: TreeIndex
    mask: int  # the kinds this watch reports
    # `resynced` notices owed: one per `overflow` with "resync": true announced for it (and
    # per watch_restored) since the last scan published. Two losses may share one scan (the
    # watcher died between an overflow's notice and its scan; the daemon stopped there), but
    # each notice a client was given is answered by a `resynced` of its own.
    resynced_owed: int = 0
    # Of those, the ones whose scan came, each with its figures (changes, duration_ms): they
    # wait for the watcher's word that every event older than the scan is out too
    # (Resyncer.caught).
    awaiting: list[tuple[int, float]] = field(default_factory=list)
    scanned: bool = False  # the index holds a scan (until then, events alone say nothing)
    # A reload changed the watch: a scan that comes before its first index begins (a Fill
    # that starts it, or watch_restored) was made for the old one, and is not taken.
    stale_scans: bool = False
    filling: bool = False  # a first scan comes in parts (channel.Fill), events applied between
    fill_started: float = 0.0
    resyncs: int = 0
    # While a resync's events go out (in steps, see Resyncer.steps): the index as the events
    # published before its scan describe it, and the last seq then. What is stored is this,
    # never the scan: a crash meanwhile must find the differences not yet published.
    published: tuple[Index, int] | None = None
    publishing: int = 0  # resyncs of this watch whose steps have not all run
    # Scan races (see Resyncer.rescan_raced): a rescan asked whose scan has not come, a race
    # seen since (answered by one more rescan), and when the next may be asked.
    rescan_asked: bool = False
    race_again: bool = False
    rescan_next: float = 0.0
    rescan_wait: float = RESCAN_MIN_S


@dataclass(slots=True)
class Resyncer:
    """The indexes of the watches with `resync = true`, and their bookkeeping."""

    watches: dict[str, _Watch] = field(default_factory=dict)
    cookies: itertools.count[int] = field(default_factory=lambda: itertools.count(FIRST_COOKIE))
    # Scans of a replacement watcher, held until the notice of its restart has gone out (they
    # come before its APPLIED, and nothing of it is published in between).
    held: list[tuple[str, AtRest | None, float]] = field(default_factory=list)
    # The catch-ups (channel.Caught) that came while scans were held, by watch.
    held_caught: set[str] = field(default_factory=set)
    # Watches whose last resync's scan missed a directory that moved while it ran
    # (TreeIndex.unseen): each is to be scanned again, its resync announced.
    raced: list[str] = field(default_factory=list)

    def configure(self, watches: Iterable[WatchConfig], changed: Iterable[str]) -> list[str]:
        """Take the watches as configured; `changed`: names whose watch is new or changed.

        A watch that is new or changed (other path, include, exclude, events...) starts afresh:
        its next scan only fills the index. One that is unchanged keeps its index. Returns the
        watches, still configured, whose resync was under way and now cannot finish (changed,
        or without an index now): their subscribers are to be told "resync": false.
        """
        fresh = set(changed)
        kept: dict[str, _Watch] = {}
        unfinished: list[str] = []
        for w in watches:
            old = self.watches.get(w.name)
            if self.under_way(w.name) and (not w.resync or w.name in fresh):
                unfinished.append(w.name)
            if not w.resync:
                continue
            if old is not None and w.name not in fresh:
                kept[w.name] = old
            else:
                kept[w.name] = _Watch(TreeIndex(w.path), kinds_mask(w.events),
                                      stale_scans=old is not None)
        self.watches = kept
        self.held = [h for h in self.held if h[0] in kept and h[0] not in fresh]
        self.held_caught.intersection_update(kept)
        return unfinished

    def under_way(self, name: str) -> bool:
        """Whether a resync announced for the watch is still to be answered."""
        watch = self.watches.get(name)
        return watch is not None and bool(watch.resynced_owed or watch.awaiting)

    def enabled(self) -> list[str]:
        """The watches with an index, for the watcher's configuration."""
        return list(self.watches)

    def to_fill(self) -> list[str]:
        """The watches without a complete index: their first scan may come in parts."""
        return [name for name, watch in self.watches.items() if not watch.scanned]

    def filled(self, name: str, dirs: Listing, start: bool, done: bool) -> bool:
        """A part of a watch's first scan (channel.Fill): its directories replace what the
        index held of them; the events that follow the part are applied on top. True when
        this part completed the index."""
        watch = self.watches.get(name)
        if watch is None or watch.scanned:
            return False  # a whole scan came first (a loss): it filled the index
        if start:
            watch.stale_scans = False
            watch.index.replace({})
            watch.filling = True
            watch.fill_started = time.monotonic()
        if not watch.filling:
            return False
        watch.index.fill(dirs)
        if not done:
            return False
        watch.filling = False
        watch.scanned = True
        log.info("watch %s: index of %d paths built in %.1f s", name, len(watch.index),
                 time.monotonic() - watch.fill_started)
        return True

    def track(self, name: str, reads: list[tuple[float, list[Item]]],
              records: list[Records | None]) -> list[tuple[float, list[Item]]]:
        """Events of a watch about to be published, and each read's records (the watcher's,
        see watchd.records.Recorder): bring its index up to date. Returns the reads to publish:
        `reads` itself, unless a move in them was a replay (see TreeIndex.apply)."""
        watch = self.watches.get(name)
        if watch is None or not (watch.scanned or watch.filling):
            return reads
        complete = watch.scanned
        out = reads
        for i, (when, items) in enumerate(reads):
            # No records: the watcher did not know yet that this watch has an index (the
            # configuration saying so crossed these events); its paths are recorded unknown.
            kept = watch.index.apply(items, records[i] or {}, complete=complete)
            if kept is not items:
                if out is reads:
                    out = list(reads)
                out[i] = (when, kept)
        if watch.index.unseen:
            watch.index.unseen = False
            self.raced.append(name)
        return out

    def rescan_raced(self, broker: Broker, ask: Callable[[str], None],
                     now: float | None = None) -> None:
        """Announce another resync of each watch in `raced`, after the events that showed
        the race, and `ask` the watcher for its scan; called again at each tick for those
        that had to wait.

        Bounded: a watch has at most one such rescan outstanding. A race seen while one is
        (its scan may have begun before the move) is answered by exactly one more, once that
        scan has come; and a rescan is asked no sooner than rescan_wait after the last, a wait
        that doubles while races keep coming and starts over once they stop.
        """
        now = time.monotonic() if now is None else now
        for name in dict.fromkeys(self.raced):
            if (watch := self.watches.get(name)) is not None:
                if (not watch.race_again and not watch.rescan_asked
                        and now >= watch.rescan_next + RESCAN_MAX_S):
                    watch.rescan_wait = RESCAN_MIN_S  # the first race in a while
                watch.race_again = True
        self.raced = []
        for name, watch in self.watches.items():
            if not watch.race_again or watch.rescan_asked or now < watch.rescan_next:
                continue
            log.warning("watch %s: a directory moved while it was rescanned; resynchronizing",
                        name)
            watch.race_again, watch.rescan_asked = False, True
            watch.rescan_next = now + watch.rescan_wait
            watch.rescan_wait = min(watch.rescan_wait * 2, RESCAN_MAX_S)
            self.lost(name)
            broker.overflow(name, OverflowReason.SCAN_RACE, frozenset({name}))
            ask(name)

    def racing(self) -> bool:
        """Whether a rescan after a race waits (for rescan_raced at the next tick)."""
        return any(w.race_again for w in self.watches.values())

    def lost(self, name: str) -> None:
        """An `overflow` with "resync": true was announced for a watch: its next scan is
        compared, and one more `resynced` follows the differences (see _Watch.resynced_owed)."""
        watch = self.watches.get(name)
        if watch is not None and watch.scanned:
            watch.resynced_owed += 1

    def abandoned(self, name: str) -> bool:
        """The resyncs announced for a watch will not come (its root could not be scanned):
        the `overflow` with "resync": false sent instead answers every one of them.

        Its subscribers rescan the tree as it is now, so the index must describe that tree, not
        the one before the loss: a later resync compared with the old one would miss what
        changed in between twice (made during this loss, undone during the next). The index
        starts over, empty and incomplete, as before a first scan: a loss meanwhile is told
        "resync": false, and the next scan only fills it. True when the caller is to ask the
        watcher for that scan (the index was complete: a watch being re-based already is not
        asked again, so a root that stays away costs one scan, not a loop of them)."""
        watch = self.watches.get(name)
        if watch is None:
            return False
        watch.resynced_owed = 0
        watch.awaiting.clear()
        watch.rescan_asked = watch.race_again = False  # the scan asked answers a race as well
        if not watch.scanned:
            return False
        watch.index.replace({})
        watch.scanned = False
        watch.published = None  # nothing is stored for it until that scan (see indexes)
        return True

    def restored(self, name: str) -> bool:
        """A root came back: its scan is compared with what was known (nothing, for a root
        that was missing from the start: then all it holds is new). True when a `resynced`
        is owed for it (a watch with an index), to be kept on record like an overflow's."""
        watch = self.watches.get(name)
        if watch is None:
            return False
        watch.scanned = True
        watch.stale_scans = False
        watch.resynced_owed += 1
        return True

    def restore(self, name: str, dirs: Listing, owed: int = 0) -> None:
        """An index a previous run of the daemon kept (watchd.restore): the watch's first scan
        is compared with it. `owed`: the `resynced` notices that run announced (an `overflow`
        with "resync": true) and did not send; they follow that scan's differences."""
        watch = self.watches.get(name)
        if watch is not None:
            watch.index.replace(dirs)
            watch.scanned = True
            watch.resynced_owed = owed
            watch.awaiting.clear()

    def indexes(self) -> Iterator[tuple[str, Index | None, int | None]]:
        """Each watch's index as the published events describe it (None: not filled yet),
        in the index's own layout (directories at rest stay so), and the seq it is as of
        (None: the last one published). A watch whose resync is still going out gives the
        index before that scan, as of the seq before its first synthetic event: the journal's
        events after it bring it forward (watchd.restore) to exactly what was published."""
        for name, watch in self.watches.items():
            if watch.published is not None:
                yield name, watch.published[0], watch.published[1]
            else:
                yield name, (watch.index.dirs if watch.scanned else None), None

    def unsettled(self, tick: bool = False) -> frozenset[str]:
        """The watches whose index cannot be stored as it is: it waits for the second half of a
        directory's move (TreeIndex.moving_dirs). At a tick (`tick`), first, a wait that began
        before the previous tick stops counting (TreeIndex.expire_moves), so that none lasts for
        ever."""
        if tick:
            for watch in self.watches.values():
                watch.index.expire_moves()
        return frozenset(name for name, w in self.watches.items() if w.index.moving_dirs())

    def resyncing(self, names: Iterable[str]) -> frozenset[str]:
        """Of these watches, those whose next scan will be a resync."""
        return frozenset(n for n in names if n in self.watches and self.watches[n].scanned)

    def scanned(self, name: str, dirs: Listing, scan_s: float,
                seq: int = 0) -> Resync | None:
        """A scan of a watch came (at rest, as the watcher sends it): compare it with the
        index (None: not a watch with one, or a scan of the watch as it was before a reload
        changed it, see _Watch.stale_scans). `seq`: the last one published; until the steps
        of this resync have all run (see steps), the index stored is the one before it."""
        watch = self.watches.get(name)
        if watch is None or watch.stale_scans:
            return None
        started = time.monotonic()
        scan = at_rest(dirs)
        if not watch.scanned:
            watch.index.take(scan)
            watch.filling = False
            watch.scanned = True
            watch.resynced_owed = 0
            return Resync([], 0, 0.0, resynced_owed=0, compared=False)
        watch.rescan_asked = False  # whatever asked for it, a rescan after a race is answered
        keep_unentered(watch.index.dirs, scan)  # see there: a directory that moved mid-scan
        old, new = compared(watch.index, scan)
        result = diff(old, new, watch.index.root, self.cookies)
        if watch.published is None:
            watch.published = (watch.index.dirs, seq)
        watch.publishing += 1
        watch.index.take(scan)
        owed, watch.resynced_owed = watch.resynced_owed, 0
        watch.resyncs += 1
        items = [item for item in result.items if item[0] & watch.mask & _KIND_BITS]
        took = (time.monotonic() - started + scan_s) * 1000
        log.info("watch %s: resynchronized in %.0f ms: %d changes", name, took, result.changes)
        # Its notices wait for the watcher's catch-up (see caught), which the daemon takes only
        # once this resync's steps have run (they are ahead of the watcher's next messages).
        watch.awaiting += [(result.changes, round(took, 3))] * owed
        return Resync(items, result.changes, round(took, 3), owed)

    def steps(self, broker: Broker, name: str, result: Resync,
              after: Callable[[], None]) -> list[Callable[[], None]]:
        """A resync's publication as steps: its events in batches, each followed by `after`
        (the hold-back rule's look at the levels); then its notices (one per loss announced)
        wait for the watcher's catch-up (see caught).

        Run one at a time ahead of the watcher's next messages (WatcherProcess.defer), so that a
        resync of many changes is paced like a burst of kernel events: a client that keeps
        reading gets all of it, and what the watcher sends next waits behind it.
        """
        now = time.time()
        items = result.items

        def batch(start: int) -> Callable[[], None]:
            def step() -> None:
                broker.publish_reads(name, [(now, items[start : start + BATCH_MAX])])
                after()
            return step

        out = [batch(start) for start in range(0, len(items), BATCH_MAX)]
        watch = self.watches.get(name)
        if result.compared and watch is not None:
            out.append(lambda: _published(watch))
        return out

    def caught(self, broker: Broker, name: str) -> None:
        """The watcher has sent every event older than the watch's last scan (channel.Caught):
        the `resynced` notices waiting go out.

        Not before: what the scan listed but could not enter (a directory that came while it
        ran, its coming unread) is reported by those events, and a client that applied them
        has the tree as the scan found it (docs/protocol.md). And from now on no event is a
        replay of what the scan shows (TreeIndex.caught).
        """
        watch = self.watches.get(name)
        if watch is None:
            return
        watch.index.caught()
        owed, watch.awaiting = watch.awaiting, []
        for changes, duration_ms in owed:
            broker.resynced(name, changes, duration_ms)

    def status(self, name: str) -> dict[str, int]:
        """The per-watch status fields: paths in the index, resyncs so far."""
        watch = self.watches.get(name)
        if watch is None:
            return {"tracked": 0, "resyncs": 0}
        return {"tracked": len(watch.index), "resyncs": watch.resyncs}


def _published(watch: _Watch) -> None:
    """The last step of a resync ran: once none is left, the index is stored as it is."""
    if watch.publishing == 0:
        return
    watch.publishing -= 1
    if watch.publishing == 0:
        watch.published = None
