"""The compact per-watch index: every tracked path of a tree as the published events describe it.

The index is what makes exact recovery possible: after a loss (a kernel queue overflow, a
watcher that crashed or hung), the tree is scanned once and compared with it, and only the
differences are published (see watchd.diff and watchd.resync).

Layout, chosen for memory: one entry per directory, `{dir path: children}`, so a path costs
its base name (not its full path) and its record. `Dirs` has a dict `{name: record}` as each
directory's children (what watchd.diff reads). The index keeps a directory at rest (`Frozen`,
see freeze), and the watcher's scan comes so (`AtRest`, watchd.scan): its names joined into
one string and its records packed in 12 bytes each, about
half the memory of a dict of str and int objects (measured by bench/index_memory.py:
176 bytes per path as dicts on 50,000 directories and 200,000 files, 86 frozen); a directory
that events touch is turned back into a dict (thawed) and stays one until the next resync.

The record packs what tells a changed file from an unchanged one and a moved file from a new
one into a single int of at most 90 bits (36 bytes as a Python int, 12 frozen):

    bit 0        1 for a directory
    bits 1-17    a hash of (mode, uid, gid): an attrib
    bits 18-57   a hash of (size, mtime_ns): a modify (0 for a directory)
    bits 58-89   the low 32 bits of the inode (never 0): a move

A record of 0 or 1 (the cached small ints: no memory of their own) is a path whose state is
unknown: an event named it but it was gone by the time it was looked at. It stays in the index
so that a loss that hides its deletion still ends in a delete; compared with anything, it
differs.

Only the watcher builds records (`pack`): when it scans, and at the end of each batch of events
it sends for a watch with an index (`Recorder`), for the paths the batch named. The daemon
applies the events and those records (`TreeIndex.apply`) and makes no system call: the lstat
and the packing run in the watcher's process, on the other core, off the daemon's event path
(where they cost a seventh of its burst throughput).

The invariant that makes the index exact: a path's record is taken no later than the events
that named it are published. The watcher takes it after it read those events from the kernel
and before it sends them; whatever changes after the lstat is in the kernel's queue, and its
events are published after these. So at any point the index is no newer than what a client
that read every published event knows, and a resync's diff misses nothing.
"""

from __future__ import annotations

import operator
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from typing import Literal

# A snapshot or an index: {directory path: {name: record}}. Every directory that was listed
# has a key, even an empty one; the root's key is the watch's path.
Dirs = dict[str, dict[str, int]]
# What the index needs of an event, as the channel carries it: (mask, cookie, path, src_path).
Item = tuple[int, int, str, "str | None"]

IS_DIR = 1
UNKNOWN_FILE = 0
UNKNOWN_DIR = 1
_ATTR_SHIFT, _ATTR_BITS = 1, (1 << 17) - 1
_CONTENT_SHIFT, _CONTENT_BITS = 18, (1 << 40) - 1
_INO_SHIFT, _INO_BITS = 58, (1 << 32) - 1

# Kernel event bits (fixed by the ABI; watchd.events holds them as kinds).
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_ISDIR = 0x40000000
# Events after which a path's state is looked at again (at the end of the batch).
_STAT_AFTER = IN_CREATE | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO
_GONE_AFTER = IN_DELETE | IN_MOVED_FROM
# Events that move or remove entries of the index (a batch without them takes a fast path).
_RESHAPES = _GONE_AFTER | IN_MOVED_TO
# In TreeIndex._apply's paths to record, beside IN_ISDIR: a create or moved_to of the batch
# brought the path into being (a modify or attrib alone does not: see TreeIndex.apply).
_MADE = 1
_MASK = operator.itemgetter(0)
_UNKNOWNS = frozenset((UNKNOWN_FILE, UNKNOWN_DIR))

_S_IFMT, _S_IFDIR = stat.S_IFMT(0o170000), stat.S_IFDIR
_ORPHANS_MAX = 1024


