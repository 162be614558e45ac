"""What a tree watches and reports, and the watch masks that follow from it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from watchd.inotify.flags import (
    IN_ACCESS,
    IN_ALL_EVENTS,
    IN_CLOSE_NOWRITE,
    IN_CREATE,
    IN_DELETE_SELF,
    IN_EXCL_UNLINK,
    IN_MASK_ADD,
    IN_MASK_CREATE,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONESHOT,
    IN_ONLYDIR,
    IN_OPEN,
)

# The bits the tree itself needs, whatever the caller asked for.
_BOOKKEEPING = IN_CREATE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
# Events that listing a directory causes on it and on its parent's watch.
_LISTING_NOISE = IN_OPEN | IN_ACCESS | IN_CLOSE_NOWRITE

@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """What a tree watches and reports, and the watch masks that follow from it."""

    report: int  # the event bits reported to the caller
    full: int  # the mask of a watch
    narrow: int  # `full` less what listing a directory causes, while it is listed (quiet)
    quiet: bool
    quiet_parent: bool
    skip_leaves: bool  # a directory that cannot hold a subdirectory need not be listed
    recursive: bool
    synthetic: bool
    follow: bool
    real_fs_only: bool
    prune: Callable[[str], bool] | None
    progress: Callable[[int], None] | None  # told the directories watched, during a scan

    @classmethod
    def of(cls, mask: int, *, recursive: bool, prune: Callable[[str], bool] | None,
           follow_symlinks: bool, synthetic: bool, quiet_listing: bool, quiet_parent: bool,
           progress: Callable[[int], None] | None, real_fs_only: bool) -> Settings:
        """The settings of Tree(..., mask, ...) (see its arguments)."""
        report = int(mask) & IN_ALL_EVENTS
        # ONESHOT and MASK_ADD would break the bookkeeping; the tree manages its own masks.
        wanted = int(mask) & ~(IN_ONESHOT | IN_MASK_ADD | IN_MASK_CREATE)
        # No IN_DONT_FOLLOW: watches are added through /proc/<pid>/fd/N, a link the kernel
        # must follow to reach the directory, which the fd already pins.
        full = wanted | _BOOKKEEPING | IN_ONLYDIR | IN_EXCL_UNLINK
        quiet = quiet_listing and bool(report & _LISTING_NOISE)
        # The parent's watch would report the listing of a new directory too; narrowing it for
        # that moment hides it (quiet_parent=False keeps it, as the `inotify` package does).
        quiet_parent = quiet and quiet_parent
        return cls(
            report=report,
            full=full,
            narrow=full & ~_LISTING_NOISE if quiet else full,
            quiet=quiet,
            quiet_parent=quiet_parent,
            # Unless the listing is to be seen: the parent's watch reports it when it is not
            # narrowed. (Nor when links are followed: a link to a directory does not count in
            # the link count; see Walker.entries.)
            skip_leaves=not follow_symlinks and (quiet_parent or not report & _LISTING_NOISE),
            recursive=recursive,
            synthetic=synthetic,
            follow=follow_symlinks,
            real_fs_only=real_fs_only,
            prune=prune,
            progress=progress,
        )
