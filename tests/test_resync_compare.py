"""A resync compares only the directories that differ (watchd.narrowed.compared): its events are
those of the comparison of everything, in the same order."""

from __future__ import annotations

import itertools
import os
import pathlib
import random
from collections.abc import Iterator

import pytest

import watchd.narrowed
from tests.test_index import _R, TANGLED, _d, _f, _random_dirs, paths, replay, snap
from watchd.diff import diff
from watchd.index import TreeIndex
from watchd.listing import Dirs, at_rest, freeze, join, split
from watchd.narrowed import compared
from watchd.records import IS_DIR


def reduced(old: Dirs, new: Dirs) -> tuple[list[tuple[int, int, str, str | None]], int]:
    """The events and changes of a resync from an index of `old` to a scan of `new`, the way
    the daemon compares them; checked against the comparison of everything."""
    index = TreeIndex(_R)
    index.replace(old)
    view_old, view_new = compared(index, at_rest(new))
    got = diff(view_old, view_new, _R, itertools.count(1 << 32))
    whole = diff(old, new, _R, itertools.count(1 << 32))
    assert (got.items, got.changes) == (whole.items, whole.changes)
    return got.items, got.changes


def _mutate(rng: random.Random, dirs: Dirs, inodes: itertools.count[int]) -> None:
    """One change to a tree of records: a file or directory made, removed, moved, renamed,
    rewritten, its mode changed, or a directory replaced by an empty one."""
    keys = list(dirs)
    parent = rng.choice(keys)
    entries = dirs[parent]
    op = rng.choice(["mkdir", "create", "remove", "move", "write", "chmod", "replace"])
    name = rng.choice("abcdefgh")
    if op in ("mkdir", "create") and name not in entries:
        entries[name] = _d(next(inodes)) if op == "mkdir" else _f(next(inodes))
        if op == "mkdir":
            dirs[join(parent, name)] = {}
        return
    if not entries:
        return
    name = rng.choice(list(entries))
    path, record = join(parent, name), entries[name]
    below = [k for k in dirs if k == path or k.startswith(path + "/")]
    if op == "remove":
        del entries[name]
        for key in below:
            del dirs[key]
    elif op == "move":
        dst_parent = rng.choice([k for k in keys if k not in below])
        dst_name = rng.choice("abcdefgh")
        dst = join(dst_parent, dst_name)
        if dst_name in dirs[dst_parent] or dst in below:
            return
        del entries[name]
        dirs[dst_parent][dst_name] = record
        for key in below:
            dirs[dst + key[len(path):]] = dirs.pop(key)
    elif op == "write" and not record & IS_DIR:
        entries[name] = _f(record >> 58, rng.randrange(1, 1000))
    elif op == "chmod":
        entries[name] = record ^ (1 << 5)
    elif op == "replace" and record & IS_DIR and not dirs[path]:
        entries[name] = _d(next(inodes))  # an empty directory made anew under its name


def _tree(rng: random.Random, inodes: itertools.count[int], size: int) -> Dirs:
    dirs: Dirs = {_R: {}}
    for _ in range(size):
        parent = rng.choice(list(dirs))
        name = f"n{rng.randrange(30)}"
        if name in dirs[parent]:
            continue
        if rng.random() < 0.3:
            dirs[parent][name] = _d(next(inodes))
            dirs[join(parent, name)] = {}
        else:
            dirs[parent][name] = _f(next(inodes))
    return dirs


@pytest.mark.parametrize("case", list(TANGLED))
def test_tangled_changes_compare_alike(case: str) -> None:
    old, new = TANGLED[case]
    items, _ = reduced(old, new)
    assert replay(paths(old), items, {_R}) == paths(new)


def test_random_records_compare_alike() -> None:
    for seed in range(1000):
        rng = random.Random(seed)
        inodes = list(range(1, rng.randint(2, 20)))
        reduced(_random_dirs(rng, inodes, True), _random_dirs(rng, inodes, False))


def test_a_few_changes_in_a_large_tree_compare_alike() -> None:
    for seed in range(300):
        rng = random.Random(seed)
        inodes = itertools.count(1)
        old = _tree(rng, inodes, 200)
        new = {key: dict(children) for key, children in old.items()}
        for _ in range(rng.randint(1, 6)):
            _mutate(rng, new, inodes)
        items, _ = reduced(old, new)
        assert replay(paths(old), items, {_R}) == paths(new), seed


def test_only_what_differs_and_what_it_is_looked_up_by_is_thawed() -> None:
    inodes = itertools.count(1)
    old = _tree(random.Random(7), inodes, 300)
    deep = max(old, key=lambda k: k.count("/"))
    new = {key: dict(children) for key, children in old.items()}
    new[deep]["fresh"] = _f(next(inodes))
    index = TreeIndex(_R)
    index.replace(old)
    view_old, view_new = compared(index, at_rest(new))
    ancestors = set()
    key = deep
    while key != _R:
        key = split(key)[0]
        ancestors.add(key)
    subdirs = {join(deep, n) for n, r in new[deep].items() if r & IS_DIR}
    assert set(view_old) == set(view_new) == {deep} | ancestors | subdirs
    assert len(view_old) < len(old) // 3
    # Unchanged: nothing to thaw; a directory the index holds as a dict (events touched it)
    # but that lists the same is not a difference either.
    index.replace(new)
    index.dirs[_R] = dict(new[_R])
    assert compared(index, at_rest(new)) == ({}, {})
    assert compared(index, {k: freeze(c) for k, c in new.items()}) == ({}, {})


