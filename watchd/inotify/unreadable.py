"""The directories of a tree that could not be opened or listed: remembered, and logged
rate-limited.
"""

from __future__ import annotations

import errno
import logging
import os
import time

from watchd.inotify.watches import dir_path

# One logger for all that the tree says, whichever of its modules says it.
log = logging.getLogger("watchd.inotify.tree")

FAILED_KEPT = 1024  # unreadable directories remembered by path; past it, only counted
LOG_EVERY_S = 10.0  # at most one log line per tree this often about unreadable directories


class Unreadable:
    """The directories of a tree that could not be opened or listed, logged rate-limited.

    Mutable: not a value.
    """

    __slots__ = ("_log_after", "_log_skipped", "_root", "extra", "failed")

    def __init__(self, root: str) -> None:
        self._root = root
        self.failed: dict[str, str] = {}  # prefix -> what went wrong, FAILED_KEPT at most
        self.extra = 0  # more of them, only counted
        self._log_after = 0.0
        self._log_skipped = 0

    def __len__(self) -> int:
        return len(self.failed) + self.extra

    def record(self, prefix: str, e: OSError | int) -> None:
        """Record a directory that cannot be opened or listed, and log it (rate-limited)."""
        err = e if isinstance(e, int) else (e.errno or errno.EIO)
        reason = os.strerror(err)
        if prefix in self.failed or len(self.failed) < FAILED_KEPT:
            self.failed[prefix] = reason
        else:
            self.extra += 1
        now = time.monotonic()
        if now < self._log_after:
            self._log_skipped += 1
            return
        more = f" ({self._log_skipped} more since the last report)" if self._log_skipped else ""
        log.warning("%s: cannot read %s: %s; what is below it is not watched%s",
                    self._root, dir_path(prefix), reason, more)
        self._log_after = now + LOG_EVERY_S
        self._log_skipped = 0

    def clear(self) -> None:
        """Forget them all (a resync looks at every directory again)."""
        self.failed.clear()
        self.extra = 0
