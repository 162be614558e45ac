"""Walks that start from an event rather than from the root: a new directory, a directory listed
again because the tree could not account for it, and the resync after an overflow.
"""

from __future__ import annotations

import os

from watchd.inotify.flags import IN_CREATE, IN_Q_OVERFLOW
from watchd.inotify.frames import Frame
from watchd.inotify.reach import Reach
from watchd.inotify.settings import Settings
from watchd.inotify.unreadable import log
from watchd.inotify.walk import Walker
from watchd.inotify.watches import TreeEvent, Watches, dir_path

RESCAN_TRIES = 8  # batches in which a directory to list again may stay out of reach


class Rescanner:
    """Brings one tree's watches up to date with its directories, from a given directory.

    Holds no state of its own: what it works on is the tree's Watches.
    """

    __slots__ = ("_reach", "_settings", "_walker", "_watches")

    def __init__(self, watches: Watches, reach: Reach, walker: Walker, settings: Settings) -> None:
        self._watches = watches
        self._reach = reach
        self._walker = walker
        self._settings = settings

    def watch_new(
        self, parent_wd: int, parent: str, name: str, out: list[TreeEvent] | None, *,
        moved_in: bool = False,
    ) -> None:
        """Watch a directory that appeared under `parent`, and everything in it.

        moved_in: an IN_MOVED_TO that took no watches along; what the directory holds is
        reported even if it is watched already (see Known.moved_here).
        """
        hit = self._reach.dir_fd(parent, parent_wd)
        if hit is None:
            # Its path is out of date: see the tree's rules. Its own event was reported: the
            # listing of the parent watches it, and reports only what it holds.
            self._watches.rescan.setdefault(parent_wd, 0)
            self._watches.reported.setdefault(parent_wd, set()).add(name)
            return
        fd, dev = hit
        s = self._settings
        if s.quiet_parent:
            # Listing the new directory opens it, which the parent's watch would report.
            self._reach.set_mask(fd, parent_wd, s.narrow, os.getpid())
        top = Frame(fd, "", parent, dev, parent_wd, subdirs=[name],
                    fresh=True, own=False, widen=False, along=moved_in)
        self._walker.walk(top, out, visited=set() if s.follow else None, rescan_missing=True)
        if s.quiet_parent:
            self._reach.set_mask(fd, parent_wd, s.full, os.getpid())

    def run(self, out: list[TreeEvent], *, overflowed: bool, final: bool = True) -> bool:
        """List again the directories that may hold an unwatched subdirectory (see the rules).

        Returns whether the tree has overflowed: it had (`overflowed`), or a directory stayed
        out of reach too long, and an IN_Q_OVERFLOW is in `out`. Not `final` (a rename in the
        middle of a batch may have brought them within reach): one still out of reach is
        left as it was, for the end of the batch.
        """
        watches = self._watches
        pending, watches.rescan = watches.rescan, {}
        emit = out if self._settings.synthetic else None
        for wd, tries in pending.items():
            prefix = watches.path_of.get(wd)
            if prefix is None:
                continue  # gone: nothing of it to account for
            hit = self._reach.dir_fd(prefix, wd)
            if hit is None:
                if not final:
                    watches.rescan[wd] = tries
                elif tries + 1 < RESCAN_TRIES:
                    watches.rescan[wd] = tries + 1
                elif not overflowed:
                    # Out of reach for too long: say that events may be lost, so that the
                    # caller resyncs and subscribers rescan, rather than stay silent.
                    log.warning("%s: cannot reach %s to look for new directories; "
                                "resynchronizing", self._reach.root, dir_path(prefix))
                    overflowed = True
                    out.append(TreeEvent(IN_Q_OVERFLOW, 0, "", None, -1, b"", 0))
                continue
            self._rescan_one(wd, prefix, hit, emit)
        return overflowed

    def _rescan_one(self, wd: int, prefix: str, hit: tuple[int, int],
                    out: list[TreeEvent] | None) -> None:
        """List a watched directory again and watch what it holds unwatched."""
        path_fd, dev = hit
        s = self._settings
        reach = self._reach
        quiet: list[tuple[int, int]] = []  # (fd, wd) of the watches that would see the listing
        if s.quiet:
            quiet.append((path_fd, wd))
            parent = prefix[: prefix.rstrip("/").rfind("/") + 1]
            parent_wd = self._watches.wd_of.get(parent)
            if s.quiet_parent and parent_wd is not None:
                up = reach.dir_fd(parent, parent_wd)
                if up is not None:
                    quiet.append((up[0], parent_wd))
                    # Opening the parent may have closed the batch's fds, path_fd among them;
                    # asked again, it is found (or opened again) and the parent's stays open.
                    again = reach.dir_fd(prefix, wd)
                    if again is None:
                        self._watches.rescan.setdefault(wd, 0)  # out of reach: next batch
                        return
                    path_fd, dev = again
                    quiet[0] = (path_fd, wd)
        pid = os.getpid()
        for qfd, qwd in quiet:
            reach.set_mask(qfd, qwd, s.narrow, pid)
        reported = self._watches.reported.pop(wd, None)
        # Only the subdirectories matter here: its files were reported by the kernel.
        subdirs = self._walker.entries(path_fd, prefix, wd, None, None)
        if subdirs:
            top = Frame(path_fd, "", prefix, dev, wd, subdirs=subdirs,
                        fresh=False, own=False, widen=False)
            self._walker.walk(top, out, visited=None, reported=reported or ())
        for qfd, qwd in quiet:
            reach.set_mask(qfd, qwd, s.full, pid)

    def resync(self) -> list[TreeEvent]:
        """Watch the directories that appeared below the root, forget those that vanished.

        For a tree that still has its root (see Tree.resync).
        """
        out: list[TreeEvent] = []
        s = self._settings
        watches, reach, walker = self._watches, self._reach, self._walker
        root_wd = watches.root_wd
        emit = out if s.synthetic and s.report & IN_CREATE else None
        try:
            fd = reach.open_root()
            st = os.fstat(fd)
        except OSError:
            return out  # the root's own events say what became of it
        seen: set[int] = {root_wd}
        walker.unwatched = 0
        walker.unreadable.clear()
        root_prefix = reach.root_prefix
        top = Frame(fd, "", root_prefix, st.st_dev, root_wd,
                    subdirs=walker.entries(fd, root_prefix, root_wd, None, st),
                    fresh=False, own=True, widen=False)
        walker.walk(top, emit, visited=walker.visited_set(st), seen=seen)
        for wd in [wd for wd in watches.path_of if wd not in seen]:
            watches.rm(wd)
        reach.close_batch_fds()
        return out
