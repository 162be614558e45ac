"""inotify for watchd: a ctypes binding, its flags and errors, and a compatibility API.

Importing the package loads only the flag bits (watchd.inotify.flags): the event kinds and the
wire format need them, in every client and in watchctl, where the ctypes binding is of no use.
The binding and the errors load on the first use of one of their names here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from watchd.inotify.flags import (
    IN_ACCESS,
    IN_ALL_EVENTS,
    IN_ATTRIB,
    IN_CLOEXEC,
    IN_CLOSE,
    IN_CLOSE_NOWRITE,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_DONT_FOLLOW,
    IN_EXCL_UNLINK,
    IN_IGNORED,
    IN_ISDIR,
    IN_MASK_ADD,
    IN_MASK_CREATE,
    IN_MODIFY,
    IN_MOVE,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_NONBLOCK,
    IN_ONESHOT,
    IN_ONLYDIR,
    IN_OPEN,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    Mask,
)

if TYPE_CHECKING:
    from watchd.inotify._binding import (
        HEADER_SIZE,
        MIN_READ_SIZE,
        InotifyFd,
        InotifyLimits,
        RawEvent,
        parse_events,
        read_limits,
    )
    from watchd.inotify.errors import (
        InotifyError,
        InstanceLimitError,
        NotADirectoryPathError,
        PathNotFoundError,
        PermissionDeniedError,
        PseudoFileSystemError,
        WatchLimitError,
        error_for,
    )

# The module each name not loaded with the package comes from.
_LAZY: dict[str, str] = {
    "HEADER_SIZE": "watchd.inotify._binding",
    "MIN_READ_SIZE": "watchd.inotify._binding",
    "InotifyFd": "watchd.inotify._binding",
    "InotifyLimits": "watchd.inotify._binding",
    "RawEvent": "watchd.inotify._binding",
    "parse_events": "watchd.inotify._binding",
    "read_limits": "watchd.inotify._binding",
    "InotifyError": "watchd.inotify.errors",
    "InstanceLimitError": "watchd.inotify.errors",
    "NotADirectoryPathError": "watchd.inotify.errors",
    "PathNotFoundError": "watchd.inotify.errors",
    "PermissionDeniedError": "watchd.inotify.errors",
    "PseudoFileSystemError": "watchd.inotify.errors",
    "WatchLimitError": "watchd.inotify.errors",
    "error_for": "watchd.inotify.errors",
}


def __getattr__(name: str) -> Any:
    """A name of the binding or the errors, from its module (imported on first use)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "HEADER_SIZE",
    "IN_ACCESS",
    "IN_ALL_EVENTS",
    "IN_ATTRIB",
    "IN_CLOEXEC",
    "IN_CLOSE",
    "IN_CLOSE_NOWRITE",
    "IN_CLOSE_WRITE",
    "IN_CREATE",
    "IN_DELETE",
    "IN_DELETE_SELF",
    "IN_DONT_FOLLOW",
    "IN_EXCL_UNLINK",
    "IN_IGNORED",
    "IN_ISDIR",
    "IN_MASK_ADD",
    "IN_MASK_CREATE",
    "IN_MODIFY",
    "IN_MOVE",
    "IN_MOVED_FROM",
    "IN_MOVED_TO",
    "IN_MOVE_SELF",
    "IN_NONBLOCK",
    "IN_ONESHOT",
    "IN_ONLYDIR",
    "IN_OPEN",
    "IN_Q_OVERFLOW",
    "IN_UNMOUNT",
    "MIN_READ_SIZE",
    "InotifyError",
    "InotifyFd",
    "InotifyLimits",
    "InstanceLimitError",
    "Mask",
    "NotADirectoryPathError",
    "PathNotFoundError",
    "PermissionDeniedError",
    "PseudoFileSystemError",
    "RawEvent",
    "WatchLimitError",
    "error_for",
    "parse_events",
    "read_limits",
]
