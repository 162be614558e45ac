"""The compact per-watch index: every tracked path of a tree as the published events describe it.

The index is what makes exact recovery possible: after a loss (a kernel queue overflow, a
watcher that crashed or hung), the tree is scanned once and compared with it, and only the
differences are published (see watchd.diff and watchd.resync).

Layout, chosen for memory (watchd.listing): one entry per directory, kept at rest (names
joined, records packed: 86 bytes per path against 176 as dicts, measured by
bench/index_memory.py on 50,000 directories and 200,000 files); a directory that events touch is
turned back into a dict (thawed) and stays one until the next resync.

What a path's record holds and how the watcher takes them: watchd.records.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

from watchd.listing import (
    AtRest,
    Children,
    Dirs,
    Index,
    Listing,
    at_rest,
    count,
    entries,
    keys_below,
    split,
    thaw,
    thawed,
    unlisted,
)
from watchd.records import (
    GONE_AFTER,
    IN_CREATE,
    IN_ISDIR,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IS_DIR,
    STAT_AFTER,
    UNKNOWN_DIR,
    UNKNOWN_FILE,
    Item,
    Records,
    gone,
    inode,
    named,
)

# Events that move or remove entries of the index (a batch without them takes a fast path).
_RESHAPES = GONE_AFTER | IN_MOVED_TO
# In TreeIndex._apply's paths to record, beside IN_ISDIR: a create or moved_to of the batch
# brought the path into being (a modify or attrib alone does not: see TreeIndex.apply).
_MADE = 1
_MASK = operator.itemgetter(0)
_UNKNOWNS = frozenset((UNKNOWN_FILE, UNKNOWN_DIR))

_ORPHANS_MAX = 1024
# A scan's replays (see TreeIndex._replayed) may come until the watcher says it has read every
# event the kernel held when the scan ended (channel.Caught, TreeIndex.caught): not one later.
# Directories an event moved or removed since the scan, kept for _replayed; past this many the
# window closes early (memory stays bounded whatever the tree does).
_TOUCHED_MAX = 1 << 16


# A subtree taken out by an IN_MOVED_FROM: (record, {key relative to it: children}, {path
# relative to it: still to be looked at}, whether the index held it only because the same batch
# created it, the keys of those children that no listing leads to (see TreeIndex._loose),
# relative to it).
_Held = tuple[int, Index, dict[str, int], bool, tuple[str, ...]]


@dataclass(slots=True)
class TreeIndex:
    """One watch's index, kept up to date by the events the daemon publishes for it."""

    root: str
    dirs: Index = field(default_factory=dict)
    # Subtrees taken out by an IN_MOVED_FROM, by cookie, until their IN_MOVED_TO puts them back
    # (see _Held). Kept for one more batch, as a pair may be split between two.
    _moving: dict[int, _Held] = field(default_factory=dict)
    _moving_old: dict[int, _Held] = field(default_factory=dict)
    # The cookies of those that waited at the last tick, and of those that waited at the two
    # last (see expire_moves).
    _waited: frozenset[int] = frozenset()
    _stale: frozenset[int] = frozenset()
    # Cookies of moves whose source the index did not hold (replays, see apply), until their
    # IN_MOVED_TO comes.
    _orphans: dict[int, None] = field(default_factory=dict)
    # Paths where this batch put back a directory it had itself created (see _replayed): a
    # later move of it in the batch is one of the batch's own too.
    _made_here: set[str] = field(default_factory=set)
    # Whether a scan's replays may still come (see _replayed), and the paths an event moved or
    # removed since that scan: an entry they name is no longer the scan's.
    _replaying: bool = False
    _touched: set[str] = field(default_factory=set)
    # A directory came by a replayed move to a destination the index lacks: the resync's scan
    # saw it on neither side (it moved out of a part not scanned yet into one scanned already),
    # so what it holds was published nowhere. The watch is to be scanned again (watchd.resync).
    unseen: bool = False
    # Keys made for a directory whose parent the index did not hold (an event below a
    # directory such a scan missed, published all the same: a client keeps what it names), so
    # that no listing leads to them. A client that is told the missed directory moved or went
    # takes everything below its path away: so does the index, finding these by their path
    # (see _keys_below). Since the last scan taken; some may be gone or reachable since.
    _loose: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return count(self.dirs)

    def moving_dirs(self) -> bool:
        """Whether a directory an IN_MOVED_FROM took out waits for its IN_MOVED_TO (a pair split
        between two batches). Stored meanwhile, the index would lack it, and the journal's
        IN_MOVED_TO could not put it back (watchd.restore): what it holds would be unknown.
        A wait older than a tick does not count (see expire_moves)."""
        return any(held[0] & IS_DIR and cookie not in self._stale
                   for moving in (self._moving, self._moving_old)
                   for cookie, held in moving.items())

    def expire_moves(self) -> None:
        """At a tick: a subtree that waited for its IN_MOVED_TO already at the previous tick no
        longer keeps the index from being stored. Its pair is not likely to come (the watcher
        pairs the two halves within a read, and a pair split between two reads comes in two
        consecutive batches): a move out of the tree followed by silence in the watch would
        otherwise keep the index unstored for ever. The subtree itself stays held, so that a
        late IN_MOVED_TO (a loop that stalled) is still paired and published as a move: only
        the stored copy lacks it, as for a move out of the tree."""
        current = frozenset(self._moving).union(self._moving_old)
        self._stale = self._waited & current
        self._waited = current

    def as_dirs(self) -> Dirs:
        """The index in a scan's layout (a copy), to compare with one."""
        return thawed(self.dirs)

    def _open(self, key: str) -> dict[str, int] | None:
        """A directory's entries, to change: thawed for good if at rest; None: not held."""
        children = self.dirs.get(key)
        if children is None or isinstance(children, dict):
            return children
        opened = self.dirs[key] = thaw(children)
        return opened

    def replace(self, dirs: Listing) -> None:
        """Take a fresh scan, or an index kept by a previous run (which may hold keys no
        listing leads to, see _loose), as the index, its directories at rest (an index kept by
        a previous run, or none: no scan that events may replay, see _replayed)."""
        self.take(at_rest(dirs))
        self._loose.update(unlisted(self.dirs, self.root))
        self._replaying = False

    def take(self, scan: AtRest) -> None:
        """Take a scan at rest as the index (its directories as they are)."""
        self.dirs = dict[str, Children](scan)
        self._moving.clear()
        self._moving_old.clear()
        self._orphans.clear()
        self._loose.clear()
        self._replaying = True
        self._touched.clear()

    def caught(self) -> None:
        """Every event older than the last scan taken has been applied (channel.Caught): from
        now on none is a replay of what it shows."""
        self._replaying = False
        self._touched.clear()

    def fill(self, part: Listing) -> None:
        """Take a part of a first scan (channel.Fill): its directories replace what the index
        held of them (what events put there before they were listed)."""
        self.dirs.update(at_rest(part))
        # A scan lists a directory in its parent before it comes to it: those it came to are
        # reached by listings now, whatever events made their keys before.
        self._loose.difference_update(part)

    def apply(self, items: list[Item], records: Records, *, complete: bool = True,
              ) -> list[Item]:
        """Bring the index up to date with a batch of events about to be published, and the
        records the watcher took at its end (Recorder); returns the events to publish: `items`
        itself, but for the replays described below (only in a `complete` index: while a
        first scan comes in parts, a source the index lacks is one not listed yet).

        No system call here: the events move and remove entries (a directory's subtree goes
        with it), and the paths they leave to be looked at (by Recorder's rules, which are
        these) take their state from `records` (a path missing there: unknown).

        Replays. The kernel events of changes made while a resync scanned come after its
        synthetic events, which already show those changes. Applied again, a create or a delete
        changes nothing, but a move does: its source is gone, and a client would replace what
        the synthetic events put at its destination with the nothing it took from the source.
        So a move whose source the index does not hold is not published: its destination is
        known already (or, if not, it is published as a create). A modify or attrib replayed
        before it names a source the index does not hold either: it does not record it.
        """
        if records and not any(map(_RESHAPES.__and__, map(_MASK, items))) and not (
                complete and _UNKNOWNS.intersection(records.values())):
            # The common batch (creates, writes): nothing moves or goes, so the paths to record
            # are exactly those the watcher recorded. The test runs at C speed.
            self._record_all(records)
        else:
            items = self._apply(items, records, complete)
        if self._moving_old:
            self._moving_old.clear()
        if self._moving:
            self._moving_old, self._moving = self._moving, self._moving_old
        return items

    def _apply(self, items: list[Item], records: Records, complete: bool) -> list[Item]:
        """apply, for a batch that moves or removes paths: event by event."""
        fresh: dict[str, int] = {}  # path -> IN_ISDIR or 0, to be recorded
        self._made_here.clear()
        replays: list[int] | None = None  # positions of moves that are replays
        for i, (mask, cookie, path, src_path) in enumerate(items):
            if mask & STAT_AFTER:
                below = None
                if mask & IN_MOVED_TO:
                    if cookie in self._orphans or (
                            src_path is not None and self._replayed(cookie, path, records)):
                        replays = replays or []
                        replays.append(i)
                    else:
                        if mask & IN_ISDIR:
                            # A rename replaces what had the name, and all below it, as a
                            # client has it (keys no listing leads to included, see _loose).
                            # Only a directory can be renamed onto one: a file's rename does
                            # not look through the loose keys (one per directory in a watch
                            # with `include` patterns).
                            self._drop_below(path)
                        below = self._moved_to(cookie, path, src_path)
                made = fresh.get(path, 0) & _MADE or mask & (IN_CREATE | IN_MOVED_TO)
                named(fresh, mask, path, below)
                if made:
                    fresh[path] |= _MADE
            elif mask & GONE_AFTER:
                was_fresh, below = gone(fresh, mask, path)
                if was_fresh is not None and not was_fresh & _MADE:
                    was_fresh = None  # only modified: known if the index holds it
                if self._remove(path, cookie if mask & IN_MOVED_FROM else None, below,
                                was_fresh):
                    continue
                # Not held; but events replayed under it (a create in a directory renamed
                # before the scan) may have left entries below it, which a client has: this
                # event takes them away (a moved_from is published, its moved_to is not).
                stray = bool(mask & IN_ISDIR) and (
                    self._drop_below(path) or any(bits & _MADE for bits in below.values()))
                if mask & IN_MOVED_FROM and complete:
                    self._orphans[cookie] = None
                    if not stray:
                        replays = replays or []
                        replays.append(i)
            if self._replaying and mask & _RESHAPES and mask & IN_ISDIR:
                self._touch(path)
        if replays is not None:
            items = self._without_replays(items, replays)
        if fresh:
            self._record(fresh, records, complete)
        if len(self._orphans) > _ORPHANS_MAX:
            self._orphans.clear()  # pairs the kernel split and never finished
        return items

    def _without_replays(self, items: list[Item], replays: list[int]) -> list[Item]:
        """items without the replayed moves; a moved_to whose destination the index lacks
        becomes a create."""
        out = list(items)
        for i in reversed(replays):
            mask, cookie, path, _src = items[i]
            if mask & IN_MOVED_TO:
                self._orphans.pop(cookie, None)
                parent, name = split(path)
                if name not in (self._open(parent) or ()):
                    out[i] = (IN_CREATE | (mask & IN_ISDIR), 0, path, None)
                    self.unseen = self.unseen or bool(mask & IN_ISDIR)
                    continue
            del out[i]
        return out

    def _record(self, fresh: dict[str, int], records: Records, complete: bool) -> None:
        """Set the state of the paths a batch left to be recorded, as the watcher found them
        (a path it has no record of: unknown). In a complete index, a path only modified that
        it does not hold and the watcher found gone is a replay (see apply): not recorded."""
        found = {path: records.get(path, UNKNOWN_DIR if bits & IN_ISDIR else UNKNOWN_FILE)
                 for path, bits in fresh.items()}
        if complete:
            for path, bits in fresh.items():
                if not bits & _MADE and found[path] in _UNKNOWNS and not self._holds(path):
                    del found[path]
        self._record_all(found)

    def _holds(self, path: str) -> bool:
        parent, name = split(path)
        return name in (self._open(parent) or ())

    def _record_all(self, records: Records) -> None:
        """Set the state of every path in records, as the watcher found them."""
        dirs, root = self.dirs, self.root
        for path, record in records.items():
            parent, _, name = path.rpartition("/")
            if not name or path == root:
                continue  # the root itself is not one of its entries
            children = dirs.get(parent or "/")
            if children is None:
                children = dirs[parent or "/"] = {}
                self._loose.add(parent or "/")
            elif not isinstance(children, dict):
                children = dirs[parent or "/"] = thaw(children)
            children[name] = record
            if record & IS_DIR and path not in dirs:
                dirs[path] = {}

    def _remove(self, path: str, cookie: int | None, below: dict[str, int],
                was_fresh: int | None) -> bool:
        """Take a path (and what is below it) out; False when the index does not hold it.

        was_fresh: the path was named earlier in this batch (IN_ISDIR or 0) and is yet to be
        recorded, so it is known even if not recorded yet.
        """
        parent, name = split(path)
        children = self._open(parent)
        record = None if children is None else children.pop(name, None)
        made_here = record is None or path in self._made_here  # held only by the batch's doing
        if record is None:
            if was_fresh is None:
                return False
            record = UNKNOWN_DIR if was_fresh & IN_ISDIR else UNKNOWN_FILE
        moved: Index = {}
        loose: tuple[str, ...] = ()
        if record & IS_DIR:
            keys, loose_keys = self._keys_below(path)
            for key in keys:
                moved[key[len(path):]] = self.dirs.pop(key)
            loose = tuple(key[len(path):] for key in loose_keys)
        if cookie is not None:
            self._moving[cookie] = (record, moved, below, made_here, loose)
        return True

    def _drop_below(self, path: str) -> bool:
        """Drop what the index holds below `path` (not held itself); whether it held any."""
        keys, _ = self._keys_below(path)
        for key in keys:
            del self.dirs[key]
        return bool(keys)

    def _keys_below(self, path: str) -> tuple[list[str], list[str]]:
        """The directory keys of `path` and of all that is below it: those its listings lead
        to, and those made below it without a listing leading to them (see _loose), which a
        client has there all the same; and, of these, the loose ones themselves."""
        return keys_below(self.dirs, self._loose, path)

    def _touch(self, path: str) -> None:
        """An event moved or removed the directory at `path`, or moved one onto it (see
        _replayed: only a directory can be its destination)."""
        self._touched.add(path)
        if len(self._touched) > _TOUCHED_MAX:
            self._replaying = False
            self._touched.clear()

    def _replayed(self, cookie: int, path: str, records: Records) -> bool:
        """Whether an IN_MOVED_TO is a replay (see apply) that its source does not tell: a
        directory the batch itself created (the index did not hold it) moved to where the index
        holds that very directory already (the inode the watcher found there now). Created,
        filled and renamed while a resync scanned, the scan found it at its new name with what
        it holds; the replayed create gave the index its old name, and published, the move
        would replace what the scan's differences made with that bare directory. Its
        IN_MOVED_FROM goes out (it takes the replayed create away from a client); this does
        not, and the held subtree (the create's, bare) is dropped.

        The inode alone does not tell that directory: ext4 gives a freed inode number to the
        next directory made, so `mkdir tmp; mv tmp dest; mkdir d; mv d dest` (tmp's rename
        frees the inode of the dest the index holds, d gets it) would look the same with the
        records taken after the last rename. So the rule holds only where a replay can be:
        until the events older than the scan are all applied (caught), for a destination
        that is still the scan's (no event since moved it, removed it or moved something
        onto it), and for a directory whose entries made by the batch are all in the scan's
        (the scan found it after them).
        Dropping a real move then replaces nothing a client sees: an empty directory over an
        empty one, as a rename onto a directory needs it empty."""
        if not self._replaying or path in self._touched:
            return False
        held = self._moving.get(cookie) or self._moving_old.get(cookie)
        if held is None or not held[3] or not held[0] & IS_DIR:
            return False
        parent, name = split(path)
        there = (self._open(parent) or {}).get(name)
        now = records.get(path)
        if (there is None or now is None or not there & now & IS_DIR or not inode(now)
                or inode(there) != inode(now) or not self._holds_all(path, held)):
            return False
        if self._moving.pop(cookie, None) is None:
            del self._moving_old[cookie]
        return True

    def _holds_all(self, path: str, held: _Held) -> bool:
        """Whether the index holds, below `path`, every entry a held subtree has below it."""
        _record, moved, below, _made, _loose = held
        rels = list(below)
        rels.extend(key + "/" + name for key, children in moved.items()
                    for name, _rec in entries(children))
        for rel in rels:
            parent, name = split(path + rel)
            children = self.dirs.get(parent)
            if children is None or name not in dict(entries(children)):
                return False
        return True

    def _moved_to(self, cookie: int, path: str, src_path: str | None) -> dict[str, int] | None:
        """Put a subtree taken out by its IN_MOVED_FROM back, at its new name; returns what was
        to be looked at below it (relative to it)."""
        if src_path is None:
            return None
        held = self._moving.pop(cookie, None) or self._moving_old.pop(cookie, None)
        if held is None:
            return None
        record, moved, below, made_here, loose = held
        if made_here:
            self._made_here.add(path)
        parent, name = split(path)
        children = self._open(parent)
        if children is None:
            children = self.dirs[parent] = {}
            self._loose.add(parent)
        children[name] = record
        for rel, kept in moved.items():
            self.dirs[path + rel] = kept
        self._loose.update(path + rel for rel in loose)
        return below
