"""The directories a walk meets that its inotify fd already watches: adopted at their path by a
resync, taken over where they moved before their rename's events were read, or left alone
(reached twice: a bind mount, another tree on the fd).
"""

from __future__ import annotations

import os

from watchd.inotify import fs
from watchd.inotify._binding import InotifyFd
from watchd.inotify.flags import IN_MASK_ADD
from watchd.inotify.reach import Reach
from watchd.inotify.settings import Settings
from watchd.inotify.watches import Watches


class Known:
    """What one tree's walks do with a directory the fd already watches (see Walker._watch).

    Mutable (the watches to drop when a walk ends): not a value.
    """

    __slots__ = ("_ino", "_path_of", "_reach", "_settings", "_stale", "_watches", "_wd_of")

    def __init__(self, ino: InotifyFd, watches: Watches, reach: Reach, settings: Settings) -> None:
        self._ino = ino
        self._watches = watches
        self._path_of, self._wd_of = watches.path_of, watches.wd_of
        self._reach = reach
        self._settings = settings
        # During a walk: wd -> old prefix of the watches below directories that moved here,
        # not met yet (see moved_here).
        self._stale: dict[int, str] = {}

    def begin(self) -> None:
        """A walk starts."""
        self._stale.clear()

    def adopt(self, fd: int, prefix: str, pid: int, st: os.stat_result) -> int | None:
        """The wd of a directory this fd already watches; one of ours gets its new path."""
        # Adding bits it already has returns the existing wd and changes nothing.
        wd = self._ino.add_watch_raw(fs.proc_path(fd, pid), self._settings.narrow | IN_MASK_ADD)
        if wd < 0:
            return None
        old = self._path_of.get(wd)
        if old is None:
            return None  # watched by someone else on this fd
        if old != prefix and self._wd_of.get(old) == wd:
            del self._wd_of[old]
        self._watches.remember(wd, prefix, st)
        return wd

    def moved_here(self, fd: int, prefix: str, pid: int, along: bool,
                   st: os.stat_result) -> int | None:
        """The wd of a directory that a walk (not a resync) meets already watched by this tree.

        Watched at another path that no longer leads to it, it has moved here, and its rename's
        events are not read yet, or will never come (this directory was not watched when it
        moved in): its watch moves here at once, and the walk reports what it holds, as for a
        new directory. The watches below it move as the walk meets them; those it does not
        meet have left it since, and are removed when the walk ends (see end): at the old
        paths their events would name what a client no longer has. Otherwise (reached by both
        paths: a bind mount) it is skipped. At its own path it is skipped too, unless
        `along`: it came with a parent that moved here, or it moved in itself, reported by an
        IN_MOVED_TO after a listing had reported it, which a client applies as a bare
        directory that replaces the tree the listing described.
        """
        s = self._settings
        # Adding bits it already has returns the existing wd and changes nothing.
        wd = self._ino.add_watch_raw(fs.proc_path(fd, pid), s.narrow | IN_MASK_ADD)
        old = self._path_of.get(wd) if wd >= 0 else None
        if old is not None:
            self._watches.identities.identify(wd, st)
        if old is None or (old == prefix and not along) or (
                old != prefix and self._reach.leads_to(old, wd)):
            return None
        if old != prefix:
            stale = self._stale
            if stale.pop(wd, None) is None:  # not below one that moved here in this walk
                path_of = self._path_of
                stale.update((d, path_of[d]) for d in self._watches.below(old) if d != wd)
            self._watches.relocate(wd, old, prefix)
        if s.quiet:
            self._reach.set_mask(fd, wd, s.narrow, pid)  # listed as new: widened when left
        return wd

    def end(self) -> None:
        """The walk is over: remove the watches below directories that moved here that it did
        not meet."""
        if not self._stale:
            return
        path_of = self._path_of
        self._watches.rm_all([wd for wd, p in self._stale.items() if path_of.get(wd) == p])
        self._stale.clear()
