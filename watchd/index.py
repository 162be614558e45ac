"""The compact per-watch index: every tracked path of a tree as the published events describe it.

The index is what makes exact recovery possible: after a loss (a kernel queue overflow, a
watcher that crashed or hung), the tree is scanned once and compared with it, and only the
differences are published (see watchd.diff and watchd.resync).

Layout, chosen for memory: one dict per directory, `{dir path: {name: record}}`, so a path
costs its base name (not its full path), a dict slot and one int. The record packs what tells
a changed file from an unchanged one and a moved file from a new one into a single int of at
most 90 bits (36 bytes as a Python int):

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

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

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

_S_IFMT, _S_IFDIR = stat.S_IFMT(0o170000), stat.S_IFDIR
_ORPHANS_MAX = 1024
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


def count(dirs: Dirs) -> int:
    """How many paths a snapshot or an index tracks."""
    return sum(map(len, dirs.values()))


def walk(dirs: Dirs, top: str) -> Iterator[tuple[str, int]]:
    """(path, record) of everything below `top` in dirs, parents before children."""
    stack = [top]
    while stack:
        parent = stack.pop()
        for name, record in dirs.get(parent, {}).items():
            path = join(parent, name)
            yield path, record
            if record & IS_DIR:
                stack.append(path)


def subtree_keys(dirs: Dirs, top: str) -> list[str]:
    """The directory keys of `top` and of the directories below it that dirs holds."""
    keys = [top] if top in dirs else []
    keys.extend(path for path, record in walk(dirs, top) if record & IS_DIR and path in dirs)
    return keys


# The records a batch of events brought: {path: record}, for each path it named (see Recorder).
Records = dict[str, int]
# A subtree taken out by an IN_MOVED_FROM: (record, {key relative to it: children}, {path
# relative to it: still to be looked at}).
_Held = tuple[int, Dirs, dict[str, int]]


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
    dirs: Dirs = field(default_factory=dict)
    # Subtrees taken out by an IN_MOVED_FROM, by cookie, until their IN_MOVED_TO puts them back
    # (see _Held). Kept for one more batch, as a pair may be split between two.
    _moving: dict[int, _Held] = field(default_factory=dict)
    _moving_old: dict[int, _Held] = field(default_factory=dict)
    # Cookies of moves whose source the index did not hold (replays, see apply), until their
    # IN_MOVED_TO comes.
    _orphans: dict[int, None] = field(default_factory=dict)

    def __len__(self) -> int:
        return count(self.dirs)

    def replace(self, dirs: Dirs) -> None:
        """Take a fresh scan as the index."""
        self.dirs = dirs
        self._moving.clear()
        self._moving_old.clear()
        self._orphans.clear()

    def apply(self, items: list[Item], records: Records) -> list[Item]:
        """Bring the index up to date with a batch of events about to be published, and the
        records the watcher took at its end (Recorder); returns the events to publish: `items`
        itself, but for the replays described below.

        No system call here: the events move and remove entries (a directory's subtree goes
        with it), and the paths they leave to be looked at (by Recorder's rules, which are
        these) take their state from `records` (a path missing there: unknown).

        Replays. The kernel events of changes made while a resync scanned come after its
        synthetic events, which already show those changes. Applied again, a create or a delete
        changes nothing, but a move does: its source is gone, and a client would replace what
        the synthetic events put at its destination with the nothing it took from the source.
        So a move whose source the index does not hold is not published: its destination is
        known already (or, if not, it is published as a create).
        """
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
                _named(fresh, mask, path, below)
            elif mask & _GONE_AFTER:
                was_fresh, below = _gone(fresh, mask, path)
                if not self._remove(path, cookie if mask & IN_MOVED_FROM else None, below,
                                    was_fresh) and mask & IN_MOVED_FROM:
                    self._orphans[cookie] = None
                    replays = replays or []
                    replays.append(i)
        if replays is not None:
            items = self._without_replays(items, replays)
        if fresh:
            self._record(fresh, records)
        if self._moving_old:
            self._moving_old.clear()
        if self._moving:
            self._moving_old, self._moving = self._moving, self._moving_old
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
                if name not in self.dirs.get(parent, {}):
                    out[i] = (IN_CREATE | (mask & IN_ISDIR), 0, path, None)
                    continue
            del out[i]
        return out

    def _record(self, fresh: dict[str, int], records: Records) -> None:
        """Set the state of the paths a batch named, as the watcher found them."""
        dirs, root = self.dirs, self.root
        for path, isdir in fresh.items():
            parent, _, name = path.rpartition("/")
            if not name or path == root:
                continue  # the root itself is not one of its entries
            record = records.get(path)
            if record is None:
                record = UNKNOWN_DIR if isdir else UNKNOWN_FILE
            children = dirs.get(parent or "/")
            if children is None:
                children = dirs[parent or "/"] = {}
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
        record = self.dirs.get(parent, {}).pop(name, None)
        if record is None:
            if was_fresh is None:
                return False
            record = UNKNOWN_DIR if was_fresh else UNKNOWN_FILE
        moved: Dirs = {}
        if record & IS_DIR:
            for key in subtree_keys(self.dirs, path):
                moved[key[len(path):]] = self.dirs.pop(key)
        if cookie is not None:
            self._moving[cookie] = (record, moved, below)
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
        self.dirs.setdefault(parent, {})[name] = record
        for rel, children in moved.items():
            self.dirs[path + rel] = children
        return below


def scan(root: str, real_root: str, *, recursive: bool,
         wanted: Callable[[str], bool] | None,
         prune: Callable[[str], bool] | None) -> Dirs:
    """The tree below real_root as an index reported under root, walked by file descriptor.

    Each directory is opened relative to its parent with O_NOFOLLOW, so that a link swapped in
    for a directory is recorded as a link, never followed out of the tree. Directories whose
    name `prune` matches (exclude) are neither recorded nor entered; other names are recorded
    when `wanted` accepts them (include/exclude, as events are), and directories are entered
    whatever their name. Raises OSError when the root itself cannot be opened.
    """
    dirs: Dirs = {}
    fd = os.open(real_root, _O_DIR)
    try:
        _scan_dir(fd, root, dirs, recursive=recursive, wanted=wanted, prune=prune)
    finally:
        os.close(fd)
    return dirs


def _scan_dir(fd: int, path: str, dirs: Dirs, *, recursive: bool,
              wanted: Callable[[str], bool] | None,
              prune: Callable[[str], bool] | None) -> None:
    # Depth first over a stack of open directories: fds are held only along the current
    # branch, and the caller's (the root's) is never closed here.
    stack = [(fd, path, _list(fd, path, dirs, wanted, prune))]
    while stack:
        top_fd, top, subdirs = stack[-1]
        if not recursive or not subdirs:
            stack.pop()
            if top_fd != fd:
                os.close(top_fd)
            continue
        name, dev, ino = subdirs.pop()
        try:
            child = os.open(name, _O_DIR, dir_fd=top_fd)
        except OSError:
            continue  # gone, replaced by a link, or unreadable: recorded as listed, not entered
        child_path = join(top, name)
        try:
            st = os.fstat(child)
            if (st.st_dev, st.st_ino) != (dev, ino):
                raise FileNotFoundError  # replaced since it was listed: its events say so
            grand = _list(child, child_path, dirs, wanted, prune)
        except OSError:
            os.close(child)
            continue
        stack.append((child, child_path, grand))


def _list(fd: int, path: str, dirs: Dirs, wanted: Callable[[str], bool] | None,
          prune: Callable[[str], bool] | None) -> list[tuple[str, int, int]]:
    """Record one directory's entries; returns its subdirectories as (name, dev, ino)."""
    children: dict[str, int] = {}
    subdirs: list[tuple[str, int, int]] = []
    with os.scandir(fd) as it:
        for entry in it:
            name = entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # gone since it was listed
            if stat.S_ISDIR(st.st_mode):
                if prune is not None and prune(name):
                    continue
                subdirs.append((name, st.st_dev, st.st_ino))
            if wanted is None or wanted(name):
                children[name] = pack(st)
    dirs[path] = children
    return subdirs
