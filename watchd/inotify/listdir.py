"""Listing one directory of a walk, open by fd: its subdirectories, and its entries reported as
found (synthetic creates) when the directory is new to the caller.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from watchd.inotify import fs
from watchd.inotify.unreadable import Unreadable
from watchd.inotify.watches import TreeEvent, synthetic_create


def list_dir(
    fd: int,
    prefix: str,
    *,
    follow: bool,
    prune: Callable[[str], bool] | None,
    names: set[str] | None,
    out: list[TreeEvent] | None,
    unreadable: Unreadable,
) -> list[str]:
    """The subdirectories of the directory open as `fd` at `prefix` (`follow`: links to
    directories count; `prune`: names left out). With `names`, each entry is reported into
    `out` and its name added to `names`. An error is recorded in `unreadable`, and what was
    listed before it is kept."""
    subdirs: list[str] = []
    try:
        # Opened for reading just for the listing: its open and close are reported to its
        # watch and its parent's while those are still narrow.
        lfd = os.open(".", fs.DIR_FLAGS, dir_fd=fd)
        try:
            # Not closed before the end: an entry's stat (a link followed, or a file system
            # that gives no d_type) is made relative to it.
            with os.scandir(lfd) as it:
                for entry in it:
                    name = entry.name
                    try:
                        is_dir = entry.is_dir(follow_symlinks=follow)
                    except OSError:
                        is_dir = False
                    if is_dir:
                        if prune is not None and prune(name):
                            continue
                        subdirs.append(name)
                    if names is not None and out is not None:
                        names.add(name)
                        out.append(synthetic_create(prefix + name, is_dir))
        finally:
            os.close(lfd)
    except OSError as e:
        unreadable.record(prefix, e)  # what was listed before the error is kept
    return subdirs
