"""Event kinds and their inotify bits, shared by the watcher, the daemon and clients."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from watchd.inotify.flags import Mask


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


# The inotify bit behind each kind: the kind's name is the bit's without "IN_".
KIND_BITS: Final[Mapping[Kind, int]] = MappingProxyType(
    {kind: int(Mask[f"IN_{kind.name}"]) for kind in Kind}
)
# The kinds as a message lists them: "access, modify, ...".
KIND_LIST: Final = ", ".join(Kind)

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

