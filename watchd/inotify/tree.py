"""Recursive watching of one directory tree over an InotifyFd that the caller owns and reads.

Per directory the tree keeps the path prefix of its watch (watchd.inotify.watches) and its
identity, (st_dev, st_ino) (watchd.inotify.identities). Rules worth knowing:

* The tree is walked by file descriptor, never by path string (docs/inotify.md, "How trees
  are walked"): each directory is opened relative to its parent's fd with O_NOFOLLOW, watched
  through that fd (/proc/<pid>/fd/N) and listed from it, so a symbolic link swapped in
  meanwhile is never followed, and trees deeper than PATH_MAX are watched too. A directory
  named in an event is opened from the root one name at a time, and checked to be the
  directory of that event's watch. Fds are held only during a walk (at most MAX_HELD_FDS at
  once, and those of one batch of events until its end).
* Whether a directory is watched is told by its identity, whatever path the tree has for it:
  from the tree's own record where it can vouch for it (Identities.vouched), from the kernel
  otherwise, so that a resync's walk and scan do not ask the kernel per directory.
* The root's last component is never followed (its parents are, unless `real_root` is
  given: then none is). A symbolic link at the root's path is refused like a file.
* A new directory is watched before it is listed, so nothing created in it is missed.
  With `synthetic`, its entries are reported as IN_CREATE events. The kernel may report
  the same entry too (created between the watch and the listing); such a kernel IN_CREATE
  is dropped when the listing already reported that name in that directory. The names
  listed are remembered until the end of the next handle() call: the kernel events they
  could duplicate are queued before the listing returns, hence read by then. A delete or
  move of the name forgets it, so a later re-creation is reported. An IN_MOVED_TO of a name
  the listing reported goes without its source path: the listing found the name the rename
  gave, and the source was never reported, so the move is one into the directory.
* A directory's IN_MOVED_FROM is paired by cookie with the IN_MOVED_TO of the same
  handle() call. When none comes, the directory left the tree: its watches are removed.
  (The kernel queues both during one rename, so they share a read unless the read split
  them; the directory is then watched again, as moved in, when its IN_MOVED_TO comes.)
* A walk lists the tree as it is now, ahead of the events still queued. A directory it meets
  already watched at another path, which no longer leads to it, moved here before its
  rename's events were read (its IN_MOVED_TO never comes when its new parent was not watched
  yet): its watch moves here at once, and what it holds is reported as for a new directory;
  the watches below it follow as the walk meets them, and those it does not meet (they left
  it meanwhile) are removed.
  A directory's IN_MOVED_TO that took no watches along is followed by what it holds, even if
  a listing reported it already: a client applies the move as a bare directory that replaces
  whatever had the name.
* A new directory that the tree cannot reach (gone, or its parent's path changed before
  the rename's events were read) is not forgotten: its parent is listed again at the end of
  the batch, and of the following batches until that works, and what it holds unwatched is
  watched then (with synthetic creates: of a subdirectory found so, itself first, unless
  the tree reported it already: its create or move in, or a listing). Past RESCAN_TRIES
  batches the tree gives up and reports an overflow, so that the caller resyncs and its
  subscribers rescan.
* Once a batch has overflowed (the kernel's queue, or the tree's own accounting), nothing a
  listing finds is reported until resync(), which the caller runs next: reported after the
  overflow, it would describe the tree as it was before the resync.
* An IN_UNMOUNT of a directory below the root (a file system mounted inside the tree was
  unmounted) sets `unmounted`: the directory underneath the mount point is not watched, and
  what the mounted file system held is gone, until the caller calls resync().
* A directory that cannot be opened or listed (EACCES, EIO...) is that directory's problem:
  it is recorded in `failed` (and logged, at most once per LOG_EVERY_S), and the walk goes on.
* A directory already watched on the same fd (a bind mount, or another tree or watch of
  the same fd) is detected with IN_MASK_CREATE and skipped, never re-mapped.
* With `real_fs_only`, a root on a pseudo file system (proc, sysfs, cgroup...) is refused
  and such file systems mounted below the root are not descended into.
* Links below the root are not followed, unless follow_symlinks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from watchd.inotify._binding import InotifyFd, RawTuple
from watchd.inotify.errors import WatchLimitError
from watchd.inotify.flags import (
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
)
from watchd.inotify.identities import Clock
from watchd.inotify.reach import Reach
from watchd.inotify.rescan import RESCAN_TRIES, Rescanner
from watchd.inotify.settings import Settings
from watchd.inotify.start import start_tree
from watchd.inotify.walk import Walker
from watchd.inotify.watches import TreeEvent, Watches, dir_path

__all__ = ["RESCAN_TRIES", "Tree", "TreeEvent"]

# Events that need more than a lookup and a report (see Tree._slow).
_SLOW = IN_ISDIR | IN_MOVED_FROM | IN_MOVED_TO | IN_IGNORED | IN_UNMOUNT | IN_Q_OVERFLOW
_ROOT_LOSS = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT
_WATCH_GONE = IN_IGNORED | IN_UNMOUNT | IN_DELETE_SELF  # of a directory below the root
# Events that make, unmake or rename a name in a directory.
_NAMING = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO


class Tree:
    """One watched directory (and, if recursive, everything below it) on a shared InotifyFd.

    Its parts: Watches (the bookkeeping), Reach (opening its directories by fd), Walker
    (watching and listing them) and Rescanner (walks that events call for). The tree itself
    reads the events and decides.
    """

    __slots__ = (
        "_decode_errors",
        "_encoding",
        "_ino",
        "_path_of",
        "_reach",
        "_rescanner",
        "_settings",
        "_walker",
        "_watches",
        "lost",
        "overflowed",
        "root",
        "unmounted",
    )

    def __init__(
        self,
        ino: InotifyFd,
        root: str | bytes | os.PathLike[str],
        mask: int,
        *,
        recursive: bool = True,
        prune: Callable[[str], bool] | None = None,
        follow_symlinks: bool = False,
        synthetic: bool = False,
        quiet_listing: bool = True,
        quiet_parent: bool = True,
        progress: Callable[[int], None] | None = None,
        real_root: str | None = None,
        real_fs_only: bool = False,
        max_directories: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._ino = ino
        self.root = os.path.abspath(os.fsdecode(root))
        self._settings = settings = Settings.of(
            mask, recursive=recursive, prune=prune, follow_symlinks=follow_symlinks,
            synthetic=synthetic, quiet_listing=quiet_listing, quiet_parent=quiet_parent,
            progress=progress, real_fs_only=real_fs_only)
        self._watches = watches = Watches(ino, clock)  # clock: a test's, or the machine's
        # The map itself, not through `_watches`: handle() and the adapters' routing read it
        # per event. Watches only ever clears it, never replaces it.
        self._path_of = watches.path_of
        self._reach = Reach(ino, watches, self.root, real_root=real_root,
                            follow=follow_symlinks, real_fs_only=real_fs_only,
                            narrow=settings.narrow)
        self._walker = Walker(ino, watches, self._reach, settings)
        self._walker.max_directories = max_directories
        self._rescanner = Rescanner(watches, self._reach, self._walker, settings)
        self._encoding = sys.getfilesystemencoding()
        self._decode_errors = sys.getfilesystemencodeerrors()
        self.lost: str | None = None
        self.overflowed = False
        # A file system mounted below the root was unmounted (IN_UNMOUNT on one of its
        # directories): the directory underneath is unwatched until resync() watches it.
        self.unmounted = False

    # -- public state ------------------------------------------------------------------------

    @property
    def directories(self) -> int:
        """How many directories are watched now."""
        return len(self._path_of)

    @property
    def failed(self) -> dict[str, str]:
        """Directories that could not be opened or listed: prefix -> what went wrong."""
        return self._walker.unreadable.failed

    @property
    def unreadable(self) -> int:
        """How many directories could not be opened or listed (see `failed`)."""
        return len(self._walker.unreadable)

    @property
    def relisting(self) -> bool:
        """Whether directories out of reach wait to be listed again at the end of the next
        batches (their parent's path changed before the rename's events were read)."""
        return bool(self._watches.rescan)

    @property
    def unwatched(self) -> int:
        """How many directories are left unwatched past the watch limit."""
        return self._walker.unwatched

    @property
    def limit_error(self) -> WatchLimitError | None:
        """The error of the watch limit, once this tree has reached it."""
        return self._walker.limit_error

    @property
    def max_directories(self) -> int | None:
        """This tree's share of the watch limit (None: the kernel's limit alone)."""
        return self._walker.max_directories

    @max_directories.setter
    def max_directories(self, budget: int | None) -> None:
        self._walker.max_directories = budget

    def owns(self, wd: int) -> bool:
        """True when `wd` is one of this tree's watches."""
        return wd in self._path_of

    def path_of(self, wd: int) -> str | None:
        """The directory path of one of this tree's watches, or None."""
        prefix = self._path_of.get(wd)
        return None if prefix is None else dir_path(prefix)

    def watches_dir(self, fd: int, st: os.stat_result) -> bool:
        """Whether the directory open as `fd` (`st`: its fstat) is one this tree watches: by
        its identity, whatever path the tree has for it (its rename may be unread). Past the
        watch limit, or no longer there: not one it watches."""
        return self._reach.watch_on(fd, st) >= 0

    def distrust(self) -> None:
        """Before a scan that asks watches_dir of every directory: the record of which
        directory each watch is on is checked with the kernel again, once per device (see
        Identities.vouched)."""
        self._watches.distrust()

    def unreported(self, missed: Callable[[str], bool]) -> None:
        """After a scan that was to report what the tree's directories hold: the directories
        it missed (`missed(path)`: listed in their parent, not entered) that are no longer at
        the path the tree has for them moved before the scan reached them. Their rename's
        events are still queued, and nobody has reported what they hold: where those events
        place them, the tree reports it, as for a directory moved in."""
        watches, reach = self._watches, self._reach
        for wd, prefix in list(self._path_of.items()):
            if (wd != watches.root_wd and missed(dir_path(prefix))
                    and not reach.leads_to(prefix, wd)):
                watches.unreported.add(wd)

    # -- set-up and tear-down ----------------------------------------------------------------

    def start(self, *, report: bool = False) -> list[TreeEvent]:
        """Watch the root (raising the binding's error if it cannot be) and all below it.

        With report, what is already there comes back as synthetic creates: for a root that
        reappeared, whose contents nobody has been told about.
        """
        return start_tree(self._ino, self._watches, self._reach, self._walker, self._settings,
                          report=report)

    def close(self) -> None:
        """Remove every watch of this tree (the fd stays open: it is the caller's)."""
        self._reach.close_batch_fds()
        self._watches.clear()

    # -- events ------------------------------------------------------------------------------

    def handle(self, raw: Sequence[RawTuple]) -> list[TreeEvent]:
        """Apply a batch of this tree's kernel events and return those to report."""
        out: list[TreeEvent] = []
        append = out.append
        path_of = self._path_of
        watches = self._watches
        report = self._settings.report
        encoding, errors = self._encoding, self._decode_errors
        new = tuple.__new__  # skips NamedTuple.__new__'s Python-level argument handling
        slow_bits = _SLOW
        if watches.synth_cur or watches.synth_prev:
            slow_bits |= IN_CREATE | IN_DELETE
        elif self._settings.follow:
            slow_bits |= IN_CREATE  # a new symlink may lead to a directory

        root_wd = watches.root_wd
        adrift = watches.adrift  # filled as the batch goes (see _slow): looked up, not copied
        for ev in raw:
            wd, mask, cookie, length, name = ev
            prefix = path_of.get(wd)
            if prefix is None:
                if wd == -1 and mask & IN_Q_OVERFLOW:
                    self.overflowed = True
                    append(new(TreeEvent, (mask, cookie, "", None, -1, b"", 0)))
                continue  # a watch this tree has already dropped
            if adrift and name and wd in adrift:
                # (A nameless event is the directory's own, at the path it had: reported.)
                self._adrift(ev)
                continue
            if name:
                if mask & slow_bits:
                    self._slow(ev, prefix, out)
                elif mask & report:
                    path = prefix + name.decode(encoding, errors)
                    append(new(TreeEvent, (mask, cookie, path, None, wd, name, length)))
            elif wd == root_wd and mask & (_ROOT_LOSS | IN_IGNORED):
                self._root_event(ev, out)
            elif mask & _WATCH_GONE:
                if mask & IN_UNMOUNT:
                    self.unmounted = True  # its IN_IGNORED follows, and forgets the watch
                    watches.distrust()  # its device number may be another file system's now
                if mask & IN_IGNORED:
                    watches.forget(wd)
                elif mask & IN_DELETE_SELF:
                    # Its inode number may soon be another directory's.
                    watches.identities.unlinked(wd)
                    if mask & report:
                        append(new(TreeEvent, (mask, cookie, dir_path(prefix), None, wd, name,
                                               length)))
            elif mask & report:
                path = dir_path(prefix)
                append(new(TreeEvent, (mask, cookie, path, None, wd, name, length)))
        self._end_batch(out)
        return out

    def _adrift(self, ev: RawTuple) -> None:
        """An event below a directory whose IN_MOVED_FROM came in this batch but not (yet) its
        IN_MOVED_TO: not reported. Its path is the old one, where a client has just removed
        the directory (a create there would put back a path that does not exist). Once the
        batch is read the directory is either out of the tree (its watches go), or it is
        somewhere the tree has not watched yet (a walk finds it there, and reports what it
        holds), or its IN_MOVED_TO is in the next read (it is watched again, as moved in).
        """
        wd, mask = ev[0], ev[1]
        if mask & IN_IGNORED:
            self._watches.forget(wd)
        elif mask & self._settings.report:
            self._watches.skipped.add(self._watches.adrift[wd])

    def _slow(self, ev: RawTuple, prefix: str, out: list[TreeEvent]) -> None:
        """An event on a named entry that needs bookkeeping before it is reported."""
        wd, mask, cookie, length, raw_name = ev
        name = raw_name.decode(self._encoding, self._decode_errors)
        path = prefix + name
        is_dir = bool(mask & IN_ISDIR)
        s, watches = self._settings, self._watches
        if is_dir and s.prune is not None and s.prune(name):
            if mask & IN_MOVED_TO:
                watches.moved_out(cookie)  # a watched directory renamed to a pruned name
            return
        listed = bool(mask & _NAMING and (watches.synth_cur or watches.synth_prev)
                      and watches.unlist(wd, name))
        if listed and mask & IN_CREATE:
            return  # the listing of the new directory already reported it
        if is_dir and mask & (IN_DELETE | IN_MOVED_FROM):
            # Gone from here: a directory found under that name later is another one.
            self._walker.unreadable.failed.pop(path + "/", None)
            if watches.reported:
                watches.unreport(wd, name)
        src_path: str | None = None
        moved: list[int] | None = None
        if mask & IN_MOVED_FROM:
            watches.move_from(cookie, path, is_dir)
        elif mask & IN_MOVED_TO:
            src_path, moved, skipped = watches.pair(cookie, listed=listed)
            if skipped and not self.overflowed:
                # The pair came after all, with events of the directory left out in between
                # (another process changed it during the rename): say they are lost, so that
                # the caller resyncs, rather than stay silent.
                self.overflowed = True
                out.append(TreeEvent(IN_Q_OVERFLOW, 0, "", None, -1, b"", 0))
        if mask & s.report:
            out.append(TreeEvent(mask, cookie, path, src_path, wd, raw_name, length))
        if (s.recursive and mask & (IN_CREATE | IN_MOVED_TO) and self.lost is None
                and (is_dir or (s.follow and os.path.isdir(path)))):
            self._new_dir(ev, prefix, name, (src_path, moved), out)

    def _new_dir(self, ev: RawTuple, prefix: str, name: str,
                 move: tuple[str | None, list[int] | None], out: list[TreeEvent]) -> None:
        """A directory created or moved in (`move`: its source path and the watches that came
        with it): its watches follow the rename, or it is watched and walked."""
        wd, mask = ev[0], ev[1]
        watches = self._watches
        # Once the tree has overflowed, what a listing finds is not reported: the resync that
        # follows reports the tree as it is then (see _end_batch).
        found = out if self._settings.synthetic and not self.overflowed else None
        src_path, moved = move
        if not (moved and src_path is not None):
            self._rescanner.watch_new(wd, prefix, name, found, moved_in=bool(mask & IN_MOVED_TO))
            return
        path = prefix + name
        watches.rename(moved, src_path + "/", path + "/")
        if watches.unreported and watches.wd_of.get(path + "/") in watches.unreported:
            watches.unreported.discard(watches.wd_of[path + "/"])
            # What it holds, under the name it has now.
            self._rescanner.watch_new(wd, prefix, name, found, moved_in=True)
        if watches.rescan and not self.overflowed:
            # What waited for its parent's path to be right is listed now, so that its events
            # come before those that follow the rename, not at the batch's end.
            self.overflowed = self._rescanner.run(out, overflowed=self.overflowed, final=False)

    def _root_event(self, ev: RawTuple, out: list[TreeEvent]) -> None:
        """A deletion, move, unmount or IN_IGNORED of the root itself."""
        wd, mask, cookie, length, name = ev
        if mask & IN_IGNORED:
            self.lost = self.lost or "deleted"
            self._watches.forget(wd)
            return
        if mask & IN_UNMOUNT:
            self.lost = "unmounted"
        elif mask & IN_DELETE_SELF:
            self.lost = self.lost or "deleted"
        elif mask & IN_MOVE_SELF:
            self.lost = self.lost or "moved"
        out.append(TreeEvent(mask, cookie, self.root, None, wd, name, length))

    def _end_batch(self, out: list[TreeEvent]) -> None:
        watches = self._watches
        if watches.moves or watches.synth_cur or watches.synth_prev:
            watches.end_batch()
        if watches.rescan:
            if self.lost is not None:
                watches.rescan.clear()  # the tree is gone: nothing of it to account for
                watches.reported.clear()
            elif not self.overflowed:
                self.overflowed = self._rescanner.run(out, overflowed=False)
            # Overflowed: the resync lists the whole tree. Listed now, what its directories
            # hold would be reported after the overflow, as it was before the resync, under
            # names that may have changed since with no event left to say so.
        if self._reach.batch_fds:
            self._reach.close_batch_fds()

    # -- overflow ----------------------------------------------------------------------------

    def resync(self) -> list[TreeEvent]:
        """After an overflow or an unmount below the root: watch directories that appeared
        (the one underneath a mount point among them), forget those that vanished."""
        self.overflowed = self.unmounted = False
        self._walker.limit_error = None  # found again below if a limit still stands in the way
        watches = self._watches
        watches.distrust()  # events may have been lost: a file system may have been remounted
        watches.rescan.clear()
        watches.reported.clear()
        watches.unreported.clear()
        if self.lost is not None or watches.root_wd not in self._path_of \
                or not self._settings.recursive:
            return []
        return self._rescanner.resync()
