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
from collections.abc import Callable, Collection

from watchd.inotify import fs
from watchd.inotify._binding import InotifyFd
from watchd.inotify.errors import DirectoryBudgetError, WatchLimitError, error_for
from watchd.inotify.flags import (
    IN_ACCESS,
    IN_ALL_EVENTS,
    IN_CLOSE_NOWRITE,
    IN_CREATE,
    IN_DELETE_SELF,
    IN_EXCL_UNLINK,
    IN_MASK_ADD,
    IN_MASK_CREATE,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONESHOT,
    IN_ONLYDIR,
    IN_OPEN,
)
from watchd.inotify.reach import Reach
from watchd.inotify.unreadable import Unreadable
from watchd.inotify.watches import TreeEvent, Watches, dir_path, synthetic_create

# The bits the tree itself needs, whatever the caller asked for.
_BOOKKEEPING = IN_CREATE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
# Events that listing a directory causes on it and on its parent's watch.
_LISTING_NOISE = IN_OPEN | IN_ACCESS | IN_CLOSE_NOWRITE
PROGRESS_EVERY = 4096  # directories between two progress reports of a long scan
# Directories a walk holds open at once: its deepest ones (one fd per level below the
# walk's start). Shallower ones are closed and opened again from an ancestor when needed.
MAX_HELD_FDS = 64


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """What a tree watches and reports, and the watch masks that follow from it."""

    report: int  # the event bits reported to the caller
    full: int  # the mask of a watch
    narrow: int  # `full` less what listing a directory causes, while it is listed (quiet)
    quiet: bool
    quiet_parent: bool
    skip_leaves: bool  # a directory that cannot hold a subdirectory need not be listed
    recursive: bool
    synthetic: bool
    follow: bool
    real_fs_only: bool
    prune: Callable[[str], bool] | None
    progress: Callable[[int], None] | None  # told the directories watched, during a scan

    @classmethod
    def of(cls, mask: int, *, recursive: bool, prune: Callable[[str], bool] | None,
           follow_symlinks: bool, synthetic: bool, quiet_listing: bool, quiet_parent: bool,
           progress: Callable[[int], None] | None, real_fs_only: bool) -> Settings:
        """The settings of Tree(..., mask, ...) (see its arguments)."""
        report = int(mask) & IN_ALL_EVENTS
        # ONESHOT and MASK_ADD would break the bookkeeping; the tree manages its own masks.
        wanted = int(mask) & ~(IN_ONESHOT | IN_MASK_ADD | IN_MASK_CREATE)
        # No IN_DONT_FOLLOW: watches are added through /proc/<pid>/fd/N, a link the kernel
        # must follow to reach the directory, which the fd already pins.
        full = wanted | _BOOKKEEPING | IN_ONLYDIR | IN_EXCL_UNLINK
        quiet = quiet_listing and bool(report & _LISTING_NOISE)
        # The parent's watch would report the listing of a new directory too; narrowing it for
        # that moment hides it (quiet_parent=False keeps it, as the `inotify` package does).
        quiet_parent = quiet and quiet_parent
        return cls(
            report=report,
            full=full,
            narrow=full & ~_LISTING_NOISE if quiet else full,
            quiet=quiet,
            quiet_parent=quiet_parent,
            # Unless the listing is to be seen: the parent's watch reports it when it is not
            # narrowed. (Nor when links are followed: a link to a directory does not count in
            # the link count; see Walker.entries.)
            skip_leaves=not follow_symlinks and (quiet_parent or not report & _LISTING_NOISE),
            recursive=recursive,
            synthetic=synthetic,
            follow=follow_symlinks,
            real_fs_only=real_fs_only,
            prune=prune,
            progress=progress,
        )


class Frame:
    """One directory of a walk: open (fd >= 0, or closed to spare fds), with subdirs to visit.

    Mutable, and private to one walk: not a value.
    """

    __slots__ = ("along", "dev", "fd", "fresh", "name", "own", "prefix", "subdirs", "wd",
                 "widen")

    def __init__(self, fd: int, name: str, prefix: str, dev: int, wd: int, *,
                 subdirs: list[str], fresh: bool, own: bool, widen: bool,
                 along: bool = False) -> None:
        self.fd = fd
        self.name = name  # its name in the parent frame's directory
        self.prefix = prefix
        self.dev = dev
        self.wd = wd  # < 0: not watched (past the watch limit)
        self.subdirs = subdirs  # names still to visit, visited from the end
        self.fresh = fresh  # watched by this walk: everything it holds is new
        self.own = own  # the walk closes fd when it leaves the frame
        self.widen = widen  # added narrow: set the full mask when leaving the frame
        # New to the caller as a whole: a subdirectory already watched at its path is listed
        # and reported again, with all it holds (see Walker._moved_here).
        self.along = along


