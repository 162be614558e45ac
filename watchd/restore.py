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
must rescan it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from watchd.config.model import Config, WatchConfig
from watchd.events import Kind
from watchd.index import Dirs, split, subtree_keys
from watchd.journal import parse_tail
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


def bring_forward(stored: StoredIndex, name: str, entries: list[Held],
                  last_seq: int) -> Dirs | None:
    """The stored index with the journal's later events of its watch applied; None when the
    journal no longer holds all of them (or the index is newer than the journal)."""
    if stored.seq > last_seq:
        return None
    oldest = entries[0][0] if entries else last_seq + 1
    if stored.seq + 1 < oldest:
        return None
    dirs = stored.dirs
    moving: dict[int, tuple[int, Dirs, str]] = {}
    start = stored.seq + 1 - oldest
    for _seq, watch, _bit, path, tail in entries[max(start, 0):]:
        if watch == name:
            apply_event(dirs, moving, path, tail)
    return dirs


def apply_event(dirs: Dirs, moving: dict[int, tuple[int, Dirs, str]], path: str,
                tail: bytes) -> None:
    """One journal event onto an index, without looking at the tree."""
    event = parse_tail(tail)
    kind, is_dir, cookie = event["kind"], bool(event["is_dir"]), event["cookie"]
    parent, name = split(path)
    if kind in _PRESENT:
        _put(dirs, parent, name, UNKNOWN_DIR if is_dir else UNKNOWN_FILE, path)
    elif kind in (Kind.DELETE, Kind.MOVED_FROM):
        record = dirs.get(parent, {}).pop(name, None)
        subtree: Dirs = {}
        if record is not None and record & IS_DIR:
            for key in subtree_keys(dirs, path):
                subtree[key[len(path):]] = dirs.pop(key)
        if kind == Kind.MOVED_FROM and record is not None:
            moving[cookie] = (record, subtree, path)
    elif kind == Kind.MOVED_TO:
        held = moving.pop(cookie, None)
        if held is None or event.get("src_path") != held[2]:
            _put(dirs, parent, name, UNKNOWN_DIR if is_dir else UNKNOWN_FILE, path)
            return
        record, subtree, _src = held
        _put(dirs, parent, name, record, path)
        for rel, children in subtree.items():
            dirs[path + rel] = children


def _put(dirs: Dirs, parent: str, name: str, record: int, path: str) -> None:
    old = dirs.setdefault(parent, {}).get(name)
    if old is not None and old & IS_DIR and not record & IS_DIR:
        for key in subtree_keys(dirs, path):
            del dirs[key]
    dirs[parent][name] = record
    if record & IS_DIR:
        dirs.setdefault(path, {})


def usable_indexes(watches: Iterable[WatchConfig], stored: dict[str, StoredIndex],
                   entries: list[Held], last_seq: int) -> dict[str, Dirs]:
    """The watches whose index can be compared with their first scan, brought up to date."""
    out: dict[str, Dirs] = {}
    for watch in watches:
        index = stored.get(watch.name)
        if not watch.resync:
            continue
        why = None
        if index is None:
            why = "no index was kept"
        elif index.spec != index_spec(watch):
            why = "its configuration changed"
        else:
            dirs = bring_forward(index, watch.name, entries, last_seq)
            if dirs is None:
                why = "its index is older than the journal"
            else:
                out[watch.name] = dirs
        if why is not None:
            log.warning("watch %s: %s; its subscribers are told to rescan", watch.name, why)
    return out


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
    return state, resumed
