"""The raw inotify calls and the InotifyError of the `inotify` package's API, on our binding."""

from __future__ import annotations

import os

from watchd.inotify import _binding, errors


class InotifyError(errors.InotifyError):
    """An inotify call failed: `.errno`, `.errmsg` (the C library's text) and `.path`."""

    def __init__(self, message: str, errno: int, path: str | None = None) -> None:
        super().__init__(errno, message, path)

    @property
    def errmsg(self) -> str:
        """os.strerror of the errno, e.g. 'Not a directory'."""
        return os.strerror(self.errno or 0)

    @classmethod
    def from_error(cls, error: errors.InotifyError) -> InotifyError:
        """The InotifyError of this API for an error of the binding, keeping its kind."""
        for kind, ours in _KINDS:
            if isinstance(error, kind):
                return ours(str(error), error.errno or 0, error.path)
        return cls(str(error), error.errno or 0, error.path)


# Raised instead of the binding's own classes, so that both `except calls.InotifyError` and
# `except watchd.inotify.WatchLimitError` (or FileNotFoundError, ...) catch them.
class WatchLimitError(InotifyError, errors.WatchLimitError):
    """ENOSPC: the per-user watch limit is reached."""


class InstanceLimitError(InotifyError, errors.InstanceLimitError):
    """EMFILE: too many inotify instances."""


class PermissionDeniedError(InotifyError, errors.PermissionDeniedError):
    """EACCES: the path cannot be read by this user."""


class PathNotFoundError(InotifyError, errors.PathNotFoundError):
    """ENOENT: the path does not exist."""


class NotADirectoryPathError(InotifyError, errors.NotADirectoryPathError):
    """ENOTDIR: the path or one of its parents is not a directory."""


_KINDS: tuple[tuple[type[errors.InotifyError], type[InotifyError]], ...] = (
    (errors.WatchLimitError, WatchLimitError),
    (errors.InstanceLimitError, InstanceLimitError),
    (errors.PermissionDeniedError, PermissionDeniedError),
    (errors.PathNotFoundError, PathNotFoundError),
    (errors.NotADirectoryPathError, NotADirectoryPathError),
)


def _fail(err: int, path: str | bytes | None, op: str) -> InotifyError:
    return InotifyError.from_error(errors.error_for(err, path, op))


def inotify_init(flags: int = 0) -> int:
    """Create an inotify instance (inotify_init1 with `flags`) and return its fd."""
    fd = _binding._call(_binding._libc().init1, int(flags))
    if fd < 0:
        raise _fail(-fd, None, "inotify_init1")
    return fd


def inotify_add_watch(
    fd: int, path: str | bytes | os.PathLike[str] | os.PathLike[bytes], mask: int
) -> int:
    """Add or replace the watch of `path` on inotify instance `fd`; return its wd."""
    raw = os.fsencode(path)
    wd = _binding._call(_binding._libc().add_watch, int(fd), raw, int(mask))
    if wd < 0:
        raise _fail(-wd, raw, "inotify_add_watch")
    return wd


def inotify_rm_watch(fd: int, wd: int) -> int:
    """Remove watch `wd` from inotify instance `fd`; return 0."""
    ret = _binding._call(_binding._libc().rm_watch, int(fd), int(wd))
    if ret < 0:
        raise _fail(-ret, None, f"inotify_rm_watch(wd={wd})")
    return 0


__all__ = [
    "InotifyError",
    "InstanceLimitError",
    "NotADirectoryPathError",
    "PathNotFoundError",
    "PermissionDeniedError",
    "WatchLimitError",
    "inotify_add_watch",
    "inotify_init",
    "inotify_rm_watch",
]
