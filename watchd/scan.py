"""The walk of a watched tree into the layout of an index (watchd.index), in the watcher.

A scan is `{directory path: children}`: every directory listed has a key, even an empty one;
the root's key is the watch's path. The watcher builds each directory's children at rest
(watchd.listing.Frozen: its names joined, its records packed), the form the daemon keeps: the
daemon then compares a directory of the scan with the index's by one equality of a str and a
bytes, and takes the scan as the next index as it is (see watchd.resync.compared).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator

from watchd.listing import AtRest, Dirs, join, record_bytes, thawed

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_S_IFMT, _S_IFDIR = 0o170000, 0o040000


def scan(root: str, real_root: str, *, recursive: bool,
         wanted: Callable[[str], bool] | None,
         prune: Callable[[str], bool] | None) -> Dirs:
    """The tree below real_root as an index reported under root, walked by file descriptor,
    in a scan's layout (dicts, as watchd.diff takes them).

    Each directory is opened relative to its parent with O_NOFOLLOW, so that a link swapped in
    for a directory is recorded as a link, never followed out of the tree. Directories whose
    name `prune` matches (exclude) are neither recorded nor entered; other names are recorded
    when `wanted` accepts them (include/exclude, as events are), and directories are entered
    whatever their name. Raises OSError when the root itself cannot be opened.
    """
    dirs: AtRest = {}
    for part in scan_parts(root, real_root, recursive=recursive, wanted=wanted, prune=prune):
        dirs.update(part)
    return thawed(dirs)


def scan_parts(root: str, real_root: str, *, recursive: bool,
               wanted: Callable[[str], bool] | None,
               prune: Callable[[str], bool] | None,
               part_size: int = 1 << 62,
               entered: Callable[[int, os.stat_result], bool] | None = None,
               ) -> Generator[AtRest, None, None]:
    """scan, in parts, each directory at rest: each part holds whole directories, about
    part_size entries in all (the last part may be empty). A caller can do other work between
    two parts, as the watcher does while it fills a watch's first index (see watchd.fill), or
    says it is alive during a long scan.

    Open directories are held only along the current branch (depth first), and closed when
    the generator is closed before its end. Raises OSError (at the first part) when the root
    cannot be opened.

    `entered`, given a subdirectory open as a descriptor and its fstat, says whether to enter
    it (the watcher's: whether its tree watches that directory). One it refuses is recorded in its
    parent's listing but not entered, as one that went between the two listings: a
    directory made after the tree's walk, whose create is not read yet, has its contents
    reported by the tree's own walk of it when it is, and only that walk is exact (an entry
    removed before then has no event: listed here, it would stay for good).
    """
    fd = os.open(real_root, _O_DIR)
    dirs: AtRest = {}
    stack: list[tuple[int, str, list[tuple[str, int, int]]]] = []
    try:
        subdirs, entries = _list(fd, root, dirs, wanted, prune)
        stack.append((fd, root, subdirs))
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
                if entered is not None and not entered(child, st):
                    raise FileNotFoundError  # not watched (yet): left to the tree's walk
                grand, listed = _list(child, child_path, dirs, wanted, prune)
            except OSError:
                os.close(child)
                continue
            entries += listed
            stack.append((child, child_path, grand))
        yield dirs
    finally:
        for top_fd, _, _ in stack:
            if top_fd != fd:
                os.close(top_fd)
        os.close(fd)


def _list(fd: int, path: str, dirs: AtRest, wanted: Callable[[str], bool] | None,
          prune: Callable[[str], bool] | None) -> tuple[list[tuple[str, int, int]], int]:
    """Record one directory's entries, at rest; returns its subdirectories as (name, dev, ino)
    and how many entries it recorded.

    Names and an lstat relative to the directory's fd (listdir and stat by dir_fd: no
    DirEntry per name), and the record packed into its bytes here, without an int object kept
    per entry: the scan is most of a resync's time (measured by bench/resync_scale.py).
    """
    names: list[str] = []
    packed: list[bytes] = []
    subdirs: list[tuple[str, int, int]] = []
    lstat = os.stat
    for name in os.listdir(fd):
        try:
            st = lstat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue  # gone since it was listed
        if st.st_mode & _S_IFMT == _S_IFDIR:
            if prune is not None and prune(name):
                continue
            subdirs.append((name, st.st_dev, st.st_ino))
        if wanted is None or wanted(name):
            names.append(name)
            packed.append(record_bytes(st))
    dirs[path] = ("/".join(names), b"".join(packed))
    return subdirs, len(names)