def pack(st: os.stat_result) -> int:
    """The record of a path from its lstat.

    The hashes are multiply-xor mixes rather than hash() of tuples: this runs once per path
    named in each batch of events, before the batch is published.
    """
    ino = (st.st_ino & _INO_BITS) or _INO_BITS
    mode = st.st_mode
    attr = (mode ^ st.st_uid * 0x9E3779B1 ^ st.st_gid * 0x85EBCA77) & _ATTR_BITS
    if mode & _S_IFMT == _S_IFDIR:
        # A directory's size and mtime change with its entries, which are tracked themselves.
        return ino << _INO_SHIFT | attr << _ATTR_SHIFT | IS_DIR
    content = (st.st_size * 0x9E3779B97F4A7C15 ^ st.st_mtime_ns) & _CONTENT_BITS
    return ino << _INO_SHIFT | content << _CONTENT_SHIFT | attr << _ATTR_SHIFT


def is_dir(record: int) -> bool:
    """Whether a record is a directory's."""
    return bool(record & IS_DIR)


def inode(record: int) -> int:
    """The inode part of a record (0: unknown)."""
    return record >> _INO_SHIFT


def content_of(record: int) -> int:
    return (record >> _CONTENT_SHIFT) & _CONTENT_BITS


def attr_of(record: int) -> int:
    return (record >> _ATTR_SHIFT) & _ATTR_BITS


def join(parent: str, name: str) -> str:
    return parent + "/" + name if parent != "/" else "/" + name


def split(path: str) -> tuple[str, str]:
    """(parent, name) of an absolute path."""
    parent, _, name = path.rpartition("/")
    return parent or "/", name


# A directory at rest: its names joined by "/" (which no name holds) and its records, each in
# _RECORD_BYTES little-endian bytes, in the same order. A str and a bytes per directory instead
# of a dict, a str and an int per path.
Frozen = tuple[str, bytes]
Children = dict[str, int] | Frozen
# The index's own layout: a scan's, but with directories at rest.
Index = dict[str, Children]
# A scan as the watcher sends it (watchd.scan): every directory at rest.
AtRest = dict[str, Frozen]
# Any of the three, read only (a scan at rest, as dicts, or an index).
Listing = Mapping[str, Children]
_RECORD_BYTES = 12  # 90 bits
_LITTLE: Literal["little"] = "little"


def freeze(children: dict[str, int]) -> Frozen:
    """A directory's entries at rest."""
    return ("/".join(children),
            b"".join(map(int.to_bytes, children.values(), repeat(_RECORD_BYTES), repeat(_LITTLE))))


def record_bytes(st: os.stat_result) -> bytes:
    """The record of a path from its lstat, as a directory at rest holds it (see scan)."""
    return pack(st).to_bytes(_RECORD_BYTES, _LITTLE)


def at_rest(dirs: Listing) -> AtRest:
    """Every directory of dirs at rest (those that are already stay as they are)."""
    return {key: c if isinstance(c, tuple) else freeze(c) for key, c in dirs.items()}


def thaw(children: Children) -> dict[str, int]:
    """A directory's entries as a dict (a dict is returned as it is)."""
    if isinstance(children, dict):
        return children
    names, packed = children
    if not packed:
        return {}
    size = _RECORD_BYTES
    return dict(zip(names.split("/"), map(
        int.from_bytes, [packed[i : i + size] for i in range(0, len(packed), size)],
        repeat(_LITTLE)), strict=True))


def thawed(dirs: Listing) -> Dirs:
    """An index as a scan's layout (a copy where a directory is at rest)."""
    return {key: thaw(children) for key, children in dirs.items()}


def entries(children: Children) -> Iterable[tuple[str, int]]:
    """(name, record) of a directory, in either form, without thawing it."""
    return children.items() if isinstance(children, dict) else thaw(children).items()


def count(dirs: Listing) -> int:
    """How many paths a snapshot or an index tracks."""
    return sum(len(c) if isinstance(c, dict) else len(c[1]) // _RECORD_BYTES
               for c in dirs.values())


