"""Event kinds and their inotify bits, shared by the watcher, the daemon and clients."""

from __future__ import annotations

import enum


class Kind(enum.StrEnum):
    """What happened to a path; one per inotify event bit, named as on the wire."""

    ACCESS = "access"
    MODIFY = "modify"
    ATTRIB = "attrib"
    CLOSE_WRITE = "close_write"
    CLOSE_NOWRITE = "close_nowrite"
    OPEN = "open"
    MOVED_FROM = "moved_from"
    MOVED_TO = "moved_to"
    CREATE = "create"
    DELETE = "delete"
    DELETE_SELF = "delete_self"
    MOVE_SELF = "move_self"


# The inotify bit behind each kind (the values are fixed by the kernel ABI).
KIND_BITS: dict[Kind, int] = {
    Kind.ACCESS: 0x00000001,
    Kind.MODIFY: 0x00000002,
    Kind.ATTRIB: 0x00000004,
    Kind.CLOSE_WRITE: 0x00000008,
    Kind.CLOSE_NOWRITE: 0x00000010,
    Kind.OPEN: 0x00000020,
    Kind.MOVED_FROM: 0x00000040,
    Kind.MOVED_TO: 0x00000080,
    Kind.CREATE: 0x00000100,
    Kind.DELETE: 0x00000200,
    Kind.DELETE_SELF: 0x00000400,
    Kind.MOVE_SELF: 0x00000800,
}

# Set in the mask of an event the daemon made up after a loss (watchd.diff), never by the
# kernel: no event carries 0x08000000 (the watch flags, 0x01000000 and up, are never set in one).
SYNTHETIC = 0x08000000

ALL_KINDS: frozenset[Kind] = frozenset(Kind)
# The default of a watch's `events`: the read-only kinds are noise for almost every use.
DEFAULT_KINDS: frozenset[Kind] = ALL_KINDS - {Kind.ACCESS, Kind.OPEN, Kind.CLOSE_NOWRITE}


def kinds_mask(kinds: frozenset[Kind] | set[Kind]) -> int:
    """The inotify mask bits that produce the given kinds."""
    mask = 0
    for kind in kinds:
        mask |= KIND_BITS[kind]
    return mask


def kind_of(mask: int) -> Kind | None:
    """The kind of one kernel event mask (each kernel event carries exactly one kind bit)."""
    for kind, bit in KIND_BITS.items():
        if mask & bit:
            return kind
    return None