def _stale(old: Dirs, top: str, dst: str, listed: bool) -> tuple[Dirs, Dirs]:
    """`top` renamed to `dst` (a free name in an existing directory), the rename lost: the
    index holds the directory at both paths, its contents reported at `dst` by the walk of
    the directory it went into, and the directory itself in dst's parent or not (`listed`:
    its own event lost too). Returns (index, scan)."""
    parent, name = split(top)
    new = {key: dict(children) for key, children in old.items()}
    record = new[parent].pop(name)
    new[split(dst)[0]][split(dst)[1]] = record
    for key in [k for k in old if k == top or k.startswith(top + "/")]:
        new[dst + key[len(top):]] = new.pop(key)
    index = {key: dict(children) for key, children in old.items()}
    for key, children in new.items():
        if key == dst or key.startswith(dst + "/"):
            index[key] = dict(children)
    if listed:
        index[split(dst)[0]] = dict(new[split(dst)[0]])
    return index, new


def test_a_directory_at_a_stale_path_and_its_contents_at_the_new_one_compare_alike() -> None:
    # The index holds x/a and, from the walk of the directory it went into, y/b's contents
    # but not y/b itself; the scan has y/b. y/b/s and y/b/u are listed alike on both sides:
    # left out of the comparison, they were taken for unchanged, and created bare.
    old: Dirs = {_R: {"x": _d(1), "y": _d(2)}, join(_R, "x"): {"a": _d(3)},
                 join(_R, "y"): {}, join(_R, "x/a"): {"f": _f(4), "s": _d(5), "u": _d(6)},
                 join(_R, "x/a/s"): {"g": _f(7), "c": _d(8)}, join(_R, "x/a/s/c"): {},
                 join(_R, "x/a/u"): {"inner": _d(9)}, join(_R, "x/a/u/inner"): {"h": _f(10)}}
    for listed in (False, True):
        index, new = _stale(old, join(_R, "x/a"), join(_R, "y/b"), listed)
        items, _ = reduced(index, new)
        assert replay(paths(index), items, {_R}) == paths(new), listed


def test_random_stale_paths_compare_alike() -> None:
    for seed in range(300):
        rng = random.Random(seed)
        inodes = itertools.count(1)
        old = _tree(rng, inodes, 120)
        tops = [key for key in old if key != _R]
        if not tops:
            continue
        top = rng.choice(tops)
        into = rng.choice([k for k in old if k != top and not k.startswith(top + "/")])
        dst = join(into, f"m{seed}")
        index, new = _stale(old, top, dst, rng.random() < 0.5)
        for _ in range(rng.randint(0, 3)):
            _mutate(rng, new, inodes)
        items, _ = reduced(index, new)
        assert replay(paths(index), items, {_R}) == paths(new), seed


def _chain(root: pathlib.Path, depth: int) -> None:
    """A chain of `depth` new directories under root, a file at its end: made by descriptor,
    as its paths are longer than the kernel takes whole."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            os.mkdir(f"n{i}", dir_fd=fd)
            fd, parent = os.open(f"n{i}", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
            os.close(parent)
        os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    finally:
        os.close(fd)


def _unchain(root: pathlib.Path) -> None:
    """Remove a chain made by _chain a level at a time from its top: pytest's removal of old
    temporary directories recurses a level per directory, past Python's recursion limit, and
    would leave it (and fail the runs that try) for ever."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        top = "n0"
        while True:
            below = os.open(top, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            try:
                names = os.listdir(below)
                if "leaf" in names:
                    os.unlink("leaf", dir_fd=below)
            finally:
                os.close(below)
            sub = next((name for name in names if name != "leaf"), None)
            lifted = "a" if top != "a" else "b"
            if sub is not None:
                os.rename(f"{top}/{sub}", lifted, src_dir_fd=fd, dst_dir_fd=fd)
            os.rmdir(top, dir_fd=fd)
            if sub is None:
                return
            top = lifted
    finally:
        os.close(fd)


@pytest.fixture
def deep_root(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    root = tmp_path / "t"
    root.mkdir()
    yield root
    if (root / "n0").exists():
        _unchain(root)


def test_a_deep_new_chain_is_compared_in_work_linear_in_its_directories(
        deep_root: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A local user makes a chain of 2,000 directories while the watcher is frozen: each of them
    # differs (new), and each climbed to the root to put its ancestors in took a parent per
    # level, every one a new path string: 2,000,000 of them, seconds of the daemon's loop in
    # which no client was served. Counted: the parents taken (as watchd.narrowed takes them).
    root = deep_root
    index = TreeIndex(str(root))
    index.replace(snap(root))
    _chain(root, 2000)
    scan = at_rest(snap(root))
    parents = 0

    def counted(path: str) -> tuple[str, str]:
        nonlocal parents
        parents += 1
        return split(path)

    monkeypatch.setattr(watchd.narrowed, "split", counted)
    view_old, view_new = compared(index, scan)
    assert len(view_new) == 2001
    assert parents <= 2 * len(view_new), parents  # before: 2,001,000
    got = diff(view_old, view_new, str(root), itertools.count(1 << 32))
    assert len(got.items) == 2001 and replay(set(), got.items, {str(root)}) == paths(snap(root))