def walk(dirs: Index | Dirs, top: str) -> Iterator[tuple[str, int]]:
    """(path, record) of everything below `top` in dirs, parents before children."""
    stack = [top]
    while stack:
        parent = stack.pop()
        children = dirs.get(parent)
        if children is None:
            continue
        for name, record in entries(children):
            path = join(parent, name)
            yield path, record
            if record & IS_DIR:
                stack.append(path)


def subtree_keys(dirs: Index | Dirs, top: str) -> list[str]:
    """The directory keys of `top` and of the directories below it that dirs holds."""
    keys = [top] if top in dirs else []
    keys.extend(path for path, record in walk(dirs, top) if record & IS_DIR and path in dirs)
    return keys


# The records a batch of events brought: {path: record}, for each path it named (see Recorder).
Records = dict[str, int]
# A subtree taken out by an IN_MOVED_FROM: (record, {key relative to it: children}, {path
# relative to it: still to be looked at}).
_Held = tuple[int, Index, dict[str, int]]


def _named(fresh: dict[str, int], mask: int, path: str, below: dict[str, int] | None) -> None:
    """A path named by a create, modify, attrib, close_write or moved_to: to be looked at,
    with what was to be looked at below it under its old name (below, for a moved_to)."""
    if below:
        for rel, isdir in below.items():
            fresh[path + rel] = isdir
    fresh[path] = mask & IN_ISDIR


def _gone(fresh: dict[str, int], mask: int, path: str) -> tuple[int | None, dict[str, int]]:
    """A path deleted or moved away: it is not looked at, nor what is below it. Returns
    whether it was to be looked at (IN_ISDIR or 0, None: not), and what was below it, relative
    to it (to be looked at under its new name, if it moved within the tree)."""
    was_fresh = fresh.pop(path, None)
    below: dict[str, int] = {}
    if mask & IN_ISDIR and fresh:
        prefix = path + "/"
        for key in [k for k in fresh if k.startswith(prefix)]:
            below[key[len(path):]] = fresh.pop(key)
    return was_fresh, below


@dataclass(slots=True)
class Recorder:
    """The watcher's half of keeping an index: the records of the paths a batch of events names.

    Each path named by a create, modify, attrib, close_write or moved_to is looked at once, at
    the end of the batch, whatever number of events named it: a burst of creates and deletes of
    one path costs no system call at all. A path named, then deleted or moved away within the
    batch is not looked at; one below a directory that moved is looked at under its new name
    (when the pair is split between two batches, in the next one). TreeIndex.apply follows the
    same rules, so it finds a record for each path it is to record.

    In the watcher rather than in the daemon: the watcher runs in a process of its own, on the
    other core, and has just read the events; the daemon's event path stays free of system
    calls. The records go with the batch (channel.Events), so they are taken before its events
    are published (the invariant above).
    """

    # What was still to be looked at below a directory that moved away, by cookie (see _gone).
    # Kept for one more batch, as a pair may be split between two.
    _moving: dict[int, dict[str, int]] = field(default_factory=dict)
    _moving_old: dict[int, dict[str, int]] = field(default_factory=dict)

    def records(self, items: list[Item]) -> Records:
        """The records of the paths `items` named, as they are now."""
        out: Records = {}
        lstat = os.lstat
        for path, isdir in self.named(items).items():
            try:
                out[path] = pack(lstat(path))
            except OSError:
                out[path] = UNKNOWN_DIR if isdir else UNKNOWN_FILE
        return out

    def named(self, items: list[Item]) -> dict[str, int]:
        """The paths to look at after `items`: path -> IN_ISDIR or 0."""
        fresh: dict[str, int] = {}
        moving, moving_old = self._moving, self._moving_old
        for mask, cookie, path, _src in items:
            if mask & _STAT_AFTER:
                below = None
                if mask & IN_MOVED_TO and (moving or moving_old):
                    below = moving.pop(cookie, None) or moving_old.pop(cookie, None)
                _named(fresh, mask, path, below)
            elif mask & _GONE_AFTER and fresh:
                _, below = _gone(fresh, mask, path)
                if below and mask & IN_MOVED_FROM:
                    moving[cookie] = below
        moving_old.clear()
        self._moving_old, self._moving = moving, moving_old
        return fresh


