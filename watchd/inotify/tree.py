"""Recursive watching of one directory tree over an InotifyFd that the caller owns and reads.

The tree keeps two maps and nothing else per directory: wd -> path prefix and prefix -> wd,
where a prefix is the directory's absolute path with a trailing "/" (so that a rename
rewrites every descendant with one `startswith` pass and never matches a sibling such as
"/a/bc" when "/a/b" moves).

Rules worth knowing:

* The tree is walked by file descriptor, never by path string. Each directory is opened
  relative to its parent's fd with O_NOFOLLOW, watched through that fd (/proc/<pid>/fd/N,
  which the kernel resolves to the very inode the fd holds), and listed from it. A symbolic
  link swapped in for a directory (or for one of its parents) while the tree works is met as
  a link and never followed, so the walk cannot leave the tree; and no path is ever longer
  than one name, so trees deeper than PATH_MAX are watched too. To reach a directory named
  in an event, the tree opens it from the root one name at a time, with O_NOFOLLOW each, and
  checks that it is the directory of that event's watch. Fds are held only during a walk
  (at most MAX_HELD_FDS at once, and those of one batch of events until its end).
* The root's last component is never followed (its parents are, unless `real_root` is
  given: then none is). A symbolic link at the root's path is refused like a file.
* A new directory is watched before it is listed, so nothing created in it is missed.
  With `synthetic`, its entries are reported as IN_CREATE events. The kernel may report
  the same entry too (created between the watch and the listing); such a kernel IN_CREATE
  is dropped when the listing already reported that name in that directory. The names
  listed are remembered until the end of the next handle() call: the kernel events they
  could duplicate are queued before the listing returns, hence read by then. A delete or
  move of the name forgets it, so a later re-creation is reported.
* A directory's IN_MOVED_FROM is paired by cookie with the IN_MOVED_TO of the same
  handle() call. When none comes, the directory left the tree: its watches are removed.
  (The kernel queues both during one rename, so they share a read unless the read split
  them; the directory is then watched again, as moved in, when its IN_MOVED_TO comes.)
* A new directory that the tree cannot reach (gone, or its parent's path changed before
  the rename's events were read) is not forgotten: its parent is listed again at the end of
  the batch, and of the following batches until that works, and what it holds unwatched is
  watched then (with synthetic creates). Past RESCAN_TRIES batches the tree gives up and
  reports an overflow, so that the caller resyncs and its subscribers rescan.
* A directory that cannot be opened or listed (EACCES, EIO...) is that directory's problem:
  it is recorded in `failed` (and logged, at most once per LOG_EVERY_S), and the walk goes on.
* A directory already watched on the same fd (a bind mount, or another tree or watch of
  the same fd) is detected with IN_MASK_CREATE and skipped, never re-mapped.
* With `real_fs_only`, a root on a pseudo file system (proc, sysfs, cgroup...) is refused
  and such file systems mounted below the root are not descended into.
* Links below the root are not followed, unless follow_symlinks.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from watchd.inotify import fs
from watchd.inotify._binding import InotifyFd, RawTuple
from watchd.inotify.errors import (
    InotifyError,
    NotADirectoryPathError,
    PseudoFileSystemError,
    WatchLimitError,
    error_for,
)
from watchd.inotify.flags import (
    IN_ACCESS,
    IN_ALL_EVENTS,
    IN_CLOSE_NOWRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_EXCL_UNLINK,
    IN_IGNORED,
    IN_ISDIR,
    IN_MASK_ADD,
    IN_MASK_CREATE,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONESHOT,
    IN_ONLYDIR,
    IN_OPEN,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
)

log = logging.getLogger("watchd.inotify.tree")

# The bits the tree itself needs, whatever the caller asked for.
_BOOKKEEPING = IN_CREATE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
# Events that listing a directory causes on it and on its parent's watch.
_LISTING_NOISE = IN_OPEN | IN_ACCESS | IN_CLOSE_NOWRITE
# Events that need more than a lookup and a report (see Tree._slow).
_SLOW = IN_ISDIR | IN_MOVED_FROM | IN_MOVED_TO | IN_IGNORED | IN_UNMOUNT | IN_Q_OVERFLOW
_ROOT_LOSS = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT
# Events that make, unmake or rename a name in a directory.
_NAMING = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
PROGRESS_EVERY = 4096  # directories between two progress reports of a long scan
# Directories a walk holds open at once: its deepest ones (one fd per level below the
# walk's start). Shallower ones are closed and opened again from an ancestor when needed.
MAX_HELD_FDS = 64
BATCH_FDS = 64  # directories of one handle() call kept open until its end, at most
RESCAN_TRIES = 8  # batches in which a directory to list again may stay out of reach
FAILED_KEPT = 1024  # unreadable directories remembered by path; past it, only counted
LOG_EVERY_S = 10.0  # at most one log line per tree this often about unreadable directories


class TreeEvent(NamedTuple):
    """One event of the tree, with its absolute path.

    A NamedTuple because one is built per kernel event on the hot path.
    """

    mask: int  # kernel mask bits, IN_ISDIR included
    cookie: int
    path: str  # absolute; os.fsdecode (surrogateescape) of the kernel's bytes
    src_path: str | None  # IN_MOVED_TO only: the source path when its IN_MOVED_FROM was seen
    wd: int  # the kernel's watch descriptor, -1 for synthetic and overflow events
    name: bytes  # the kernel's name (b"" for events on the watched directory itself)
    length: int  # the kernel's padded len field (0 for synthetic events)


def _dir_path(prefix: str) -> str:
    return prefix[:-1] or "/"


class _Frame:
    """One directory of a walk: open (fd >= 0, or closed to spare fds), with subdirs to visit.

    Mutable, and private to one walk: not a value.
    """

    __slots__ = ("dev", "fd", "fresh", "name", "own", "prefix", "subdirs", "wd", "widen")

    def __init__(self, fd: int, name: str, prefix: str, dev: int, wd: int, *,
                 subdirs: list[str], fresh: bool, own: bool, widen: bool) -> None:
        self.fd = fd
        self.name = name  # its name in the parent frame's directory
        self.prefix = prefix
        self.dev = dev
        self.wd = wd  # -1: not watched (past the watch limit)
        self.subdirs = subdirs  # names still to visit, visited from the end
        self.fresh = fresh  # watched by this walk: everything it holds is new
        self.own = own  # the walk closes fd when it leaves the frame
        self.widen = widen  # added narrow: set the full mask when leaving the frame


class Tree:
    """One watched directory (and, if recursive, everything below it) on a shared InotifyFd."""

    __slots__ = (
        "_batch_fds",
        "_decode_errors",
        "_encoding",
        "_failed_extra",
        "_follow",
        "_fs_types",
        "_full",
        "_ino",
        "_log_after",
        "_log_skipped",
        "_moves",
        "_narrow",
        "_path_of",
        "_progress",
        "_prune",
        "_quiet",
        "_quiet_parent",
        "_real_fs_only",
        "_real_root",
        "_recursive",
        "_report",
        "_rescan",
        "_root_prefix",
        "_root_wd",
        "_skip_leaves",
        "_synth_cur",
        "_synth_prev",
        "_synthetic",
        "_wd_of",
        "failed",
        "limit_error",
        "lost",
        "overflowed",
        "root",
        "unwatched",
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
    ) -> None:
        self._ino = ino
        self.root = os.path.abspath(os.fsdecode(root))
        self._root_prefix = self.root if self.root.endswith("/") else self.root + "/"
        # Where the root really is, its symbolic links resolved beforehand (when the
        # configuration was loaded): then no component of it is followed when it is opened.
        # Events are reported under `root` all the same.
        self._real_root = real_root
        self._real_fs_only = real_fs_only
        self._recursive = recursive
        self._prune = prune
        self._follow = follow_symlinks
        self._synthetic = synthetic
        self._report = int(mask) & IN_ALL_EVENTS
        # ONESHOT and MASK_ADD would break the bookkeeping; the tree manages its own masks.
        wanted = int(mask) & ~(IN_ONESHOT | IN_MASK_ADD | IN_MASK_CREATE)
        # No IN_DONT_FOLLOW: watches are added through /proc/<pid>/fd/N, a link the kernel
        # must follow to reach the directory, which the fd already pins.
        self._full = wanted | _BOOKKEEPING | IN_ONLYDIR | IN_EXCL_UNLINK
        self._quiet = quiet_listing and bool(self._report & _LISTING_NOISE)
        self._narrow = self._full & ~_LISTING_NOISE if self._quiet else self._full
        # The parent's watch would report the listing of a new directory too; narrowing it for
        # that moment hides it (quiet_parent=False keeps it, as the `inotify` package does).
        self._quiet_parent = self._quiet and quiet_parent
        # A directory that cannot hold a subdirectory (see _entries) need not be listed, unless
        # the listing is to be seen: the parent's watch reports it when it is not narrowed.
        # (Nor when links are followed: a link to a directory does not count in the link count.)
        self._skip_leaves = not follow_symlinks and (
            self._quiet_parent or not self._report & _LISTING_NOISE)
        # Told the number of directories watched so far, every PROGRESS_EVERY, during a scan.
        self._progress = progress
        self._encoding = sys.getfilesystemencoding()
        self._decode_errors = sys.getfilesystemencodeerrors()
        self._path_of: dict[int, str] = {}
        self._wd_of: dict[str, int] = {}
        self._root_wd = -1
        # cookie -> (source path, the wds at and below it for a directory, None for a file)
        self._moves: dict[int, tuple[str, list[int] | None]] = {}
        self._synth_cur: dict[int, set[str]] = {}
        self._synth_prev: dict[int, set[str]] = {}
        # Watched directories to list again at the end of the batch (see the module's rules):
        # wd -> batches it has been out of reach.
        self._rescan: dict[int, int] = {}
        self._batch_fds: dict[str, tuple[int, int]] = {}  # prefix -> (fd, st_dev), one batch
        self._fs_types: dict[int, int] = {}  # st_dev -> statfs f_type
        self._log_after = 0.0
        self._log_skipped = 0
        self._failed_extra = 0
        # Directories that could not be opened or listed: prefix -> what went wrong.
        self.failed: dict[str, str] = {}
        self.lost: str | None = None
        self.overflowed = False
        self.unwatched = 0
        self.limit_error: WatchLimitError | None = None

    # -- public state ------------------------------------------------------------------------

    @property
    def directories(self) -> int:
        """How many directories are watched now."""
        return len(self._path_of)

    @property
    def unreadable(self) -> int:
        """How many directories could not be opened or listed (see `failed`)."""
        return len(self.failed) + self._failed_extra

    def owns(self, wd: int) -> bool:
        """True when `wd` is one of this tree's watches."""
        return wd in self._path_of

    def path_of(self, wd: int) -> str | None:
        """The directory path of one of this tree's watches, or None."""
        prefix = self._path_of.get(wd)
        return None if prefix is None else _dir_path(prefix)

    # -- set-up and tear-down ----------------------------------------------------------------

    def start(self, *, report: bool = False) -> list[TreeEvent]:
        """Watch the root (raising the binding's error if it cannot be) and all below it.

        With report, what is already there comes back as synthetic creates: for a root that
        reappeared, whose contents nobody has been told about.
        """
        fd = self._open_root_checked()
        try:
            st = os.fstat(fd)
            self._fs_type(st.st_dev, fd)
            wd = self._ino.add_watch_raw(fs.proc_path(fd, os.getpid()),
                                         self._narrow | IN_MASK_CREATE)
            if wd < 0:
                raise self._root_error(-wd)
        except BaseException:
            os.close(fd)
            raise
        self._remember(wd, self._root_prefix)
        self._root_wd = wd
        out: list[TreeEvent] | None = [] if report else None
        if not self._recursive:
            if out is not None:
                self._entries(fd, self._root_prefix, wd, out, None)
            if self._quiet:
                self._set_mask(fd, wd, self._full)
            os.close(fd)
            return out or []
        subdirs = self._entries(fd, self._root_prefix, wd, out, st)
        top = _Frame(fd, "", self._root_prefix, st.st_dev, wd, subdirs=subdirs,
                     fresh=True, own=True, widen=self._quiet)
        self._walk(top, out, visited=self._visited_set(st))
        return out or []

    def close(self) -> None:
        """Remove every watch of this tree (the fd stays open: it is the caller's)."""
        self._close_batch_fds()
        if not self._ino.closed:
            rm = self._ino.rm_watch
            for wd in self._path_of:
                # A watch that went with its directory has nothing left to remove.
                with contextlib.suppress(InotifyError):
                    rm(wd)
        self._path_of.clear()
        self._wd_of.clear()
        self._synth_cur.clear()
        self._synth_prev.clear()
        self._rescan.clear()

    def _open_root(self, flags: int = fs.PATH_FLAGS) -> int:
        """Open the root directory (see the rules); raises OSError."""
        if self._follow and self._real_root is None:
            return os.open(self.root, flags & ~os.O_NOFOLLOW)
        if self._real_root is not None:
            return fs.open_dir(self._real_root, strict=True, flags=flags)
        return fs.open_dir(self.root, strict=False, flags=flags)

    def _open_root_checked(self) -> int:
        """_open_root, raising the binding's errors, and refusing a pseudo file system."""
        where = self._real_root or self.root
        try:
            fd = self._open_root()
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ELOOP) and _is_symlink(where):
                raise NotADirectoryPathError(
                    errno.ENOTDIR,
                    f"cannot watch {where!r}: it is a symbolic link, which is not followed; "
                    "configure the directory it points to instead",
                    where,
                ) from e
            raise error_for(e.errno or errno.EIO, where, "open") from e
        if self._real_fs_only:
            try:
                name = fs.pseudo_fs_of(fd)
            except OSError:
                name = None
            if name is not None:
                os.close(fd)
                raise PseudoFileSystemError(
                    errno.EOPNOTSUPP,
                    f"cannot watch {where!r}: it is on the pseudo file system {name}, whose "
                    "changes inotify does not report; watch a directory of a real file system",
                    where,
                )
        return fd

    def _root_error(self, err: int) -> InotifyError:
        if err == errno.ENOENT:
            # The fd is open, so the missing piece is /proc/<pid>/fd, which every watch uses.
            return InotifyError(
                err, f"cannot watch {self.root!r}: /proc is not mounted (watches are added "
                "through /proc/self/fd); mount it (mount -t proc proc /proc)", self.root)
        return error_for(err, self.root, "inotify_add_watch")

    # -- events ------------------------------------------------------------------------------

    def handle(self, raw: Sequence[RawTuple]) -> list[TreeEvent]:
        """Apply a batch of this tree's kernel events and return those to report."""
        out: list[TreeEvent] = []
        append = out.append
        path_of = self._path_of
        report = self._report
        encoding, errors = self._encoding, self._decode_errors
        new = tuple.__new__  # skips NamedTuple.__new__'s Python-level argument handling
        slow_bits = _SLOW
        if self._synth_cur or self._synth_prev:
            slow_bits |= IN_CREATE | IN_DELETE
        elif self._follow:
            slow_bits |= IN_CREATE  # a new symlink may lead to a directory

        root_wd = self._root_wd
        for ev in raw:
            wd, mask, cookie, length, name = ev
            prefix = path_of.get(wd)
            if prefix is None:
                if wd == -1 and mask & IN_Q_OVERFLOW:
                    self.overflowed = True
                    append(new(TreeEvent, (mask, cookie, "", None, -1, b"", 0)))
                continue  # a watch this tree has already dropped
            if name:
                if mask & slow_bits:
                    self._slow(ev, prefix, out)
                elif mask & report:
                    path = prefix + name.decode(encoding, errors)
                    append(new(TreeEvent, (mask, cookie, path, None, wd, name, length)))
            elif wd == root_wd and mask & (_ROOT_LOSS | IN_IGNORED):
                self._root_event(ev, out)
            elif mask & IN_IGNORED:
                self._forget(wd)
            elif mask & report:
                path = _dir_path(prefix)
                append(new(TreeEvent, (mask, cookie, path, None, wd, name, length)))
        self._end_batch(out)
        return out

    def _slow(self, ev: RawTuple, prefix: str, out: list[TreeEvent]) -> None:
        """An event on a named entry that needs bookkeeping before it is reported."""
        wd, mask, cookie, length, raw_name = ev
        name = raw_name.decode(self._encoding, self._decode_errors)
        path = prefix + name
        is_dir = bool(mask & IN_ISDIR)
        if is_dir and self._prune is not None and self._prune(name):
            if mask & IN_MOVED_TO:
                # A watched directory renamed to a pruned name leaves the tree.
                src = self._moves.pop(cookie, None)
                if src is not None and src[1]:
                    self._rm_all(src[1])
            return
        if mask & _NAMING and (self._synth_cur or self._synth_prev):
            listed = self._synth_cur.get(wd) or self._synth_prev.get(wd)
            if listed is not None and name in listed:
                listed.discard(name)
                if mask & IN_CREATE:
                    return  # the listing of the new directory already reported it
        if is_dir and self.failed and mask & (IN_DELETE | IN_MOVED_FROM):
            self.failed.pop(path + "/", None)  # an unreadable directory that went away
        src_path = None
        moved: list[int] | None = None
        if mask & IN_MOVED_FROM:
            self._moves[cookie] = (path, self._below(path + "/") if is_dir else None)
        elif mask & IN_MOVED_TO:
            src = self._moves.pop(cookie, None)
            if src is not None:
                src_path, moved = src
        if mask & self._report:
            out.append(TreeEvent(mask, cookie, path, src_path, wd, raw_name, length))
        if not (self._recursive and mask & (IN_CREATE | IN_MOVED_TO)):
            return
        if not is_dir and not (self._follow and os.path.isdir(path)):
            return
        if self.lost is not None:
            return
        if moved and src_path is not None:
            self._rename(moved, src_path + "/", path + "/")
        else:
            self._watch_new(wd, prefix, name, out if self._synthetic else None)

    def _root_event(self, ev: RawTuple, out: list[TreeEvent]) -> None:
        """A deletion, move, unmount or IN_IGNORED of the root itself."""
        wd, mask, cookie, length, name = ev
        if mask & IN_IGNORED:
            self.lost = self.lost or "deleted"
            self._forget(wd)
            return
        if mask & IN_UNMOUNT:
            self.lost = "unmounted"
        elif mask & IN_DELETE_SELF:
            self.lost = self.lost or "deleted"
        elif mask & IN_MOVE_SELF:
            self.lost = self.lost or "moved"
        out.append(TreeEvent(mask, cookie, self.root, None, wd, name, length))

    def _end_batch(self, out: list[TreeEvent]) -> None:
        moves = self._moves
        if moves:
            for _, moved in moves.values():
                if moved:  # its IN_MOVED_TO did not come: it left the tree
                    self._rm_all(moved)
            moves.clear()
        if self._synth_cur or self._synth_prev:
            self._synth_prev = self._synth_cur
            self._synth_cur = {}
        if self._rescan:
            self._run_rescans(out)
        if self._batch_fds:
            self._close_batch_fds()

    # -- directories the tree could not account for --------------------------------------------

    def _run_rescans(self, out: list[TreeEvent]) -> None:
        """List again the directories that may hold an unwatched subdirectory (see the rules)."""
        pending, self._rescan = self._rescan, {}
        emit = out if self._synthetic else None
        for wd, tries in pending.items():
            prefix = self._path_of.get(wd)
            if prefix is None or self.lost is not None:
                continue  # gone, or left the tree: nothing of it to account for
            hit = self._dir_fd(prefix, wd)
            if hit is None:
                if tries + 1 < RESCAN_TRIES:
                    self._rescan[wd] = tries + 1
                elif not self.overflowed:
                    # Out of reach for too long: say that events may be lost, so that the
                    # caller resyncs and subscribers rescan, rather than stay silent.
                    log.warning("%s: cannot reach %s to look for new directories; "
                                "resynchronizing", self.root, _dir_path(prefix))
                    self.overflowed = True
                    out.append(TreeEvent(IN_Q_OVERFLOW, 0, "", None, -1, b"", 0))
                continue
            self._rescan_one(wd, prefix, hit, emit)

    def _rescan_one(self, wd: int, prefix: str, hit: tuple[int, int],
                    out: list[TreeEvent] | None) -> None:
        """List a watched directory again and watch what it holds unwatched."""
        path_fd, dev = hit
        quiet: list[tuple[int, int]] = []  # (fd, wd) of the watches that would see the listing
        if self._quiet:
            quiet.append((path_fd, wd))
            parent = prefix[: prefix.rstrip("/").rfind("/") + 1]
            parent_wd = self._wd_of.get(parent)
            if self._quiet_parent and parent_wd is not None:
                up = self._dir_fd(parent, parent_wd)
                if up is not None:
                    quiet.append((up[0], parent_wd))
        for qfd, qwd in quiet:
            self._set_mask(qfd, qwd, self._narrow)
        # Only the subdirectories matter here: its files were reported by the kernel.
        subdirs = self._entries(path_fd, prefix, wd, None, None)
        if subdirs:
            top = _Frame(path_fd, "", prefix, dev, wd, subdirs=subdirs,
                         fresh=False, own=False, widen=False)
            self._walk(top, out, visited=None)
        for qfd, qwd in quiet:
            self._set_mask(qfd, qwd, self._full)

    def _cannot_read(self, prefix: str, e: OSError | int) -> None:
        """Record a directory that cannot be opened or listed, and log it (rate-limited)."""
        err = e if isinstance(e, int) else (e.errno or errno.EIO)
        reason = os.strerror(err)
        if prefix in self.failed or len(self.failed) < FAILED_KEPT:
            self.failed[prefix] = reason
        else:
            self._failed_extra += 1
        now = time.monotonic()
        if now < self._log_after:
            self._log_skipped += 1
            return
        more = f" ({self._log_skipped} more since the last report)" if self._log_skipped else ""
        log.warning("%s: cannot read %s: %s; what is below it is not watched%s",
                    self.root, _dir_path(prefix), reason, more)
        self._log_after = now + LOG_EVERY_S
        self._log_skipped = 0

    # -- overflow ----------------------------------------------------------------------------

    def resync(self) -> list[TreeEvent]:
        """After an overflow: watch directories that appeared, forget those that vanished."""
        self.overflowed = False
        out: list[TreeEvent] = []
        root_wd = self._root_wd
        self._rescan.clear()
        if self.lost is not None or root_wd not in self._path_of or not self._recursive:
            return out
        emit = out if self._synthetic and self._report & IN_CREATE else None
        try:
            fd = self._open_root()
            st = os.fstat(fd)
        except OSError:
            return out  # the root's own events say what became of it
        seen: set[int] = {root_wd}
        self.unwatched = 0
        self.failed.clear()
        self._failed_extra = 0
        top = _Frame(fd, "", self._root_prefix, st.st_dev, root_wd,
                     subdirs=self._entries(fd, self._root_prefix, root_wd, None, st),
                     fresh=False, own=True, widen=False)
        self._walk(top, emit, visited=self._visited_set(st), seen=seen)
        for wd in [wd for wd in self._path_of if wd not in seen]:
            self._rm(wd)
        self._close_batch_fds()
        return out

    def _adopt(self, fd: int, prefix: str, pid: int) -> int | None:
        """The wd of a directory this fd already watches; one of ours gets its new path."""
        # Adding bits it already has returns the existing wd and changes nothing.
        wd = self._ino.add_watch_raw(fs.proc_path(fd, pid), self._narrow | IN_MASK_ADD)
        if wd < 0:
            return None
        old = self._path_of.get(wd)
        if old is None:
            return None  # watched by someone else on this fd
        if old != prefix:
            if self._wd_of.get(old) == wd:
                del self._wd_of[old]
            self._remember(wd, prefix)
        return wd

    # -- bookkeeping -------------------------------------------------------------------------

    def _remember(self, wd: int, prefix: str) -> None:
        self._path_of[wd] = prefix
        self._wd_of[prefix] = wd

    def _forget(self, wd: int) -> None:
        prefix = self._path_of.pop(wd, None)
        if prefix is not None and self._wd_of.get(prefix) == wd:
            del self._wd_of[prefix]
        self._synth_cur.pop(wd, None)
        self._synth_prev.pop(wd, None)
        self._rescan.pop(wd, None)

    def _rm(self, wd: int) -> None:
        with contextlib.suppress(InotifyError):  # already gone with its directory
            self._ino.rm_watch(wd)
        self._forget(wd)

    def _below(self, prefix: str) -> list[int]:
        """The wds of the directory at `prefix` and of everything below it."""
        return [wd for wd, p in self._path_of.items() if p.startswith(prefix)]

    def _rename(self, wds: list[int], old: str, new: str) -> None:
        """Move the watches `wds` from under prefix `old` to under prefix `new`."""
        path_of, wd_of = self._path_of, self._wd_of
        cut = len(old)
        moved = [(wd, p) for wd in wds if (p := path_of.get(wd)) is not None and p.startswith(old)]
        for wd, p in moved:
            if wd_of.get(p) == wd:
                del wd_of[p]
        for wd, p in moved:
            q = new + p[cut:]
            path_of[wd] = q
            wd_of[q] = wd

    def _rm_all(self, wds: list[int]) -> None:
        for wd in wds:
            if wd != self._root_wd and wd in self._path_of:
                self._rm(wd)

    # -- reaching directories by fd ------------------------------------------------------------

    def _dir_fd(self, prefix: str, wd: int) -> tuple[int, int] | None:
        """An fd of the directory that watch `wd` (at `prefix`) is on, open until the batch ends.

        Opened from the root one name at a time with O_NOFOLLOW (O_PATH: no event), and
        checked to be the watched directory; None when the path no longer leads to it.
        """
        hit = self._batch_fds.get(prefix)
        if hit is not None:
            return hit
        if len(self._batch_fds) >= BATCH_FDS:
            self._close_batch_fds()
        root_prefix = self._root_prefix
        try:
            root = self._batch_fds.get(root_prefix)
            if root is None:
                fd = self._open_root()
                root = (fd, os.fstat(fd).st_dev)
                if not self._is_watch(fd, self._root_wd):
                    os.close(fd)
                    return None
                self._batch_fds[root_prefix] = root
            if prefix == root_prefix:
                return root if wd == self._root_wd else None
            fd = fs.open_below(root[0], prefix[len(root_prefix):-1].split("/"),
                               follow=self._follow)
            hit = (fd, os.fstat(fd).st_dev)
        except OSError:
            return None
        if not self._is_watch(fd, wd):
            os.close(fd)
            return None
        self._batch_fds[prefix] = hit
        return hit

    def _is_watch(self, fd: int, wd: int) -> bool:
        """Whether the directory open as `fd` is the one that watch `wd` is on."""
        # The path may name another directory than the watch's now (renamed, and its rename
        # not read yet). Adding bits it has returns the wd of the inode the fd holds.
        got = self._ino.add_watch_raw(fs.proc_path(fd, os.getpid()), self._narrow | IN_MASK_ADD)
        if got >= 0 and got != wd and got not in self._path_of:
            with contextlib.suppress(InotifyError):
                self._ino.rm_watch(got)  # not a directory we watch: undo the watch just made
        return got == wd

    def _close_batch_fds(self) -> None:
        for fd, _ in self._batch_fds.values():
            os.close(fd)
        self._batch_fds.clear()

    def _set_mask(self, fd: int, wd: int, mask: int) -> None:
        got = self._ino.add_watch_raw(fs.proc_path(fd, os.getpid()), mask)
        if got >= 0 and got != wd and got not in self._path_of:
            # The fd is not the directory of that watch, and not ours to watch.
            with contextlib.suppress(InotifyError):
                self._ino.rm_watch(got)

    def _fs_type(self, dev: int, fd: int) -> int:
        kind = self._fs_types.get(dev)
        if kind is None:
            try:
                kind = fs.fs_type(fd)
            except OSError:
                kind = 0
            self._fs_types[dev] = kind
        return kind

    def _visited_set(self, st: os.stat_result) -> set[tuple[int, int]] | None:
        return {(st.st_dev, st.st_ino)} if self._follow else None

    # -- adding watches ----------------------------------------------------------------------

    def _watch_new(
        self, parent_wd: int, parent: str, name: str, out: list[TreeEvent] | None
    ) -> None:
        """Watch a directory that appeared under `parent`, and everything in it."""
        hit = self._dir_fd(parent, parent_wd)
        if hit is None:
            self._rescan.setdefault(parent_wd, 0)  # its path is out of date: see the rules
            return
        fd, dev = hit
        if self._quiet_parent:
            # Listing the new directory opens it, which the parent's watch would report.
            self._set_mask(fd, parent_wd, self._narrow)
        top = _Frame(fd, "", parent, dev, parent_wd, subdirs=[name],
                     fresh=True, own=False, widen=False)
        self._walk(top, out, visited=set() if self._follow else None, rescan_missing=True)
        if self._quiet_parent:
            self._set_mask(fd, parent_wd, self._full)

    def _walk(
        self,
        top: _Frame,
        out: list[TreeEvent] | None,
        *,
        visited: set[tuple[int, int]] | None,
        seen: set[int] | None = None,
        rescan_missing: bool = False,
    ) -> None:
        """Watch and list every directory below `top`, depth first, each watched before listed.

        `top` is open and listed already. With `seen` (a resync), directories this fd already
        watches are taken over at their current path and recorded there, and each new one is
        reported itself (its parent is not new); otherwise they are skipped. With
        rescan_missing, a subdirectory of the top that has vanished gets the top listed again
        at the end of the batch.
        """
        frames = [top]
        try:
            self._walk_frames(frames, out, visited, seen, rescan_missing)
        finally:
            for f in frames:  # left by an exception: nothing may keep their fds
                if f.own and f.fd >= 0:
                    os.close(f.fd)
                    f.fd = -1

    def _walk_frames(
        self,
        frames: list[_Frame],
        out: list[TreeEvent] | None,
        visited: set[tuple[int, int]] | None,
        seen: set[int] | None,
        rescan_missing: bool,
    ) -> None:
        """The loop of _walk, over its stack of frames."""
        top = frames[0]
        ino = self._ino
        add = ino.add_watch_raw
        narrow_new = self._narrow | IN_MASK_CREATE
        # O_PATH: opening it is not reported to the parent's watch; _entries opens it to list.
        flags = fs.PATH_FLAGS_FOLLOW if self._follow else fs.PATH_FLAGS
        real_fs_only = self._real_fs_only
        quiet = self._quiet
        progress = self._progress
        path_of, wd_of = self._path_of, self._wd_of
        announce = seen is not None and out is not None
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
                    self._rescan.setdefault(f.wd, 0)
                f.subdirs.clear()
                continue
            prefix = f.prefix + name + "/"
            try:
                fd = os.open(name, flags, dir_fd=f.fd)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    if rescan_missing and f is top and f.wd >= 0:
                        self._rescan.setdefault(f.wd, 0)
                elif e.errno not in (errno.ENOTDIR, errno.ELOOP):
                    self._cannot_read(prefix, e)
                continue  # ENOTDIR: no longer a directory, or a symbolic link now
            try:
                st = os.fstat(fd)
                dev = st.st_dev
                if dev != f.dev and (self._fs_type(dev, fd) in fs.PSEUDO_FS and real_fs_only):
                    os.close(fd)
                    continue  # /proc and the like, mounted inside the tree
                if visited is not None:
                    key = (dev, st.st_ino)
                    if key in visited:
                        os.close(fd)
                        continue
                    visited.add(key)
                fresh = True
                if counting:
                    wd = -1
                    self.unwatched += 1
                else:
                    wd = add(fs.proc_path(fd, pid), narrow_new)
                    if wd >= 0:
                        path_of[wd] = prefix
                        wd_of[prefix] = wd
                        added += 1
                        if seen is not None:
                            seen.add(wd)
                            if announce and not f.fresh and out is not None:
                                out.append(self._synthetic_create(prefix[:-1], True))
                        if progress is not None and not added % PROGRESS_EVERY:
                            progress(len(path_of))
                    elif wd == -errno.ENOSPC:
                        if self.limit_error is None:
                            error = error_for(errno.ENOSPC, _dir_path(prefix), "inotify_add_watch")
                            assert isinstance(error, WatchLimitError)
                            self.limit_error = error
                        counting = True
                        self.unwatched += 1
                    elif wd == -errno.EEXIST:
                        adopted = self._adopt(fd, prefix, pid) if seen is not None else None
                        if adopted is None:
                            os.close(fd)
                            continue  # already watched on this fd (a bind mount, another tree)
                        seen.add(adopted)  # type: ignore[union-attr]  # seen is set: see above
                        wd, fresh = adopted, False
                    else:
                        os.close(fd)
                        self._cannot_read(prefix, -wd)
                        continue
                watched = wd >= 0
                subdirs = self._entries(fd, prefix, wd, out if fresh and watched else None, st)
            except OSError as e:  # fstat, statfs: EMFILE, EIO... this directory's problem
                os.close(fd)
                self._cannot_read(prefix, e)
                continue
            except BaseException:
                os.close(fd)
                raise
            widen = quiet and fresh and watched
            if not subdirs and not widen:
                os.close(fd)  # a leaf: done with it (saves a frame per directory)
                continue
            frames.append(_Frame(fd, name, prefix, dev, wd, subdirs=subdirs, fresh=fresh, own=True,
                                 widen=widen))
            if len(frames) > MAX_HELD_FDS + 1:
                # Keep the deepest directories open; the top stays open too (see _reopen).
                spare = frames[-MAX_HELD_FDS - 1]
                if spare.fd >= 0 and spare.own:
                    os.close(spare.fd)
                    spare.fd = -1

    def _reopen(self, frames: list[_Frame]) -> bool:
        """Open the last frame's directory again, from its nearest ancestor frame still open."""
        last = len(frames) - 1
        i = last - 1
        while frames[i].fd < 0:
            i -= 1  # frames[0] is never closed
        names = [frames[j].name for j in range(i + 1, last + 1)]
        try:
            frames[last].fd = fs.open_below(frames[i].fd, names, follow=self._follow)
        except OSError:
            return False
        return True

    def _leave(self, f: _Frame, frames: list[_Frame], pid: int) -> None:
        """Done with a frame: widen its watch where it was added narrow, and close it."""
        if f.widen and (f.fd >= 0 or self._reopen([*frames, f])):
            got = self._ino.add_watch_raw(fs.proc_path(f.fd, pid), self._full)
            if got >= 0 and got != f.wd and got not in self._path_of:
                with contextlib.suppress(InotifyError):
                    self._ino.rm_watch(got)
        if f.own and f.fd >= 0:
            os.close(f.fd)
            f.fd = -1

    def _entries(
        self,
        fd: int,
        prefix: str,
        wd: int,
        out: list[TreeEvent] | None,
        st: os.stat_result | None,
    ) -> list[str]:
        """The subdirectories of the directory open as `fd`; its entries reported into `out`."""
        if (out is None and st is not None and st.st_nlink == 2 and self._skip_leaves
                and self._fs_types.get(st.st_dev) in fs.LEAF_COUNT_FS):
            return []  # no subdirectory, and no entry to report: no need to list it
        follow = self._follow
        prune = self._prune
        names: set[str] | None = None
        if out is not None and self._report & IN_CREATE:
            names = self._synth_cur.setdefault(wd, set())
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
                            out.append(self._synthetic_create(prefix + name, is_dir))
            finally:
                os.close(lfd)
        except OSError as e:
            self._cannot_read(prefix, e)  # what was listed before the error is kept
        return subdirs

    def _synthetic_create(self, path: str, is_dir: bool) -> TreeEvent:
        mask = IN_CREATE | IN_ISDIR if is_dir else IN_CREATE
        name = os.fsencode(path.rpartition("/")[2])
        return TreeEvent(mask, 0, path, None, -1, name, 0)


def _is_symlink(path: str) -> bool:
    try:
        return os.path.islink(path)
    except OSError:
        return False
