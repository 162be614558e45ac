"""The IN_* constants and MASK_LOOKUP table, under the names the `inotify` package uses."""

from __future__ import annotations

from typing import Final

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
    IN_IGNORED,
    IN_ISDIR,
    IN_MASK_ADD,
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
)

# Bit -> name, in the order that package's table iterates in, which fixes the order of the
# type names reported with each event. Its table lists IN_NONBLOCK (0o4000) second and later
# IN_MOVE_SELF, which has the same value: the name IN_MOVE_SELF wins but keeps the second slot.
# IN_EXCL_UNLINK and IN_MASK_CREATE are absent there, so they are absent here too.
MASK_LOOKUP: Final[dict[int, str]] = {
    IN_CLOEXEC: "IN_CLOEXEC",
    IN_MOVE_SELF: "IN_MOVE_SELF",
    IN_ACCESS: "IN_ACCESS",
    IN_MODIFY: "IN_MODIFY",
    IN_ATTRIB: "IN_ATTRIB",
    IN_CLOSE_WRITE: "IN_CLOSE_WRITE",
    IN_CLOSE_NOWRITE: "IN_CLOSE_NOWRITE",
    IN_OPEN: "IN_OPEN",
    IN_MOVED_FROM: "IN_MOVED_FROM",
    IN_MOVED_TO: "IN_MOVED_TO",
    IN_CREATE: "IN_CREATE",
    IN_DELETE: "IN_DELETE",
    IN_DELETE_SELF: "IN_DELETE_SELF",
    IN_UNMOUNT: "IN_UNMOUNT",
    IN_Q_OVERFLOW: "IN_Q_OVERFLOW",
    IN_IGNORED: "IN_IGNORED",
    IN_ONLYDIR: "IN_ONLYDIR",
    IN_DONT_FOLLOW: "IN_DONT_FOLLOW",
    IN_MASK_ADD: "IN_MASK_ADD",
    IN_ISDIR: "IN_ISDIR",
    IN_ONESHOT: "IN_ONESHOT",
}

__all__ = [
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
    "IN_IGNORED",
    "IN_ISDIR",
    "IN_MASK_ADD",
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
    "MASK_LOOKUP",
]
