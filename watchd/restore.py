"""Resuming a previous run of the daemon from its durable state (watchd.state).

What a client that reconnects with its last seq receives, in seq order:

1. the journal's events after its since (the history is restored from the journal);
2. for each watch, an `overflow` notice with reason "daemon_restart": changes made while the
   daemon was down were not seen as events. With `"resync": true` when the watch's index was
   kept: the differences follow;
3. the start-up differences, as synthetic events: the daemon's first scan of each such watch
   is compared with its index (watchd.resync), then `resynced` for that watch;
4. live events.

The index of a watch is stored now and then, so it may be older than the journal's last event.
The journal's events after the index's seq are applied to it here, without looking at the tree
(which has moved on since): a created or changed path gets a record of unknown state, which
differs from anything a scan finds, so the start-up comparison reports it again (a `modify`
or `attrib` for a path that had not changed, at most; applied in order, every event still ends
in the tree as it is). A watch whose index is missing, was taken of another configuration of
the watch, or is older than what the journal holds, gets `"resync": false`: its subscribers
must rescan it, and its stored index is removed before that notice is published (open_state),
so that no later start compares with it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from watchd.config.model import Config, WatchConfig
from watchd.events import Kind
from watchd.journal import parse_tail
from watchd.listing import Dirs, keys_below, split, unlisted
from watchd.previous import Resumed
from watchd.reasons import OverflowReason
from watchd.records import IS_DIR, UNKNOWN_DIR, UNKNOWN_FILE
from watchd.replay import Held, Marker
from watchd.state import State
from watchd.statefiles import StoredIndex

if TYPE_CHECKING:  # for hints only: the daemon wires these parts together
    from watchd.broker import Broker
    from watchd.resync import Resyncer

log = logging.getLogger("watchd")

# Kinds after which a path exists, in a state the journal does not tell.
_PRESENT = frozenset({Kind.CREATE, Kind.MODIFY, Kind.ATTRIB, Kind.CLOSE_WRITE})


def index_spec(watch: WatchConfig) -> str:
    """What makes two configurations of a watch produce the same index."""
    return json.dumps([watch.path, watch.real_path, watch.recursive, sorted(watch.events),
                       list(watch.include), list(watch.exclude)])


def reaches(stored: StoredIndex, entries: list[Held], last_seq: int) -> bool:
    """Whether the journal holds every event after a stored index's seq (an index newer than
    the journal's last event is not one of its run's)."""
    oldest = entries[0][0] if entries else last_seq + 1
    return oldest <= stored.seq + 1 <= last_seq + 1


def unusable(watch: WatchConfig, stored: StoredIndex | None, entries: list[Held],
             last_seq: int) -> str | None:
    """Why a watch's stored index cannot be compared with its first scan (None: it can)."""
    if stored is None:
        return "no index was kept"
    if stored.spec != index_spec(watch):
        return "its configuration changed"
    if not reaches(stored, entries, last_seq):
        return "its index is older than the journal"
    return None


def bring_forward(stored: StoredIndex, name: str, entries: list[Held],
                  last_seq: int) -> Dirs | None:
    """The stored index with the journal's later events of its watch applied; None when the
    journal no longer holds all of them (or the index is newer than the journal)."""
    if not reaches(stored, entries, last_seq):
        return None
    forward = Forward(stored.dirs)
    start = stored.seq + 1 - (entries[0][0] if entries else last_seq + 1)
    for _seq, watch, _bit, path, tail in entries[max(start, 0):]:
        if watch == name:
            forward.apply(path, tail)
    return forward.dirs


# A directory a journal's moved_from took out, until its moved_to: (record, {key relative to
# it: children}, its path, the keys of those children that no listing leads to, relative to it).
_Moving = tuple[int, Dirs, str, tuple[str, ...]]