class Walker:
    """Watches and lists the directories below one already open, for one tree.

    Mutable (counters, a cache of file system types): not a value.
    """

    __slots__ = ("_fs_types", "_ino", "_path_of", "_reach", "_settings", "_stale", "_watches",
                 "_wd_of", "limit_error", "max_directories", "unreadable", "unwatched")

    def __init__(self, ino: InotifyFd, watches: Watches, reach: Reach, settings: Settings) -> None:
        self._ino = ino
        self._watches = watches
        self._path_of, self._wd_of = watches.path_of, watches.wd_of  # one lookup less per dir
        self._reach = reach
        self._settings = settings
        self._fs_types: dict[int, int] = {}  # st_dev -> statfs f_type
        # During a walk: wd -> old prefix of the watches below directories that moved here,
        # not met yet (see _moved_here).
        self._stale: dict[int, str] = {}
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
            if kind in fs.LOCAL_TIME_FS:
                self._watches.timely.add(dev)
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
        frames = [top]
        self._stale.clear()
        try:
            self._walk_frames(frames, out, visited, seen, rescan_missing, reported=reported)
            if self._stale:
                self._drop_stale()
        finally:
            for f in frames:  # left by an exception: nothing may keep their fds
                if f.own and f.fd >= 0:
                    os.close(f.fd)
                    f.fd = -1

    def _walk_frames(
        self,
        frames: list[Frame],
        out: list[TreeEvent] | None,
        visited: set[tuple[int, int]] | None,
        seen: set[int] | None,
        rescan_missing: bool,
        *,
        reported: Collection[str],
    ) -> None:
        """The loop of walk, over its stack of frames."""
        top = frames[0]
        s = self._settings
        add = self._add
        # O_PATH: opening it is not reported to the parent's watch; entries opens it to list.
        flags = fs.PATH_FLAGS_FOLLOW if s.follow else fs.PATH_FLAGS
        real_fs_only = s.real_fs_only
        quiet = s.quiet
        progress = s.progress
        path_of = self._path_of
        rescan = self._watches.rescan
        record = self.unreadable.record
        # A directory newly watched below one that is not new is reported itself, before what
        # it holds: its kernel create may come after that, or not at all (the queue full).
        announce = out is not None and bool(s.report & IN_CREATE)
        pid = os.getpid()
        counting = False  # past the watch limit: only count what stays unwatched
        added = 0
        while frames:
            f = frames[-1]
            if not f.subdirs:
                frames.pop()
                self._leave(f, frames, pid)
                continue
            name = f.subdirs.pop()
            if f.fd < 0 and not self._reopen(frames):
                # Renamed or removed meanwhile: its rename's events will place it; meanwhile
                # list it again, wherever it is then.
                if f.wd >= 0:
                    rescan.setdefault(f.wd, 0)
                    if announce and f.fresh:
                        # Its listing reported the subdirectories left: not to be again.
                        self._watches.reported.setdefault(f.wd, set()).update(f.subdirs, [name])
                f.subdirs.clear()
                continue
            prefix = f.prefix + name + "/"
            try:
                fd = os.open(name, flags, dir_fd=f.fd)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    if rescan_missing and f is top and f.wd >= 0:
                        rescan.setdefault(f.wd, 0)
                elif e.errno not in (errno.ENOTDIR, errno.ELOOP):
                    record(prefix, e)
                continue  # ENOTDIR: no longer a directory, or a symbolic link now
            try:
                st = os.fstat(fd)
                dev = st.st_dev
                if dev != f.dev and (self.fs_type(dev, fd) in fs.PSEUDO_FS and real_fs_only):
                    os.close(fd)
                    continue  # /proc and the like, mounted inside the tree
                if visited is not None:
                    key = (dev, st.st_ino)
                    if key in visited:
                        os.close(fd)
                        continue
                    visited.add(key)
                fresh = True
                known = self._wd_of.get(prefix) if seen is not None else None
                if known is not None and self._reach.is_watch(fd, known, st):
                    # A resync meets a directory it already watches: it keeps its watch,
                    # whatever limit stops new ones (they would otherwise be dropped below).
                    seen.add(known)  # type: ignore[union-attr]  # seen is set: see above
                    wd, fresh = known, False
                elif counting:
                    wd = -1
                    self.unwatched += 1
                else:
                    wd = add(fd, prefix, pid, st)
                    if wd >= 0:
                        added += 1
                        if seen is not None:
                            seen.add(wd)
                        if (announce and not f.fresh and out is not None
                                and not (f is top and name in reported)):
                            self._announce(f.wd, name, prefix, out)
                        if progress is not None and not added % PROGRESS_EVERY:
                            progress(len(path_of))
                    elif wd == -errno.ENOSPC:
                        counting = True
                        self.unwatched += 1
                    elif wd == -errno.EEXIST:
                        adopted = (self._adopt(fd, prefix, pid, st) if seen is not None
                                   else self._moved_here(fd, prefix, pid, f.along, st))
                        if adopted is None:
                            os.close(fd)
                            continue  # already watched on this fd (a bind mount, another tree)
                        if seen is not None:
                            seen.add(adopted)
                        wd, fresh = adopted, seen is None  # see _moved_here
                    else:
                        os.close(fd)
                        record(prefix, -wd)
                        continue
                watched = wd >= 0
                subdirs = self.entries(fd, prefix, wd, out if fresh and watched else None, st)
            except OSError as e:  # fstat, statfs: EMFILE, EIO... this directory's problem
                os.close(fd)
                record(prefix, e)
                continue
            except BaseException:
                os.close(fd)
                raise
            widen = quiet and fresh and watched
            if not subdirs and not widen:
                os.close(fd)  # a leaf: done with it (saves a frame per directory)
                continue
            frames.append(Frame(fd, name, prefix, dev, wd, subdirs=subdirs, fresh=fresh, own=True,
                                widen=widen, along=fresh))
            if len(frames) > MAX_HELD_FDS + 1:
                # Keep the deepest directories open; the top stays open too (see _reopen).
                spare = frames[-MAX_HELD_FDS - 1]
                if spare.fd >= 0 and spare.own:
                    os.close(spare.fd)
                    spare.fd = -1

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

    def _adopt(self, fd: int, prefix: str, pid: int, st: os.stat_result) -> int | None:
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

    def _moved_here(self, fd: int, prefix: str, pid: int, along: bool,
                    st: os.stat_result) -> int | None:
        """The wd of a directory that a walk (not a resync) meets already watched by this tree.

        Watched at another path that no longer leads to it, it has moved here, and its rename's
        events are not read yet, or will never come (this directory was not watched when it
        moved in): its watch moves here at once, and the walk reports what it holds, as for a
        new directory. The watches below it move as the walk meets them; those it does not
        meet have left it since, and are removed when the walk ends (see _drop_stale): at the
        old paths their events would name what a client no longer has. Otherwise (reached by
        both paths: a bind mount) it is skipped. At its own path it is skipped too, unless
        `along`: it came with a parent that moved here, or it moved in itself, reported by an
        IN_MOVED_TO after a listing had reported it, which a client applies as a bare
        directory that replaces the tree the listing described.
        """
        s = self._settings
        # Adding bits it already has returns the existing wd and changes nothing.
        wd = self._ino.add_watch_raw(fs.proc_path(fd, pid), s.narrow | IN_MASK_ADD)
        old = self._path_of.get(wd) if wd >= 0 else None
        if old is not None:
            self._watches.identify(wd, st)
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

    def _drop_stale(self) -> None:
        """Remove the watches below directories that moved here that the walk did not meet."""
        path_of = self._path_of
        self._watches.rm_all([wd for wd, p in self._stale.items() if path_of.get(wd) == p])
        self._stale.clear()

    def _reopen(self, frames: list[Frame]) -> bool:
        """Open the last frame's directory again, from its nearest ancestor frame still open."""
        last = len(frames) - 1
        i = last - 1
        while frames[i].fd < 0:
            i -= 1  # frames[0] is never closed
        names = [frames[j].name for j in range(i + 1, last + 1)]
        try:
            frames[last].fd = fs.open_below(frames[i].fd, names, follow=self._settings.follow)
        except OSError:
            return False
        return True

    def _leave(self, f: Frame, frames: list[Frame], pid: int) -> None:
        """Done with a frame: widen its watch where it was added narrow, and close it."""
        if f.widen and (f.fd >= 0 or self._reopen([*frames, f])):
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
        follow = s.follow
        prune = s.prune
        names: set[str] | None = None
        if out is not None and s.report & IN_CREATE:
            names = self._watches.synth_cur.setdefault(wd, set())
        subdirs: list[str] = []
        try:
            # Opened for reading just for the listing: its open and close are reported to its
            # watch and its parent's while those are still narrow.
            lfd = os.open(".", fs.DIR_FLAGS, dir_fd=fd)
            try:
                # Not closed before the end: an entry's stat (a link followed, or a file system
                # that gives no d_type) is made relative to it.
                with os.scandir(lfd) as it:
                    for entry in it:
                        name = entry.name
                        try:
                            is_dir = entry.is_dir(follow_symlinks=follow)
                        except OSError:
                            is_dir = False
                        if is_dir:
                            if prune is not None and prune(name):
                                continue
                            subdirs.append(name)
                        if names is not None and out is not None:
                            names.add(name)
                            out.append(synthetic_create(prefix + name, is_dir))
            finally:
                os.close(lfd)
        except OSError as e:
            self.unreadable.record(prefix, e)  # what was listed before the error is kept
        return subdirs
