"""Directories by file descriptor: opening without following links, and file system types.

A tree is walked by fd so that no path component is resolved twice: each directory is opened
relative to its parent's fd with O_NOFOLLOW, listed from that fd, and watched through it (the
kernel resolves /proc/<pid>/fd/N to the very inode the fd holds). A symbolic link swapped into
a path meanwhile is met as what it is, never followed.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import types
from collections.abc import Callable, Mapping

# O_NOFOLLOW refuses a symbolic link as the last component (ENOTDIR with O_DIRECTORY, as it is
# not a directory itself); O_DIRECTORY refuses anything else that is not a directory.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_FLAGS_FOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_PATH: a handle to walk through and watch through, which cannot be read from. Opening one
# causes no inotify event, where a real open is reported (IN_OPEN, IN_CLOSE_NOWRITE) to the
# watches of the directory and of its parent.
PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PATH_FLAGS_FOLLOW = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC

# statfs f_type of the pseudo file systems (linux/magic.h): their "files" are views of kernel
# state that inotify does not report on, and some of their directories cannot be listed even
# by root (/proc/1/map_files). A tree neither starts at nor descends into one of them.
PSEUDO_FS: Mapping[int, str] = types.MappingProxyType({
    0x00009FA0: "proc",
    0x62656572: "sysfs",
    0x0027E0EB: "cgroup",
    0x63677270: "cgroup2",
    0x64626720: "debugfs",
    0x74726163: "tracefs",
    0x73636673: "securityfs",
    0xCAFE4A11: "bpf",
    0x6165676C: "pstore",
    0xDE5E81E4: "efivarfs",
    0x62656570: "configfs",
    0xF97CFF8C: "selinuxfs",
    0x43415D53: "smackfs",
    0x42494E4D: "binfmt_misc",
    0x00001CD1: "devpts",
    0x65735543: "fusectl",
    0x6E736673: "nsfs",
})

# File systems on which a directory's link count is 2 + its number of subdirectories, so a
# count of 2 proves it has none (btrfs, overlayfs, FUSE, CIFS and others do not keep it so).
LEAF_COUNT_FS = frozenset({
    0x01021994,  # tmpfs
    0x0000EF53,  # ext2, ext3, ext4
    0x58465342,  # xfs
})

# File systems whose time stamps come from this machine's clock (not a server's, as NFS, CIFS
# or FUSE take them): a directory's ctime there tells when it last changed by that clock.
LOCAL_TIME_FS = frozenset({
    0x01021994,  # tmpfs
    0x0000EF53,  # ext2, ext3, ext4
    0x58465342,  # xfs
    0x9123683E,  # btrfs
    0xF2F52010,  # f2fs
})

_STATFS_SIZE = 256  # larger than struct statfs on every architecture


@functools.cache
def _fstatfs() -> Callable[..., int]:
    # Loaded on first use, as the inotify calls are: importing watchd touches no library.
    fn = ctypes.CDLL(None, use_errno=True).fstatfs
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def fs_type(fd: int) -> int:
    """The statfs f_type (the file system's magic number) of the file open as `fd`."""
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if _fstatfs()(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    # f_type is the first field, a C long (__fsword_t); magic numbers fit in 32 bits.
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def pseudo_fs_of(fd: int) -> str | None:
    """The name of the pseudo file system `fd` is on (e.g. "proc"), None for a real one."""
    return PSEUDO_FS.get(fs_type(fd))


def pseudo_fs_at(path: str) -> str | None:
    """pseudo_fs_of for a path, or for its nearest existing ancestor when it does not exist."""
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_PATH)
        except OSError:
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent
            continue
        try:
            return pseudo_fs_of(fd)
        finally:
            os.close(fd)


def proc_path(fd: int, pid: int) -> bytes:
    """The path under which the kernel resolves to exactly the file open as `fd`."""
    # /proc/<pid> rather than /proc/self: one symbolic link less to resolve, per directory.
    return b"/proc/%d/fd/%d" % (pid, fd)


def open_dir(path: str, *, strict: bool, flags: int = DIR_FLAGS) -> int:
    """Open a directory (to read it) without following a symbolic link as its last component.

    With strict, no component is followed at all: `path` is walked from "/" one name at a
    time (for a path resolved beforehand, which should hold no link). Otherwise the parent
    directories are resolved as usual. Raises OSError (ENOTDIR for a symbolic link).
    """
    if not strict:
        parent, _, name = path.rstrip("/").rpartition("/")
        if not name:
            return os.open("/", flags)
        pfd = os.open(parent or "/", PATH_FLAGS_FOLLOW)
        try:
            return os.open(name, flags, dir_fd=pfd)
        finally:
            os.close(pfd)
    names = [n for n in path.split("/") if n]
    if not names:
        return os.open("/", flags)
    pfd = open_below(os.open("/", PATH_FLAGS), names[:-1], own=True)
    try:
        return os.open(names[-1], flags, dir_fd=pfd)
    finally:
        os.close(pfd)


def open_below(fd: int, names: list[str], *, own: bool = False, follow: bool = False) -> int:
    """An O_PATH fd of the directory reached from the directory `fd` by `names`, one at a time.

    Each name is opened relative to the previous directory with O_NOFOLLOW (unless follow),
    so the result lies below `fd` whatever is renamed or replaced meanwhile. With own, `fd`
    is closed too. Raises OSError.
    """
    flags = PATH_FLAGS_FOLLOW if follow else PATH_FLAGS
    if not names:
        return fd if own else os.open(".", flags, dir_fd=fd)
    cur = fd
    try:
        for name in names:
            if name in (".", "..") or "/" in name:
                raise OSError(errno.EINVAL, f"not a name in a directory: {name!r}")
            nxt = os.open(name, flags, dir_fd=cur)
            if cur != fd or own:
                os.close(cur)
            cur = nxt
    except BaseException:
        if cur != fd or own:
            os.close(cur)
        raise
    return cur
