"""Reaching a tree's directories by fd: its root, and the directory of a watch named in an event.

The root is opened following no symbolic link as its last component (none at all for a root
resolved beforehand). Any other directory is opened from the root one name at a time, with
O_NOFOLLOW each and O_PATH (which no watch reports), then checked to be the very directory of
its watch: the path in the tree's map may lead elsewhere until a rename's events are read.
"""

from __future__ import annotations

import contextlib
import errno
import os

from watchd.inotify import fs
from watchd.inotify._binding import InotifyFd
from watchd.inotify.errors import (
    InotifyError,
    NotADirectoryPathError,
    PseudoFileSystemError,
    error_for,
)
from watchd.inotify.flags import IN_MASK_ADD
from watchd.inotify.identities import UNSURE
from watchd.inotify.watches import Watches

BATCH_FDS = 64  # directories of one handle() call kept open until its end, at most


class Reach:
    """Opens a tree's root and its watched directories; fds opened for a batch stay open to its end.

    Mutable (the fds of the batch): not a value.
    """

    __slots__ = ("_follow", "_ino", "_narrow", "_real_fs_only", "_real_root", "_watches",
                 "batch_fds", "root", "root_prefix")

    def __init__(self, ino: InotifyFd, watches: Watches, root: str, *, real_root: str | None,
                 follow: bool, real_fs_only: bool, narrow: int) -> None:
        self._ino = ino
        self._watches = watches
        self.root = root
        self.root_prefix = root if root.endswith("/") else root + "/"
        # Where the root really is, its symbolic links resolved beforehand (when the
        # configuration was loaded): then no component of it is followed when it is opened.
        # Events are reported under `root` all the same.
        self._real_root = real_root
        self._follow = follow
        self._real_fs_only = real_fs_only
        self._narrow = narrow
        # prefix -> (fd, st_dev, wd), for one batch; the tree closes them at its end. The wd:
        # a directory renamed meanwhile keeps the fd, and another may take its old path.
        self.batch_fds: dict[str, tuple[int, int, int]] = {}

    # -- the root ----------------------------------------------------------------------------

    def open_root(self, flags: int = fs.PATH_FLAGS) -> int:
        """Open the root directory (see the tree's rules); raises OSError."""
        if self._follow and self._real_root is None:
            return os.open(self.root, flags & ~os.O_NOFOLLOW)
        if self._real_root is not None:
            return fs.open_dir(self._real_root, strict=True, flags=flags)
        return fs.open_dir(self.root, strict=False, flags=flags)

    def open_root_checked(self) -> int:
        """open_root, raising the binding's errors, and refusing a pseudo file system."""
        where = self._real_root or self.root
        try:
            fd = self.open_root()
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

    def root_error(self, err: int) -> InotifyError:
        """The error for a root whose watch could not be added (errno `err`)."""
        if err == errno.ENOENT:
            # The fd is open, so the missing piece is /proc/<pid>/fd, which every watch uses.
            return InotifyError(
                err, f"cannot watch {self.root!r}: /proc is not mounted (watches are added "
                "through /proc/self/fd); mount it (mount -t proc proc /proc)", self.root)
        return error_for(err, self.root, "inotify_add_watch")

    # -- watched directories -----------------------------------------------------------------

    def dir_fd(self, prefix: str, wd: int) -> tuple[int, int] | None:
        """An fd of the directory that watch `wd` (at `prefix`) is on, open until the batch ends.

        Opened from the root one name at a time with O_NOFOLLOW (O_PATH: no event), and
        checked to be the watched directory; None when the path no longer leads to it.
        """
        cached = self.batch_fds.get(prefix)
        if cached is not None and cached[2] == wd:
            return cached[0], cached[1]
        if len(self.batch_fds) >= BATCH_FDS:
            self.close_batch_fds()
        root_prefix = self.root_prefix
        try:
            root_wd = self._watches.root_wd
            root = self.batch_fds.get(root_prefix)
            if root is None:
                fd = self.open_root()
                st = os.fstat(fd)
                root = (fd, st.st_dev, root_wd)
                if not self.is_watch(fd, root_wd, st):
                    os.close(fd)
                    return None
                self.batch_fds[root_prefix] = root
            if prefix == root_prefix:
                return (root[0], root[1]) if wd == root_wd else None
            fd = fs.open_below(root[0], prefix[len(root_prefix):-1].split("/"),
                               follow=self._follow)
            st = os.fstat(fd)
            hit = (fd, st.st_dev)
        except OSError:
            return None
        if not self.is_watch(fd, wd, st):
            os.close(fd)
            return None
        stale = self.batch_fds.pop(prefix, None)
        if stale is not None:
            os.close(stale[0])
        self.batch_fds[prefix] = (*hit, wd)
        return hit

    def leads_to(self, prefix: str, wd: int) -> bool:
        """Whether `prefix` leads, now, to the directory of watch `wd`.

        Opened afresh from the root, outside the batch's fds: one of them opened at `prefix`
        holds its directory wherever that has moved since, and a walk may be using them.
        """
        try:
            fd = self.open_root()
            if prefix != self.root_prefix:  # open_below closes the root's fd, even on error
                fd = fs.open_below(fd, prefix[len(self.root_prefix):-1].split("/"), own=True,
                                   follow=self._follow)
        except OSError:
            return False
        try:
            return self.is_watch(fd, wd)
        finally:
            os.close(fd)

    def is_watch(self, fd: int, wd: int, st: os.stat_result | None = None) -> bool:
        """Whether the directory open as `fd` (`st`: its fstat, if at hand) is the one that
        watch `wd` is on."""
        # The path may name another directory than the watch's now (renamed, and its rename
        # not read yet): the directory is known by its identity, not by its path.
        return self.watch_on(fd, os.fstat(fd) if st is None else st) == wd

    def watch_on(self, fd: int, st: os.stat_result) -> int:
        """The wd of this tree's watch on the directory open as `fd`, `st` its fstat; -1 for
        none. From the tree's record where it can vouch for it (Identities.vouched), else from the
        kernel: adding bits a watch has returns its wd and changes nothing."""
        watches = self._watches
        identities = watches.identities
        wd = identities.vouched(st)
        if wd != UNSURE:
            return wd
        got = self._ino.add_watch_raw(fs.proc_path(fd, os.getpid()), self._narrow | IN_MASK_ADD)
        if got >= 0 and got not in watches.path_of:
            # A watch made so on a directory the tree does not watch: undone at once (its
            # IN_IGNORED names a wd the tree does not know, and is dropped).
            with contextlib.suppress(InotifyError):
                self._ino.rm_watch(got)
            got = -1
        # A device's file system type is asked at its first confirmation since distrust():
        # its number may be another file system's now.
        identities.checked(st, got, timely=got >= 0 and st.st_dev not in identities.verified
                           and _timely(fd))
        return max(got, -1)

    def set_mask(self, fd: int, wd: int, mask: int, pid: int) -> None:
        """Set the mask of watch `wd`, the directory open as `fd` (in process `pid`)."""
        got = self._ino.add_watch_raw(fs.proc_path(fd, pid), mask)
        if got >= 0 and got != wd and got not in self._watches.path_of:
            # The fd is not the directory of that watch, and not ours to watch.
            with contextlib.suppress(InotifyError):
                self._ino.rm_watch(got)

    def close_batch_fds(self) -> None:
        """Close the fds opened during this batch."""
        for fd, _, _ in self.batch_fds.values():
            os.close(fd)
        self.batch_fds.clear()


def _timely(fd: int) -> bool:
    """Whether the file system of the file open as `fd` stamps ctime from this machine's clock."""
    try:
        return fs.fs_type(fd) in fs.LOCAL_TIME_FS
    except OSError:
        return False


def _is_symlink(path: str) -> bool:
    try:
        return os.path.islink(path)
    except OSError:
        return False
