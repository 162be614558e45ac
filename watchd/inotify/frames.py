"""The frames of a walk by fd: one per directory on the way down, each open or closed to spare
fds, and opening a closed one again from its nearest open ancestor.
"""

from __future__ import annotations

from watchd.inotify import fs

# Directories a walk holds open at once: its deepest ones (one fd per level below the
# walk's start). Shallower ones are closed and opened again from an ancestor when needed.
MAX_HELD_FDS = 64


class Frame:
    """One directory of a walk: open (fd >= 0, or closed to spare fds), with subdirs to visit.

    Mutable, and private to one walk: not a value.
    """

    __slots__ = ("along", "dev", "fd", "fresh", "name", "own", "prefix", "subdirs", "wd",
                 "widen")

    def __init__(self, fd: int, name: str, prefix: str, dev: int, wd: int, *,
                 subdirs: list[str], fresh: bool, own: bool, widen: bool,
                 along: bool = False) -> None:
        self.fd = fd
        self.name = name  # its name in the parent frame's directory
        self.prefix = prefix
        self.dev = dev
        self.wd = wd  # < 0: not watched (past the watch limit)
        self.subdirs = subdirs  # names still to visit, visited from the end
        self.fresh = fresh  # watched by this walk: everything it holds is new
        self.own = own  # the walk closes fd when it leaves the frame
        self.widen = widen  # added narrow: set the full mask when leaving the frame
        # New to the caller as a whole: a subdirectory already watched at its path is listed
        # and reported again, with all it holds (see Known.moved_here).
        self.along = along


def reopen(frames: list[Frame], *, follow: bool) -> bool:
    """Open the last frame's directory again, from its nearest ancestor frame still open."""
    last = len(frames) - 1
    i = last - 1
    while frames[i].fd < 0:
        i -= 1  # frames[0] is never closed
    names = [frames[j].name for j in range(i + 1, last + 1)]
    try:
        frames[last].fd = fs.open_below(frames[i].fd, names, follow=follow)
    except OSError:
        return False
    return True
