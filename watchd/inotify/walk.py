"""Walking a directory tree by fd: each directory watched, then listed, then descended into.

Each directory is opened relative to its parent's fd with O_NOFOLLOW and O_PATH, watched
through that fd (/proc/<pid>/fd/N), and listed from a second fd opened for reading just for
that. The walk holds at most MAX_HELD_FDS fds of its deepest directories; a shallower one is
opened again from its nearest open ancestor when the walk comes back to it.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Collection

from watchd.inotify import fs
from watchd.inotify._binding import InotifyFd
from watchd.inotify.errors import DirectoryBudgetError, WatchLimitError, error_for
from watchd.inotify.flags import IN_CREATE, IN_MASK_CREATE
from watchd.inotify.frames import MAX_HELD_FDS, Frame, reopen
from watchd.inotify.known import Known
from watchd.inotify.listdir import list_dir
from watchd.inotify.reach import Reach
from watchd.inotify.settings import Settings
from watchd.inotify.unreadable import Unreadable
from watchd.inotify.watches import TreeEvent, Watches, dir_path, synthetic_create

# MAX_HELD_FDS is named here too: a walk's limit, which the tests read from this module.
__all__ = ["MAX_HELD_FDS", "PROGRESS_EVERY", "Walker"]

PROGRESS_EVERY = 4096  # directories between two progress reports of a long scan


@dataclasses.dataclass(slots=True)
class _Walk:
    """One walk's state (see Walker.walk). Mutable, and private to it: not a value."""

    frames: list[Frame]
    out: list[TreeEvent] | None
    visited: set[tuple[int, int]] | None
    seen: set[int] | None
    rescan_missing: bool
    reported: Collection[str]
    announce: bool
    pid: int
    counting: bool = False  # past the watch limit: only count what stays unwatched
    added: int = 0