class Forward:
    """An index brought forward by journal events, as a client applying them has the tree.

    A client keeps what an event names even where it was told nothing of the parents (an
    event below a directory a resync's scan missed), and takes everything below a path that
    is deleted or moved. The index holds such entries under keys that no listing leads to
    (loose: as the daemon's own index does, watchd.index.TreeIndex._loose), and a delete or
    move takes them too (watchd.listing.keys_below)."""

    def __init__(self, dirs: Dirs) -> None:
        self.dirs = dirs
        # The root is the one key every other one is below: the shortest.
        self.loose = set(unlisted(dirs, min(dirs, key=len))) if dirs else set[str]()
        self.moving: dict[int, _Moving] = {}

    def apply(self, path: str, tail: bytes) -> None:
        """One journal event onto the index, without looking at the tree."""
        event = parse_tail(tail)
        kind, is_dir, cookie = event["kind"], bool(event["is_dir"]), event["cookie"]
        unknown = UNKNOWN_DIR if is_dir else UNKNOWN_FILE
        if kind in _PRESENT:
            self._put(path, unknown)
        elif kind in (Kind.DELETE, Kind.MOVED_FROM):
            parent, name = split(path)
            record = self.dirs.get(parent, {}).pop(name, None)
            subtree, loose = self._take(path) if is_dir or (
                record is not None and record & IS_DIR) else ({}, ())
            if kind == Kind.MOVED_FROM and (record is not None or subtree):
                self.moving[cookie] = (unknown if record is None else record, subtree, path,
                                       loose)
        elif kind == Kind.MOVED_TO:
            held = self.moving.pop(cookie, None)
            # A rename replaces what had the name, and all below it (loose keys too): from a
            # source a client does not know (moved in from outside), it has a bare directory.
            # Only a directory can be renamed onto one (and _put takes what a file replaces):
            # a file's rename does not look through the loose keys, which a watch with
            # `include` patterns has one of per directory.
            if is_dir:
                self._take(path)
            if held is None or event.get("src_path") != held[2]:
                self._put(path, unknown)
                return
            record, subtree, _src, loose = held
            self._put(path, record)
            self.dirs.update((path + rel, children) for rel, children in subtree.items())
            self.loose.update(path + rel for rel in loose)

    def _take(self, path: str) -> tuple[Dirs, tuple[str, ...]]:
        """Take out the directory keys of path and of everything below it (loose ones
        included), relative to it; and which of these were loose."""
        keys, loose = keys_below(self.dirs, self.loose, path)
        taken = {key[len(path):]: self.dirs.pop(key) for key in keys}
        return taken, tuple(key[len(path):] for key in loose)

    def _put(self, path: str, record: int) -> None:
        parent, name = split(path)
        children = self.dirs.get(parent)
        if children is None:
            children = self.dirs[parent] = {}
            self.loose.add(parent)  # no listing leads to it (see the class)
        old = children.get(name)
        if old is not None and old & IS_DIR and not record & IS_DIR:
            self._take(path)
        children[name] = record
        if record & IS_DIR:
            self.dirs.setdefault(path, {})


def usable_indexes(watches: Iterable[WatchConfig], stored: dict[str, StoredIndex],
                   entries: list[Held], last_seq: int) -> dict[str, Dirs]:
    """The watches whose index can be compared with their first scan, brought up to date."""
    out: dict[str, Dirs] = {}
    for watch in watches:
        if not watch.resync:
            continue
        index = stored.get(watch.name)
        why = unusable(watch, index, entries, last_seq)
        dirs = None if why is not None or index is None else bring_forward(
            index, watch.name, entries, last_seq)
        if dirs is None:
            log.warning("watch %s: %s; its subscribers are told to rescan", watch.name, why)
        else:
            out[watch.name] = dirs
    return out


def voided(watches: Iterable[WatchConfig], resumed: Resumed) -> list[str]:
    """The watches whose stored index the resume's notices void: each is told "resync": false
    (resume), and its subscribers rescan; compared after a later restart, the index would
    describe the tree before their rescan."""
    loaded = resumed.loaded
    return [watch.name for watch in watches
            if (index := resumed.indexes.get(watch.name)) is not None
            and (not watch.resync
                 or unusable(watch, index, loaded.entries, loaded.last_seq) is not None)]


