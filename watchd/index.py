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

Both ends build records with `pack`: the watcher when it scans, the daemon when it applies
events (same interpreter, and the hashes of int tuples are not randomized, so the two agree).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Generator, Iterator
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


_Held = tuple[int, Dirs, dict[str, int]]


@dataclass(slots=True)
class TreeIndex:
    """One watch's index, kept up to date by the events the daemon publishes for it."""

    root: str
    dirs: Dirs = field(default_factory=dict)
    # Subtrees taken out by an IN_MOVED_FROM, by cookie, until their IN_MOVED_TO puts them back:
    # (record, {key relative to the moved directory: children}, {path relative to it: to be
    # looked at}). Kept for one more batch, as a pair may be split between two.
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

    def apply(self, items: list[Item], *, complete: bool = True) -> list[Item]:
        """Bring the index up to date with a batch of events about to be published; returns the
        events to publish: `items` itself, but for the replays described below (only in a
        `complete` index: while a first scan comes in parts, a source the index lacks is one
        not listed yet).

        Each path named by a create, modify, attrib, close_write or moved_to is looked at once,
        at the end of the batch, whatever number of events named it: a burst of creates and
        deletes in one batch costs no system call at all. Looking at it before the events go
        out keeps the index no newer than what a client reading after them can see.

        Replays. The kernel events of changes made while a resync scanned come after its
        synthetic events, which already show those changes. Applied again, a create or a delete
        changes nothing, but a move does: its source is gone, and a client would replace what
        the synthetic events put at its destination with the nothing it took from the source.
        So a move whose source the index does not hold is not published: its destination is
        known already (or, if not, it is published as a create).
        """
        fresh: dict[str, int] = {}  # path -> IN_ISDIR or 0, to look at
        replays: list[int] | None = None  # positions of moves that are replays
        for i, (mask, cookie, path, src_path) in enumerate(items):
            if mask & _STAT_AFTER:
                if mask & IN_MOVED_TO:
                    if cookie in self._orphans:
                        replays = replays or []
                        replays.append(i)
                    else:
                        self._moved_to(cookie, path, src_path, fresh)
                fresh[path] = mask & IN_ISDIR
            elif mask & _GONE_AFTER:
                was_fresh = fresh.pop(path, None)
                below: dict[str, int] = {}
                if mask & IN_ISDIR and fresh:
                    # What is still to be looked at below a directory that goes goes with it
                    # (to be looked at under its new name, if it moved within the tree).
                    prefix = path + "/"
                    for key in [k for k in fresh if k.startswith(prefix)]:
                        below[key[len(path):]] = fresh.pop(key)
                if not self._remove(path, cookie if mask & IN_MOVED_FROM else None, below,
                                    was_fresh) and mask & IN_MOVED_FROM and complete:
                    self._orphans[cookie] = None
                    replays = replays or []
                    replays.append(i)
        if replays is not None:
            items = self._without_replays(items, replays)
        if fresh:
            self._look(fresh)
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

    def _look(self, fresh: dict[str, int]) -> None:
        """Record the current state of paths that events named."""
        dirs = self.dirs
        for path, isdir in fresh.items():
            parent, name = split(path)
            if parent == path or not name:
                continue  # the root itself is not one of its entries
            try:
                record = pack(os.lstat(path))
            except OSError:
                record = UNKNOWN_DIR if isdir else UNKNOWN_FILE
            children = dirs.get(parent)
            if children is None:
                children = dirs[parent] = {}
            children[name] = record
            if record & IS_DIR and path not in dirs:
                dirs[path] = {}

    def _remove(self, path: str, cookie: int | None, below: dict[str, int],
                was_fresh: int | None) -> bool:
        """Take a path (and what is below it) out; False when the index does not hold it.

        was_fresh: the path was named earlier in this batch (IN_ISDIR or 0) and is yet to be
        looked at, so it is known even if not recorded yet.
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

    def _moved_to(self, cookie: int, path: str, src_path: str | None,
                  fresh: dict[str, int]) -> None:
        """Put a subtree taken out by its IN_MOVED_FROM back, at its new name."""
        if src_path is None:
            return
        held = self._moving.pop(cookie, None) or self._moving_old.pop(cookie, None)
        if held is None:
            return
        record, moved, below = held
        for rel, isdir in below.items():
            fresh[path + rel] = isdir
        parent, name = split(path)
        self.dirs.setdefault(parent, {})[name] = record
        for rel, children in moved.items():
            self.dirs[path + rel] = children


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
    for part in scan_parts(root, real_root, recursive=recursive, wanted=wanted, prune=prune):
        dirs.update(part)
    return dirs


def scan_parts(root: str, real_root: str, *, recursive: bool,
               wanted: Callable[[str], bool] | None,
               prune: Callable[[str], bool] | None,
               part_size: int = 1 << 62) -> Generator[Dirs, None, None]:
    """scan, in parts: each part holds whole directories, about part_size entries in all
    (the last part may be empty). A caller can do other work between two parts, as the
    watcher does while it fills a watch's first index (see Watcher.fill_step).

    Open directories are held only along the current branch, and closed when the generator
    is closed before its end. Raises OSError (at the first part) when the root cannot be
    opened.
    """
    fd = os.open(real_root, _O_DIR)
    dirs: Dirs = {}
    stack: list[tuple[int, str, list[tuple[str, int, int]]]] = []
    try:
        # Depth first over a stack of open directories.
        stack.append((fd, root, _list(fd, root, dirs, wanted, prune)))
        entries = len(dirs[root])
        while stack:
            if entries >= part_size:
                yield dirs
                dirs, entries = {}, 0
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
            entries += len(dirs[child_path])
            stack.append((child, child_path, grand))
        yield dirs
    finally:
        for top_fd, _, _ in stack:
            if top_fd != fd:
                os.close(top_fd)
        os.close(fd)


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
