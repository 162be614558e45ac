"""The walk of a watched tree into the layout of an index (watchd.index), in the watcher.

A scan is `{directory path: {name: record}}` (watchd.index.Dirs): every directory listed has
a key, even an empty one; the root's key is the watch's path. The watcher sends it whole to
the daemon (channel.Scan), which compares it with the watch's index and keeps it as the next.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Generator

from watchd.index import Dirs, join, pack

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def scan(root: str, real_root: str, *, recursive: bool,
         wanted: Callable[[str], bool] | None,
         prune: Callable[[str], bool] | None) -> Dirs:
    """The tree below real_root as an index reported under root, walked by file descriptor.

    Each directory is opened relative to its parent with O_NOFOLLOW, so that a link swapped in
    for a directory is recorded as a link, never followed out of the tree. Directories whose
    name `prune` matches (exclude) are neither recorded nor entered; other names are recorded
    when `wanted` accepts them (include/exclude, as events are), and directories are entered
    whatever their name. Raises OSError when the root itself cannot be opened.
    """
    dirs: Dirs = {}
    for part in scan_parts(root, real_root, recursive=recursive, wanted=wanted, prune=prune):
        dirs.update(part)
    return dirs


def scan_parts(root: str, real_root: str, *, recursive: bool,
               wanted: Callable[[str], bool] | None,
               prune: Callable[[str], bool] | None,
               part_size: int = 1 << 62) -> Generator[Dirs, None, None]:
    """scan, in parts: each part holds whole directories, about part_size entries in all
    (the last part may be empty). A caller can do other work between two parts, as the
    watcher does while it fills a watch's first index (see Watcher.fill_step), or says it is
    alive during a long scan.

    Open directories are held only along the current branch (depth first), and closed when
    the generator is closed before its end. Raises OSError (at the first part) when the root
    cannot be opened.
    """
    fd = os.open(real_root, _O_DIR)
    dirs: Dirs = {}
    stack: list[tuple[int, str, list[tuple[str, int, int]]]] = []
    try:
        stack.append((fd, root, _list(fd, root, dirs, wanted, prune)))
        entries = len(dirs[root])
        while stack:
            if entries >= part_size:
                yield dirs
                dirs, entries = {}, 0
            top_fd, top, subdirs = stack[-1]
            if not recursive or not subdirs:
                stack.pop()
                if top_fd != fd:
                    os.close(top_fd)
                continue
            name, dev, ino = subdirs.pop()
            try:
                child = os.open(name, _O_DIR, dir_fd=top_fd)
            except OSError:
                continue  # gone, replaced by a link, or unreadable: recorded as listed, not entered
            child_path = join(top, name)
            try:
                st = os.fstat(child)
                if (st.st_dev, st.st_ino) != (dev, ino):
                    raise FileNotFoundError  # replaced since it was listed: its events say so
                grand = _list(child, child_path, dirs, wanted, prune)
            except OSError:
                os.close(child)
                continue
            entries += len(dirs[child_path])
            stack.append((child, child_path, grand))
        yield dirs
    finally:
        for top_fd, _, _ in stack:
            if top_fd != fd:
                os.close(top_fd)
        os.close(fd)


def _list(fd: int, path: str, dirs: Dirs, wanted: Callable[[str], bool] | None,
          prune: Callable[[str], bool] | None) -> list[tuple[str, int, int]]:
    """Record one directory's entries; returns its subdirectories as (name, dev, ino)."""
    children: dict[str, int] = {}
    subdirs: list[tuple[str, int, int]] = []
    with os.scandir(fd) as it:
        for entry in it:
            name = entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # gone since it was listed
            if stat.S_ISDIR(st.st_mode):
                if prune is not None and prune(name):
                    continue
                subdirs.append((name, st.st_dev, st.st_ino))
            if wanted is None or wanted(name):
                children[name] = pack(st)
    dirs[path] = children
    return subdirs