class Walker:
    """Watches and lists the directories below one already open, for one tree.

    Mutable (counters, a cache of file system types): not a value.
    """

    __slots__ = ("_fs_types", "_ino", "_known", "_path_of", "_reach", "_settings", "_watches",
                 "_wd_of", "limit_error", "max_directories", "unreadable", "unwatched")

    def __init__(self, ino: InotifyFd, watches: Watches, reach: Reach, settings: Settings) -> None:
        self._ino = ino
        self._watches = watches
        self._path_of, self._wd_of = watches.path_of, watches.wd_of  # one lookup less per dir
        self._reach = reach
        self._settings = settings
        self._fs_types = watches.fs_types  # st_dev -> statfs f_type, cleared by the Watches
        self._known = Known(ino, watches, reach, settings)  # directories the fd watches already
        self.unreadable = Unreadable(reach.root)
        self.unwatched = 0  # directories left unwatched past the watch limit
        self.limit_error: WatchLimitError | None = None
        # The tree's share of the watch limit: past it, directories stay unwatched exactly as
        # past the kernel's limit (limit_error, unwatched), so one tree cannot starve the others.
        self.max_directories: int | None = None

    def fs_type(self, dev: int, fd: int) -> int:
        """The statfs f_type of device `dev` (of the file open as `fd`), 0 if unknown; cached."""
        kind = self._fs_types.get(dev)
        if kind is None:
            try:
                kind = fs.fs_type(fd)
            except OSError:
                kind = 0
            self._fs_types[dev] = kind
        return kind

    def visited_set(self, st: os.stat_result) -> set[tuple[int, int]] | None:
        """What a walk from the directory of `st` starts with, to stop at links that loop."""
        return {(st.st_dev, st.st_ino)} if self._settings.follow else None

    def walk(
        self,
        top: Frame,
        out: list[TreeEvent] | None,
        *,
        visited: set[tuple[int, int]] | None,
        seen: set[int] | None = None,
        rescan_missing: bool = False,
        reported: Collection[str] = (),
    ) -> None:
        """Watch and list every directory below `top`, depth first, each watched before listed.

        `top` is open and listed already. With `seen` (a resync), directories this fd already
        watches are taken over at their current path and recorded there, and each new one is
        reported itself (its parent is not new); otherwise they are skipped. With
        rescan_missing, a subdirectory of the top that has vanished gets the top listed again
        at the end of the batch. `reported`: subdirectories of the top whose own create was
        reported already (its kernel event): watched and listed, but not reported again.
        """
        # A directory newly watched below one that is not new is reported itself, before what
        # it holds: its kernel create may come after that, or not at all (the queue full).
        announce = out is not None and bool(self._settings.report & IN_CREATE)
        w = _Walk([top], out, visited, seen, rescan_missing, reported, announce, os.getpid())
        if top.dev not in self._fs_types:  # forgotten at a distrust(): whether leaves are listed
            self.fs_type(top.dev, top.fd)
        self._known.begin()
        try:
            self._walk_frames(w)
            self._known.end()
        finally:
            for f in w.frames:  # left by an exception: nothing may keep their fds
                if f.own and f.fd >= 0:
                    os.close(f.fd)
                    f.fd = -1

    def _walk_frames(self, w: _Walk) -> None:
        """The loop of walk, over its stack of frames."""
        frames = w.frames
        while frames:
            f = frames[-1]
            if not f.subdirs:
                frames.pop()
                self._leave(f, frames, w.pid)
                continue
            name = f.subdirs.pop()
            if f.fd < 0 and not reopen(frames, follow=self._settings.follow):
                self._out_of_reach(f, name, w.announce)
                continue
            self._visit(w, f, name)

    def _out_of_reach(self, f: Frame, name: str, announce: bool) -> None:
        """A frame's directory was renamed or removed meanwhile: its rename's events will
        place it; meanwhile it is listed again, wherever it is then."""
        if f.wd >= 0:
            self._watches.rescan.setdefault(f.wd, 0)
            if announce and f.fresh:
                # Its listing reported the subdirectories left: not to be again.
                self._watches.reported.setdefault(f.wd, set()).update(f.subdirs, [name])
        f.subdirs.clear()

    def _visit(self, w: _Walk, f: Frame, name: str) -> None:
        """Watch and list the subdirectory `name` of frame `f`; a frame for it if it has
        subdirectories of its own (or a mask to widen when left)."""
        prefix = f.prefix + name + "/"
        try:
            # O_PATH: opening it is not reported to the parent's watch; entries opens it to list.
            fd = os.open(name, fs.PATH_FLAGS_FOLLOW if self._settings.follow else fs.PATH_FLAGS,
                         dir_fd=f.fd)
        except OSError as e:
            if e.errno == errno.ENOENT:
                if w.rescan_missing and f is w.frames[0] and f.wd >= 0:
                    self._watches.rescan.setdefault(f.wd, 0)
            elif e.errno not in (errno.ENOTDIR, errno.ELOOP):
                self.unreadable.record(prefix, e)
            return  # ENOTDIR: no longer a directory, or a symbolic link now
        try:
            st = os.fstat(fd)
            watched = (None if self._passed_by(w, f, fd, st)
                       else self._watch(w, f, name, prefix, fd=fd, st=st))
            if watched is None:
                os.close(fd)
                return
            wd, fresh = watched
            subdirs = self.entries(fd, prefix, wd, w.out if fresh and wd >= 0 else None, st)
        except OSError as e:  # fstat, statfs: EMFILE, EIO... this directory's problem
            os.close(fd)
            self.unreadable.record(prefix, e)
            return
        except BaseException:
            os.close(fd)
            raise
        widen = self._settings.quiet and fresh and wd >= 0
        if not subdirs and not widen:
            os.close(fd)  # a leaf: done with it (saves a frame per directory)
            return
        frames = w.frames
        frames.append(Frame(fd, name, prefix, st.st_dev, wd, subdirs=subdirs, fresh=fresh,
                            own=True, widen=widen, along=fresh))
        if len(frames) > MAX_HELD_FDS + 1:
            # Keep the deepest directories open; the top stays open too (see reopen).
            spare = frames[-MAX_HELD_FDS - 1]
            if spare.fd >= 0 and spare.own:
                os.close(spare.fd)
                spare.fd = -1

    def _passed_by(self, w: _Walk, f: Frame, fd: int, st: os.stat_result) -> bool:
        """Whether a walk leaves a directory alone: a pseudo file system mounted inside the
        tree (/proc and the like), or one met already through a link that loops."""
        dev = st.st_dev
        # The type of each file system met is kept (see entries), whether or not it is refused.
        if (dev != f.dev and self.fs_type(dev, fd) in fs.PSEUDO_FS
                and self._settings.real_fs_only):
            return True
        if w.visited is not None:
            key = (dev, st.st_ino)
            if key in w.visited:
                return True
            w.visited.add(key)
        return False

    def _watch(self, w: _Walk, f: Frame, name: str, prefix: str, *, fd: int,
               st: os.stat_result) -> tuple[int, bool] | None:
        """The watch of a walk's directory, open as `fd`, and whether it is new to the caller
        (everything it holds to report); wd -1 past the watch limit; None: skip it."""
        seen = w.seen
        known = self._wd_of.get(prefix) if seen is not None else None
        if known is not None and self._reach.is_watch(fd, known, st):
            # A resync meets a directory it already watches: it keeps its watch, whatever
            # limit stops new ones (they would otherwise be dropped below).
            seen.add(known)  # type: ignore[union-attr]  # seen is set: see above
            return known, False
        if w.counting:
            self.unwatched += 1
            return -1, True
        wd = self._add(fd, prefix, w.pid, st)
        if wd >= 0:
            w.added += 1
            if seen is not None:
                seen.add(wd)
            if (w.announce and not f.fresh and w.out is not None
                    and not (f is w.frames[0] and name in w.reported)):
                self._announce(f.wd, name, prefix, w.out)
            progress = self._settings.progress
            if progress is not None and not w.added % PROGRESS_EVERY:
                progress(len(self._path_of))
            return wd, True
        if wd == -errno.ENOSPC:
            w.counting = True  # past the watch limit: only count what stays unwatched
            self.unwatched += 1
            return -1, True
        if wd == -errno.EEXIST:
            adopted = (self._known.adopt(fd, prefix, w.pid, st) if seen is not None
                       else self._known.moved_here(fd, prefix, w.pid, f.along, st))
            if adopted is None:
                return None  # already watched on this fd (a bind mount, another tree)
            if seen is not None:
                seen.add(adopted)
            return adopted, seen is None  # see Known.moved_here
        self.unreadable.record(prefix, -wd)
        return None

    def _announce(self, parent_wd: int, name: str, prefix: str, out: list[TreeEvent]) -> None:
        """Report a directory found unwatched under one already watched; its kernel create,
        if it comes in the next read, is then a duplicate (see the tree's rules)."""
        self._watches.synth_cur.setdefault(parent_wd, set()).add(name)
        out.append(synthetic_create(prefix[:-1], True))

    def _add(self, fd: int, prefix: str, pid: int, st: os.stat_result) -> int:
        """Watch a directory of a walk, open as `fd`, and record it at `prefix`; or -errno.

        The one place where a walk adds a watch. Narrow, and refusing an inode this fd already
        watches (-EEXIST). Past the watch limit (-ENOSPC), limit_error says so.
        """
        budget = self.max_directories
        if budget is not None and len(self._path_of) >= budget:
            if self.limit_error is None:
                self.limit_error = DirectoryBudgetError(budget, dir_path(prefix))
            return -errno.ENOSPC  # past the tree's own budget, as past the kernel's limit
        wd = self._ino.add_watch_raw(fs.proc_path(fd, pid), self._settings.narrow | IN_MASK_CREATE)
        if wd >= 0:
            self._watches.remember(wd, prefix, st)
        elif wd == -errno.ENOSPC and self.limit_error is None:
            error = error_for(errno.ENOSPC, dir_path(prefix), "inotify_add_watch")
            assert isinstance(error, WatchLimitError)
            self.limit_error = error
        return wd

    def _leave(self, f: Frame, frames: list[Frame], pid: int) -> None:
        """Done with a frame: widen its watch where it was added narrow, and close it."""
        if f.widen and (f.fd >= 0 or reopen([*frames, f], follow=self._settings.follow)):
            self._reach.set_mask(f.fd, f.wd, self._settings.full, pid)
        if f.own and f.fd >= 0:
            os.close(f.fd)
            f.fd = -1

    def entries(
        self,
        fd: int,
        prefix: str,
        wd: int,
        out: list[TreeEvent] | None,
        st: os.stat_result | None,
    ) -> list[str]:
        """The subdirectories of the directory open as `fd`; its entries reported into `out`."""
        s = self._settings
        if (out is None and st is not None and st.st_nlink == 2 and s.skip_leaves
                and self._fs_types.get(st.st_dev) in fs.LEAF_COUNT_FS):
            return []  # no subdirectory, and no entry to report: no need to list it
        names: set[str] | None = None
        if out is not None and s.report & IN_CREATE:
            names = self._watches.synth_cur.setdefault(wd, set())
        return list_dir(fd, prefix, follow=s.follow, prune=s.prune, names=names, out=out,
                        unreadable=self.unreadable)
