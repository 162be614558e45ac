"""The record of a path, and what the watcher records of a batch of events for an index.

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

import os
import stat
from dataclasses import dataclass, field

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
STAT_AFTER = IN_CREATE | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO
GONE_AFTER = IN_DELETE | IN_MOVED_FROM

_S_IFMT, _S_IFDIR = stat.S_IFMT(0o170000), stat.S_IFDIR

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

# The records a batch of events brought: {path: record}, for each path it named (see Recorder).
Records = dict[str, int]

def named(fresh: dict[str, int], mask: int, path: str, below: dict[str, int] | None) -> None:
    """A path named by a create, modify, attrib, close_write or moved_to: to be looked at,
    with what was to be looked at below it under its old name (below, for a moved_to)."""
    if below:
        for rel, isdir in below.items():
            fresh[path + rel] = isdir
    fresh[path] = mask & IN_ISDIR


def gone(fresh: dict[str, int], mask: int, path: str) -> tuple[int | None, dict[str, int]]:
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
            if mask & STAT_AFTER:
                below = None
                if mask & IN_MOVED_TO and (moving or moving_old):
                    below = moving.pop(cookie, None) or moving_old.pop(cookie, None)
                named(fresh, mask, path, below)
            elif mask & GONE_AFTER and fresh:
                _, below = gone(fresh, mask, path)
                if below and mask & IN_MOVED_FROM:
                    moving[cookie] = below
        moving_old.clear()
        self._moving_old, self._moving = moving, moving_old
        return fresh