@dataclass(slots=True)
class TreeIndex:
    """One watch's index, kept up to date by the events the daemon publishes for it."""

    root: str
    dirs: Index = field(default_factory=dict)
    # Subtrees taken out by an IN_MOVED_FROM, by cookie, until their IN_MOVED_TO puts them back
    # (see _Held). Kept for one more batch, as a pair may be split between two.
    _moving: dict[int, _Held] = field(default_factory=dict)
    _moving_old: dict[int, _Held] = field(default_factory=dict)
    # Cookies of moves whose source the index did not hold (replays, see apply), until their
    # IN_MOVED_TO comes.
    _orphans: dict[int, None] = field(default_factory=dict)
    # A directory came by a replayed move to a destination the index lacks: the resync's scan
    # saw it on neither side (it moved out of a part not scanned yet into one scanned already),
    # so what it holds was published nowhere. The watch is to be scanned again (watchd.resync).
    unseen: bool = False

    def __len__(self) -> int:
        return count(self.dirs)

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
        """Take a fresh scan as the index, its directories at rest."""
        self.take(at_rest(dirs))

    def take(self, scan: AtRest) -> None:
        """Take a scan at rest as the index (its directories as they are)."""
        self.dirs = dict[str, Children](scan)
        self._moving.clear()
        self._moving_old.clear()
        self._orphans.clear()

    def fill(self, part: Listing) -> None:
        """Take a part of a first scan (channel.Fill): its directories replace what the index
        held of them (what events put there before they were listed)."""
        self.dirs.update(at_rest(part))

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
        replays: list[int] | None = None  # positions of moves that are replays
        for i, (mask, cookie, path, src_path) in enumerate(items):
            if mask & _STAT_AFTER:
                below = None
                if mask & IN_MOVED_TO:
                    if cookie in self._orphans:
                        replays = replays or []
                        replays.append(i)
                    else:
                        below = self._moved_to(cookie, path, src_path)
                made = fresh.get(path, 0) & _MADE or mask & (IN_CREATE | IN_MOVED_TO)
                _named(fresh, mask, path, below)
                if made:
                    fresh[path] |= _MADE
            elif mask & _GONE_AFTER:
                was_fresh, below = _gone(fresh, mask, path)
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
            if not isinstance(children, dict):
                children = dirs[parent or "/"] = {} if children is None else thaw(children)
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
        if record is None:
            if was_fresh is None:
                return False
            record = UNKNOWN_DIR if was_fresh & IN_ISDIR else UNKNOWN_FILE
        moved: Index = {}
        if record & IS_DIR:
            for key in subtree_keys(self.dirs, path):
                moved[key[len(path):]] = self.dirs.pop(key)
        if cookie is not None:
            self._moving[cookie] = (record, moved, below)
        return True

    def _drop_below(self, path: str) -> bool:
        """Drop what the index holds below `path` (not held itself); whether it held any."""
        if path not in self.dirs:
            return False
        for key in subtree_keys(self.dirs, path):
            del self.dirs[key]
        return True

    def _moved_to(self, cookie: int, path: str, src_path: str | None) -> dict[str, int] | None:
        """Put a subtree taken out by its IN_MOVED_FROM back, at its new name; returns what was
        to be looked at below it (relative to it)."""
        if src_path is None:
            return None
        held = self._moving.pop(cookie, None) or self._moving_old.pop(cookie, None)
        if held is None:
            return None
        record, moved, below = held
        parent, name = split(path)
        children = self._open(parent)
        if children is None:
            children = self.dirs[parent] = {}
        children[name] = record
        for rel, kept in moved.items():
            self.dirs[path + rel] = kept
        return below
