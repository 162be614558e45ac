"""A tree's first walk: its root watched, then everything below it (see watchd.inotify.tree)."""

from __future__ import annotations

import os

from watchd.inotify import fs
from watchd.inotify._binding import InotifyFd
from watchd.inotify.flags import IN_MASK_CREATE
from watchd.inotify.frames import Frame
from watchd.inotify.reach import Reach
from watchd.inotify.settings import Settings
from watchd.inotify.walk import Walker
from watchd.inotify.watches import TreeEvent, Watches


def start_tree(ino: InotifyFd, watches: Watches, reach: Reach, walker: Walker,
               settings: Settings, *, report: bool) -> list[TreeEvent]:
    """Watch the root (raising the binding's error if it cannot be) and all below it.

    With report, what is already there comes back as synthetic creates: for a root that
    reappeared, whose contents nobody has been told about.
    """
    s = settings
    fd = reach.open_root_checked()
    try:
        st = os.fstat(fd)
        walker.fs_type(st.st_dev, fd)
        wd = ino.add_watch_raw(fs.proc_path(fd, os.getpid()), s.narrow | IN_MASK_CREATE)
        if wd < 0:
            raise reach.root_error(-wd)
    except BaseException:
        os.close(fd)
        raise
    root_prefix = reach.root_prefix
    watches.remember(wd, root_prefix, st)
    watches.root_wd = wd
    out: list[TreeEvent] | None = [] if report else None
    if not s.recursive:
        if out is not None:
            walker.entries(fd, root_prefix, wd, out, None)
        if s.quiet:
            reach.set_mask(fd, wd, s.full, os.getpid())
        os.close(fd)
        return out or []
    subdirs = walker.entries(fd, root_prefix, wd, out, st)
    top = Frame(fd, "", root_prefix, st.st_dev, wd, subdirs=subdirs,
                fresh=True, own=True, widen=s.quiet)
    walker.walk(top, out, visited=walker.visited_set(st))
    return out or []
