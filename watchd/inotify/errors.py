"""Errors of the inotify binding, each message saying what failed, where and what to do."""

from __future__ import annotations

import errno as _errno
import os

from watchd.errors import WatchdError

_PROC_DIR = "/proc/sys/fs/inotify"


def proc_limit(name: str) -> int | None:
    """The value of /proc/sys/fs/inotify/<name>, or None when it cannot be read."""
    try:
        with open(os.path.join(_PROC_DIR, name), "rb") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _show(path: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None) -> str | None:
    # Decoded with surrogateescape so that a non-UTF-8 path can still be named in a message.
    return None if path is None else os.fsdecode(path)


class InotifyError(WatchdError, OSError):
    """An inotify call failed; `.errno` is the kernel's errno and `.path` the path involved."""

    def __init__(self, errno: int, message: str, path: str | None = None) -> None:
        # OSError(errno, strerror) sets .errno/.strerror and keeps args picklable.
        super().__init__(errno, message)
        self.path = path
        self.filename = path

    def __str__(self) -> str:
        return str(self.strerror)


class WatchLimitError(InotifyError):
    """ENOSPC from inotify_add_watch: the per-user watch limit is reached."""


class DirectoryBudgetError(WatchLimitError):
    """A tree's own max_directories is used up (the kernel's limit may not be)."""

    def __init__(self, budget: int, path: str) -> None:
        super().__init__(
            _errno.ENOSPC,
            f"this watch's budget of {budget} directories is used up (its max_directories, "
            "by default a fair share of fs.inotify.max_user_watches): raise max_directories "
            "for this watch, or watch a smaller tree",
            path,
        )


class InstanceLimitError(InotifyError):
    """EMFILE from inotify_init1: too many inotify instances (or open files)."""


class PermissionDeniedError(InotifyError, PermissionError):
    """EACCES: the path cannot be read by this user."""


class PathNotFoundError(InotifyError, FileNotFoundError):
    """ENOENT: the path does not exist."""


class NotADirectoryPathError(InotifyError, NotADirectoryError):
    """ENOTDIR: the path (or one of its parents) is not a directory."""


class PseudoFileSystemError(InotifyError):
    """The directory is on a pseudo file system (/proc, /sys, ...), which is not watched."""


def _user_ns_limit(name: str) -> int | None:
    # /proc/sys/user/max_inotify_* hold the limit of this process's user namespace, which
    # a container may set lower than the host-wide fs.inotify value it cannot change.
    try:
        with open(f"/proc/sys/user/max_inotify_{name}", "rb") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def effective_watch_limit() -> int | None:
    """The watches this user may hold: the host-wide limit or its user namespace's, the lower."""
    limits = (proc_limit("max_user_watches"), _user_ns_limit("watches"))
    known = [v for v in limits if v is not None]
    return min(known, default=None)


def _limit_text(name: str, ns_name: str) -> str:
    value = proc_limit(name)
    text = f"fs.inotify.{name}={'unknown' if value is None else value}"
    ns_value = _user_ns_limit(ns_name)
    if ns_value is not None and (value is None or ns_value < value):
        text += f", user.max_inotify_{ns_name}={ns_value} in this user namespace"
    return text


def error_for(
    errno: int,
    path: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None,
    op: str,
) -> InotifyError:
    """Build the InotifyError subclass that fits `errno` for a failed `op` on `path`."""
    shown = _show(path)
    where = f" {shown!r}" if shown is not None else ""
    if errno == _errno.ENOSPC:
        limits = _limit_text("max_user_watches", "watches")
        return WatchLimitError(
            errno,
            f"inotify watch limit reached ({limits}) while watching{where}: raise it with "
            "`sysctl fs.inotify.max_user_watches=N` (persist it in /etc/sysctl.d/), "
            "or watch fewer directories",
            shown,
        )
    if errno == _errno.EMFILE:
        limits = _limit_text("max_user_instances", "instances")
        return InstanceLimitError(
            errno,
            f"cannot create an inotify instance: limit reached ({limits}, or this "
            "process's open-file limit): raise it with "
            "`sysctl fs.inotify.max_user_instances=N`, or stop other programs of this user "
            "that use inotify",
            shown,
        )
    if errno == _errno.EACCES:
        return PermissionDeniedError(
            errno,
            f"cannot watch{where}: permission denied; give this user read access to it "
            "(and search access to its parent directories)",
            shown,
        )
    if errno == _errno.ENOENT:
        return PathNotFoundError(
            errno, f"cannot watch{where}: no such file or directory; create it first", shown
        )
    if errno == _errno.ENOTDIR:
        return NotADirectoryPathError(
            errno,
            f"cannot watch{where}: not a directory (or a parent of it is not); "
            "watch a directory instead",
            shown,
        )
    if errno == _errno.EEXIST:
        return InotifyError(
            errno,
            f"cannot watch{where}: this inotify instance already watches it "
            "(under this or another name)",
            shown,
        )
    return InotifyError(errno, f"inotify {op} failed{where}: {os.strerror(errno)}", shown)


__all__ = [
    "DirectoryBudgetError",
    "InotifyError",
    "InstanceLimitError",
    "NotADirectoryPathError",
    "PathNotFoundError",
    "PermissionDeniedError",
    "PseudoFileSystemError",
    "WatchLimitError",
    "error_for",
    "proc_limit",
]
