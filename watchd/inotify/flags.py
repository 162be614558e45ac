"""The inotify flag bits of <sys/inotify.h>, as an IntFlag and as plain ints for the hot path."""

from __future__ import annotations

import enum
from typing import Final


class Mask(enum.IntFlag):
    """Every IN_* bit: event kinds, watch options, event-only bits and inotify_init1 flags."""

    # Event kinds, requested in a watch's mask and reported in an event's mask.
    IN_ACCESS = 0x00000001
    IN_MODIFY = 0x00000002
    IN_ATTRIB = 0x00000004
    IN_CLOSE_WRITE = 0x00000008
    IN_CLOSE_NOWRITE = 0x00000010
    IN_OPEN = 0x00000020
    IN_MOVED_FROM = 0x00000040
    IN_MOVED_TO = 0x00000080
    IN_CREATE = 0x00000100
    IN_DELETE = 0x00000200
    IN_DELETE_SELF = 0x00000400
    IN_MOVE_SELF = 0x00000800

    # Reported by the kernel whatever the watch asked for.
    IN_UNMOUNT = 0x00002000
    IN_Q_OVERFLOW = 0x00004000
    IN_IGNORED = 0x00008000

    # Options of inotify_add_watch.
    IN_ONLYDIR = 0x01000000
    IN_DONT_FOLLOW = 0x02000000
    IN_EXCL_UNLINK = 0x04000000
    IN_MASK_CREATE = 0x10000000
    IN_MASK_ADD = 0x20000000
    IN_ISDIR = 0x40000000
    IN_ONESHOT = 0x80000000

    # Combinations.
    IN_CLOSE = 0x00000018
    IN_MOVE = 0x000000C0
    IN_ALL_EVENTS = 0x00000FFF

    # Flags of inotify_init1 (O_CLOEXEC, O_NONBLOCK). They live in another argument, so
    # IN_NONBLOCK sharing its value with IN_MOVE_SELF is harmless; being declared last,
    # it is the alias and masks still print as IN_MOVE_SELF.
    IN_CLOEXEC = 0x00080000
    IN_NONBLOCK = 0x00000800


# Plain ints: IntFlag arithmetic costs a Python-level call per operator, too slow per event.
IN_ACCESS: Final = int(Mask.IN_ACCESS)
IN_MODIFY: Final = int(Mask.IN_MODIFY)
IN_ATTRIB: Final = int(Mask.IN_ATTRIB)
IN_CLOSE_WRITE: Final = int(Mask.IN_CLOSE_WRITE)
IN_CLOSE_NOWRITE: Final = int(Mask.IN_CLOSE_NOWRITE)
IN_OPEN: Final = int(Mask.IN_OPEN)
IN_MOVED_FROM: Final = int(Mask.IN_MOVED_FROM)
IN_MOVED_TO: Final = int(Mask.IN_MOVED_TO)
IN_CREATE: Final = int(Mask.IN_CREATE)
IN_DELETE: Final = int(Mask.IN_DELETE)
IN_DELETE_SELF: Final = int(Mask.IN_DELETE_SELF)
IN_MOVE_SELF: Final = int(Mask.IN_MOVE_SELF)
IN_UNMOUNT: Final = int(Mask.IN_UNMOUNT)
IN_Q_OVERFLOW: Final = int(Mask.IN_Q_OVERFLOW)
IN_IGNORED: Final = int(Mask.IN_IGNORED)
IN_ONLYDIR: Final = int(Mask.IN_ONLYDIR)
IN_DONT_FOLLOW: Final = int(Mask.IN_DONT_FOLLOW)
IN_EXCL_UNLINK: Final = int(Mask.IN_EXCL_UNLINK)
IN_MASK_CREATE: Final = int(Mask.IN_MASK_CREATE)
IN_MASK_ADD: Final = int(Mask.IN_MASK_ADD)
IN_ISDIR: Final = int(Mask.IN_ISDIR)
IN_ONESHOT: Final = int(Mask.IN_ONESHOT)
IN_CLOSE: Final = int(Mask.IN_CLOSE)
IN_MOVE: Final = int(Mask.IN_MOVE)
IN_ALL_EVENTS: Final = int(Mask.IN_ALL_EVENTS)
IN_CLOEXEC: Final = int(Mask.IN_CLOEXEC)
IN_NONBLOCK: Final = int(Mask.IN_NONBLOCK)

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
    "Mask",
]
