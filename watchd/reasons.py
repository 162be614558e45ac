"""Why a watch's events may be missing: the reasons an "overflow" or a "watch_lost" notice gives.

A leaf that imports nothing of watchd. The watcher finds a reason (its channel carries it), the
daemon adds its own, and the protocol puts the value on the wire for clients to read: each of
them imports it from here, so none has to load another's layer for an enum.
"""

from __future__ import annotations

import enum


class OverflowReason(enum.StrEnum):
    """Why an "overflow" notice was sent."""

    KERNEL_QUEUE = "kernel_queue"
    WATCHER_RESTART = "watcher_restart"
    WATCH_LIMIT = "watch_limit"
    UNMOUNT = "unmount"  # a file system mounted inside the watched tree was unmounted
    DAEMON_RESTART = "daemon_restart"  # the daemon resumed from its durable state
    FORWARD_GAP = "forward_gap"  # a forwarder's position left the journal (watchd.forward)
    # A rescan missed a directory that moved while it ran: the watch is scanned again.
    SCAN_RACE = "scan_race"
    # A reload changed a watch (or turned its resync off) while a resync of it was under way:
    # that resync cannot finish, as its index starts over.
    RELOAD = "reload"
    # The watcher met an unexpected error in a watch and dropped its inotify watches, to try
    # again later: events were lost from then until the watch is back (or its root is gone).
    WATCH_FAILED = "watch_failed"


class LostReason(enum.StrEnum):
    """Why a "watch_lost" notice was sent."""

    DELETED = "deleted"
    UNMOUNTED = "unmounted"
    REMOVED = "removed"
    FORBIDDEN = "forbidden"