# The reason of a marker that only the journal holds: a `watch_restored` of a watch with an
# index, which a `resynced` answers as it answers an overflow's resync (see unanswered). Not
# part of the history: watch_restored is not replayed.
RESTORED = "watch_restored"


def restored_marker(seq: int, watch: str) -> Marker:
    """The journal's record of a `watch_restored` that a `resynced` is to answer."""
    return Marker(seq, watch, RESTORED, frozenset({watch}))


def resume(broker: Broker, resync: Resyncer, watches: Iterable[WatchConfig],
           resumed: Resumed) -> None:
    """Take over a previous run's history and indexes, and tell each watch's subscribers
    what follows (see the module's docstring)."""
    loaded = resumed.loaded
    notices = [m for m in loaded.markers if m.reason != RESTORED]
    broker.history.restore(loaded.entries, notices, loaded.last_seq)
    watches = tuple(watches)
    usable = usable_indexes(watches, resumed.indexes, loaded.entries, loaded.last_seq)
    owed = unanswered(loaded.markers)
    for name, dirs in usable.items():
        resync.restore(name, dirs, owed.get(name, 0))
    for watch in watches:
        resyncing = frozenset({watch.name}) if watch.name in usable else frozenset()
        if resyncing:
            resync.lost(watch.name)
        broker.overflow(watch.name, OverflowReason.DAEMON_RESTART, resyncing)
    log.info("resumed instance %s at seq %d (%d events held for since; %d of %d watches "
             "compared with their index)", resumed.instance, loaded.last_seq,
             len(broker.history), len(usable), len(watches))


def unanswered(markers: Iterable[Marker]) -> dict[str, int]:
    """Per watch, the `overflow` notices with "resync": true (and the `watch_restored` of a
    watch with an index: RESTORED) among a previous run's markers that no `resynced`
    answered: that run stopped before their scan was published, and the start-up scan answers
    them too (see watchd.resync's _Watch.resynced_owed). A notice that says "resync": false
    to a watch's subscribers answers every one before it: they rescan."""
    owed: dict[str, int] = {}
    for marker in markers:
        if marker.changes >= 0:  # a resynced
            assert marker.watch is not None
            owed[marker.watch] = max(0, owed.get(marker.watch, 0) - 1)
            continue
        names = owed.keys() | marker.resync if marker.watch is None else {marker.watch}
        for name in names:
            owed[name] = owed.get(name, 0) + 1 if name in marker.resync else 0
    return owed


def open_state(config: Config, environ: Mapping[str, str], *,
               retain: Callable[[], int]) -> tuple[State | None, Resumed | None]:
    """The state directory, if there is one, and what to resume (None for a fresh start).
    A state that cannot be resumed never stops the daemon from starting."""
    d = config.daemon
    path = d.state_path(environ)
    if path is None:
        return None, None
    if (watch := config.watching(path)) is not None:  # $STATE_DIRECTORY: not checked at load
        log.error("state directory %s is inside watch %s, whose events would report its "
                  "writes without end; going on without durable state", path, watch.name)
        return None, None
    state = State(path, max_bytes=d.journal_max_bytes, fsync_interval=d.journal_fsync_interval,
                  retain=retain)
    resumed = state.open({w.name: index_spec(w) for w in config.watches})
    if resumed is not None and not state.start(resumed.instance, resumed.loaded.last_seq):
        # It cannot be written: resumed, its next seqs would be on record nowhere.
        state.restored_from = None
        return state, None
    if resumed is not None:
        # Removed before resume publishes the notices that void them, as at any abandon
        # (State.forget): the next save is a while away, and a crash before it must not find
        # them.
        state.forget(voided(config.watches, resumed))
    return state, resumed
