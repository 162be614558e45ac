"""The per-watch index and the diff of an index against a rescan, on real directories.

The check used throughout is the client's: start from the set of paths the old index holds,
apply the synthetic events in order as a client would (a move takes its subtree along, a
delete its subtree), and compare with the set of paths the new scan holds.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
import random
import shutil
import socket
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from watchd import channel
from watchd.diff import SYNTHETIC, diff
from watchd.events import DEFAULT_KINDS, kinds_mask
from watchd.globs import glob_predicate
from watchd.index import TreeIndex
from watchd.inotify import IN_ACCESS, IN_ALL_EVENTS, IN_CLOSE_NOWRITE, IN_OPEN, InotifyFd
from watchd.inotify.tree import Tree
from watchd.listing import Dirs, at_rest, count, freeze, thaw
from watchd.narrowed import compared
from watchd.records import (
    IN_ATTRIB,
    IN_CREATE,
    IN_DELETE,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    UNKNOWN_DIR,
    UNKNOWN_FILE,
    Item,
    Recorder,
    pack,
)
from watchd.scan import scan
from watchd.watcher import Watcher

KIND = {IN_CREATE: "create", IN_DELETE: "delete", IN_MODIFY: "modify", IN_ATTRIB: "attrib",
        IN_MOVED_FROM: "moved_from", IN_MOVED_TO: "moved_to"}
QUIET = IN_ALL_EVENTS & ~(IN_OPEN | IN_ACCESS | IN_CLOSE_NOWRITE)


def snap(root: pathlib.Path, **kw: object) -> Dirs:
    options: dict[str, object] = {"recursive": True, "wanted": None, "prune": None}
    options.update(kw)
    return scan(str(root), str(root), **options)  # type: ignore[arg-type]


def paths(dirs: Dirs) -> set[str]:
    return {parent.rstrip("/") + "/" + name for parent, kids in dirs.items() for name in kids}


def kind(item: Item) -> str:
    mask = item[0]
    return next(name for bit, name in KIND.items() if mask & bit)


def replay(picture: set[str], items: list[Item], roots: set[str]) -> set[str]:
    """Apply events as a client keeping a set of paths does; fail on an inapplicable one."""
    out = set(picture)
    for mask, _cookie, path, src in items:
        assert mask & SYNTHETIC
        k = kind((mask, 0, path, src))
        parent = path.rpartition("/")[0]
        if k == "create":
            assert path not in out, f"create of a path the client has: {path}"
            assert parent in out or parent in roots, f"create before its parent: {path}"
            out.add(path)
        elif k == "delete":
            assert path in out, f"delete of a path the client does not have: {path}"
            assert not any(p.startswith(path + "/") for p in out), f"delete before children: {path}"
            out.discard(path)
        elif k == "moved_to":
            assert src is not None
            assert src in out, f"move of a path the client does not have: {src}"
            assert parent in out or parent in roots, f"move before its parent: {path}"
            moved = {p for p in out if p == src or p.startswith(src + "/")}
            out -= moved
            out -= {p for p in out if p == path or p.startswith(path + "/")}
            out |= {path + p[len(src):] for p in moved}
        elif k in ("modify", "attrib"):
            assert path in out, f"{k} of a path the client does not have: {path}"
    return out


def check(old: Dirs, new: Dirs, root: pathlib.Path) -> list[Item]:
    result = diff(old, new, str(root), itertools.count(1 << 32))
    assert replay(paths(old), result.items, {str(root)}) == paths(new)
    return result.items


def simple(items: list[Item]) -> list[tuple[str, str]]:
    return [(kind(i), i[2]) for i in items]


@pytest.fixture
def tree(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "t"
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    for i in range(3):
        (root / "a" / f"f{i}").write_text("x")
        (root / "a" / "b" / f"g{i}").write_text("y")
    (root / "top").write_text("z")
    return root


# -- records and the scan ---------------------------------------------------------------------


def test_scan_lists_every_path_and_records_types(tree: pathlib.Path) -> None:
    dirs = snap(tree)
    assert set(dirs) == {str(tree), f"{tree}/a", f"{tree}/a/b", f"{tree}/c"}
    assert dirs[str(tree)]["a"] & 1 and not dirs[str(tree)]["top"] & 1
    assert count(dirs) == 3 + 3 + 3 + 1


def test_record_changes_with_content_mode_and_inode(tree: pathlib.Path) -> None:
    f = tree / "top"
    before = pack(os.lstat(f))
    assert pack(os.lstat(f)) == before
    os.utime(f, ns=(1, 2))
    after_mtime = pack(os.lstat(f))
    assert after_mtime != before
    os.chmod(f, 0o600)
    assert pack(os.lstat(f)) != after_mtime


def test_scan_does_not_track_excluded_paths_nor_follow_links(tree: pathlib.Path,
                                                             tmp_path: pathlib.Path) -> None:
    (tree / "node_modules" / "x").mkdir(parents=True)
    (tree / "a" / "skip.tmp").write_text("")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("")
    (tree / "link").symlink_to(outside)
    exclude = ("node_modules", "*.tmp")
    prune = glob_predicate(exclude)
    dirs = snap(tree, wanted=lambda n: not (prune and prune(n)), prune=prune)
    every = paths(dirs)
    assert not any("node_modules" in p or p.endswith(".tmp") for p in every)
    assert f"{tree}/link" in every
    assert not any("secret" in p for p in every)


def test_index_memory_per_path(tmp_path: pathlib.Path) -> None:
    """A bound that catches a blown-up layout; bench/index_memory.py measures 250,000 paths.

    Small directories (four files each, as that bench's tree, shaped like a source tree): the
    per-directory overhead counts."""
    root = tmp_path / "big"
    for d in range(400):
        sub = root / f"package{d:03}"
        sub.mkdir(parents=True)
        for f in range(4):
            (sub / f"module_{f:05}.py").touch()
    index = TreeIndex(str(root))
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        index.replace(snap(root))
        used = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert len(index) == 400 * 5
    assert used / len(index) < 120
    assert index.as_dirs() == snap(root)


def test_directories_at_rest_come_back_as_they_were() -> None:
    odd = os.fsdecode(b"caf\xe9 \xff")  # a name that is no UTF-8: surrogate escapes
    children = {"a": 0, "b.txt": UNKNOWN_DIR, odd: (1 << 90) - 1, "\u00e9t\u00e9": 12345 << 58}
    assert thaw(freeze(children)) == children
    assert list(thaw(freeze(children))) == list(children)  # in order
    assert thaw(freeze({})) == {}
    assert count({"/r": freeze(children), "/r/a": {}}) == 4


def test_a_resync_thaws_only_the_directories_that_changed(tree: pathlib.Path) -> None:
    index = TreeIndex(str(tree))
    index.replace(snap(tree))
    (tree / "a" / "f0").write_text("changed")
    os.rename(tree / "a" / "b", tree / "c" / "b")
    new = snap(tree)
    old, scanned = compared(index, at_rest(new))
    # What differs (a, c, a/b gone, c/b new) and what it is looked up by (the root); what is
    # listed the same and not needed to find those (top-level file aside, nothing) stays out.
    assert set(old) == {str(tree), f"{tree}/a", f"{tree}/c", f"{tree}/a/b"}
    assert set(scanned) == {str(tree), f"{tree}/a", f"{tree}/c", f"{tree}/c/b"}
    expected = diff(index.as_dirs(), new, str(tree), itertools.count(1)).items
    assert diff(old, scanned, str(tree), itertools.count(1)).items == expected
    index.take(at_rest(new))
    assert index.as_dirs() == new


def test_only_the_directories_events_touch_are_thawed(tree: pathlib.Path) -> None:
    index = TreeIndex(str(tree))
    index.replace(snap(tree))
    assert all(isinstance(children, tuple) for children in index.dirs.values())
    (tree / "a" / "b" / "new").touch()
    rec = Recorder()
    step(index, rec, [(IN_CREATE, 0, f"{tree}/a/b/new", None)])
    assert isinstance(index.dirs[f"{tree}/a/b"], dict)
    assert all(isinstance(index.dirs[key], tuple) for key in (str(tree), f"{tree}/a",
                                                              f"{tree}/c"))
    # A directory moved away and back takes its entries at rest along.
    os.rename(tree / "a", tree / "c" / "a")
    step(index, rec, [(IN_MOVED_FROM | IN_ISDIR, 3, f"{tree}/a", None),
                      (IN_MOVED_TO | IN_ISDIR, 3, f"{tree}/c/a", f"{tree}/a")])
    assert isinstance(index.dirs[f"{tree}/c/a"], tuple)
    assert index.as_dirs() == snap(tree)


# -- the diff -----------------------------------------------------------------------------------


def test_nothing_changed_nothing_reported(tree: pathlib.Path) -> None:
    old = snap(tree)
    assert check(old, snap(tree), tree) == []


def test_creates_parents_before_children(tree: pathlib.Path) -> None:
    old = snap(tree)
    (tree / "n1" / "n2").mkdir(parents=True)
    (tree / "n1" / "n2" / "f").write_text("")
    (tree / "c" / "new").write_text("")
    items = check(old, snap(tree), tree)
    got = simple(items)
    assert sorted(got) == sorted([("create", f"{tree}/n1"), ("create", f"{tree}/n1/n2"),
                                  ("create", f"{tree}/n1/n2/f"), ("create", f"{tree}/c/new")])
    order = [p for _, p in got]
    assert order.index(f"{tree}/n1") < order.index(f"{tree}/n1/n2") < order.index(
        f"{tree}/n1/n2/f")
    assert items[0][0] & IN_ISDIR or items[0][2].endswith("new")


def test_deletes_children_before_parents(tree: pathlib.Path) -> None:
    old = snap(tree)
    shutil.rmtree(tree / "a")
    got = simple(check(old, snap(tree), tree))
    assert all(k == "delete" for k, _ in got)
    order = [p for _, p in got]
    assert len(order) == 8
    assert order[-1] == f"{tree}/a"
    assert order.index(f"{tree}/a/b/g0") < order.index(f"{tree}/a/b")


def test_modify_on_content_and_attrib_on_mode(tree: pathlib.Path) -> None:
    old = snap(tree)
    (tree / "a" / "f0").write_text("longer")
    os.chmod(tree / "a" / "f1", 0o600)
    os.chmod(tree / "c", 0o700)
    got = simple(check(old, snap(tree), tree))
    assert sorted(got) == [("attrib", f"{tree}/a/f1"), ("attrib", f"{tree}/c"),
                           ("modify", f"{tree}/a/f0")]


def test_file_renamed_is_one_pair(tree: pathlib.Path) -> None:
    old = snap(tree)
    os.rename(tree / "a" / "f0", tree / "c" / "moved")
    items = check(old, snap(tree), tree)
    assert simple(items) == [("moved_from", f"{tree}/a/f0"), ("moved_to", f"{tree}/c/moved")]
    assert items[0][1] == items[1][1] and items[0][1] >= 1 << 32
    assert items[1][3] == f"{tree}/a/f0"
    assert diff(old, snap(tree), str(tree), itertools.count(1)).changes == 1


def test_directory_renamed_is_one_pair_and_changes_inside_are_reported_at_the_new_name(
        tree: pathlib.Path) -> None:
    old = snap(tree)
    os.rename(tree / "a", tree / "c" / "a2")
    (tree / "c" / "a2" / "b" / "g0").write_text("changed!")
    (tree / "c" / "a2" / "b" / "g1").unlink()
    (tree / "c" / "a2" / "new").write_text("")
    got = simple(check(old, snap(tree), tree))
    assert ("moved_from", f"{tree}/a") in got and ("moved_to", f"{tree}/c/a2") in got
    assert len([k for k, _ in got if k.startswith("moved")]) == 2
    # The delete of what it lost comes before it moved, or after, at its name at that time.
    assert ("delete", f"{tree}/a/b/g1") in got or ("delete", f"{tree}/c/a2/b/g1") in got
    assert ("create", f"{tree}/c/a2/new") in got
    assert ("modify", f"{tree}/c/a2/b/g0") in got
    assert len(got) == 5


def test_renamed_over_an_existing_file(tree: pathlib.Path) -> None:
    old = snap(tree)
    os.rename(tree / "a" / "f0", tree / "top")
    got = simple(check(old, snap(tree), tree))
    assert got == [("delete", f"{tree}/top"), ("moved_from", f"{tree}/a/f0"),
                   ("moved_to", f"{tree}/top")]


def test_save_by_rename_of_a_new_file_is_a_modify(tree: pathlib.Path) -> None:
    old = snap(tree)
    (tree / "top.tmp").write_text("new content")
    os.rename(tree / "top.tmp", tree / "top")
    assert simple(check(old, snap(tree), tree)) == [("modify", f"{tree}/top")]


def test_moved_away_and_a_new_file_in_its_place(tree: pathlib.Path) -> None:
    old = snap(tree)
    os.rename(tree / "top", tree / "c" / "top")
    (tree / "top").write_text("another")
    got = simple(check(old, snap(tree), tree))
    assert got[:2] == [("moved_from", f"{tree}/top"), ("moved_to", f"{tree}/c/top")]
    assert got[2:] == [("create", f"{tree}/top")]


def test_swapped_files_and_directories(tree: pathlib.Path) -> None:
    old = snap(tree)
    os.rename(tree / "a" / "f0", tree / "tmp")
    os.rename(tree / "a" / "f1", tree / "a" / "f0")
    os.rename(tree / "tmp", tree / "a" / "f1")
    os.rename(tree / "a", tree / "tmpd")
    os.rename(tree / "c", tree / "a")
    os.rename(tree / "tmpd", tree / "c")
    check(old, snap(tree), tree)


def test_directory_replaced_and_its_entry_moved_into_the_new_one(tree: pathlib.Path) -> None:
    old = snap(tree)
    os.rename(tree / "a", tree / "a.old")
    (tree / "a").mkdir()
    os.rename(tree / "a.old" / "f0", tree / "a" / "f0")
    got = simple(check(old, snap(tree), tree))
    assert got[:2] == [("moved_from", f"{tree}/a"), ("moved_to", f"{tree}/a.old")]
    assert ("create", f"{tree}/a") in got
    assert ("moved_to", f"{tree}/a/f0") in got


def test_type_changes_are_a_delete_and_a_create(tree: pathlib.Path) -> None:
    old = snap(tree)
    # Held open, the deleted inodes cannot be given to the new paths: a reused inode number
    # would be a move (the picture the same, the kinds not those this test looks for).
    held = [os.open(p, os.O_RDONLY) for p in (tree / "a" / "b", *(tree / "a" / "b").iterdir(),
                                               tree / "top")]
    try:
        shutil.rmtree(tree / "a" / "b")
        (tree / "a" / "b").write_text("now a file")
        (tree / "top").unlink()
        (tree / "top").mkdir()
        got = simple(check(old, snap(tree), tree))
    finally:
        for fd in held:
            os.close(fd)
    assert ("delete", f"{tree}/a/b") in got and ("create", f"{tree}/a/b") in got
    assert got.index(("delete", f"{tree}/top")) < got.index(("create", f"{tree}/top"))


def test_hard_links_are_never_taken_for_moves(tree: pathlib.Path) -> None:
    old = snap(tree)
    os.link(tree / "top", tree / "c" / "l1")
    os.link(tree / "top", tree / "c" / "l2")
    (tree / "top").unlink()
    got = simple(check(old, snap(tree), tree))
    assert not any(k.startswith("moved") for k, _ in got)


def test_unknown_record_differs_from_anything(tree: pathlib.Path) -> None:
    old = snap(tree)
    old[str(tree)]["top"] = UNKNOWN_FILE
    old[str(tree)]["ghost"] = UNKNOWN_FILE
    got = simple(check(old, snap(tree), tree))
    assert sorted(got) == [("delete", f"{tree}/ghost"), ("modify", f"{tree}/top")]


def test_events_are_marked_synthetic_with_their_type(tree: pathlib.Path) -> None:
    old = snap(tree)
    (tree / "d").mkdir()
    items = check(old, snap(tree), tree)
    assert items == [(IN_CREATE | IN_ISDIR | SYNTHETIC, 0, f"{tree}/d", None)]


def _random_op(rng: random.Random, root: pathlib.Path) -> None:
    every = list(root.rglob("*"))
    dirs = [root, *[p for p in every if p.is_dir() and not p.is_symlink()]]
    op = rng.choice(["mkdir", "create", "create", "delete", "move", "move", "modify", "chmod",
                     "swap"])
    target = rng.choice(dirs) / f"n{rng.randrange(1000)}"
    try:
        if op == "mkdir":
            target.mkdir()
        elif op == "create":
            target.write_text("x" * rng.randrange(3))
        elif op == "delete" and every:
            victim = rng.choice(every)
            shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
        elif op == "move" and every:
            src = rng.choice(every)
            if not str(target).startswith(str(src) + "/"):
                os.rename(src, target)
        elif op == "modify" and every:
            f = rng.choice(every)
            if f.is_file():
                f.write_text("y" * rng.randrange(1, 9))
                os.utime(f, ns=(rng.randrange(10**9), rng.randrange(10**18)))
        elif op == "chmod" and every:
            os.chmod(rng.choice(every), rng.choice([0o700, 0o755, 0o644]))
        elif op == "swap" and len(every) > 1:
            a, b = rng.sample(every, 2)
            if not (str(a).startswith(str(b) + "/") or str(b).startswith(str(a) + "/")):
                tmp = root / "swap-tmp"
                os.rename(a, tmp)
                os.rename(b, a)
                os.rename(tmp, b)
    except OSError:
        pass


@pytest.mark.parametrize("seed", range(12))
def test_random_changes_replay_exactly(tmp_path: pathlib.Path, seed: int) -> None:
    rng = random.Random(seed)
    root = tmp_path / "r"
    root.mkdir()
    for _ in range(30):
        _random_op(rng, root)
    for _ in range(5):
        old = snap(root)
        for _ in range(rng.randrange(1, 25)):
            _random_op(rng, root)
        check(old, snap(root), root)


# -- keeping the index up to date from events -------------------------------------------------


def step(index: TreeIndex, rec: Recorder, items: list[Item]) -> list[Item]:
    """Apply a batch as the daemon does, with the records the watcher takes for it."""
    return index.apply(items, rec.records(items))


def _events(ino: InotifyFd, tree: Tree, settle: pathlib.Path) -> list[Item]:
    """Read the tree's events until the marker file's create shows up."""
    settle.write_text("")
    items: list[Item] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ino.wait_readable(0.5)
        batch = [(ev[0], ev[1], ev[2], ev[3]) for ev in tree.handle(ino.read_raw())]
        items.extend(batch)
        if any(i[2] == str(settle) and i[0] & IN_CREATE for i in batch):
            return items
    raise AssertionError("the marker's create never came")


def test_index_follows_events_to_equal_a_scan(tree: pathlib.Path) -> None:
    index = TreeIndex(str(tree))
    rec = Recorder()
    with InotifyFd() as ino:
        t = Tree(ino, str(tree), QUIET, synthetic=True)
        t.start()
        index.replace(snap(tree))
        rng = random.Random(7)
        for round_ in range(6):
            for _ in range(15):
                _random_op(rng, tree)
            step(index, rec, _events(ino, t, tree / f"settle{round_}"))
            assert index.as_dirs() == snap(tree)


def test_index_keeps_a_path_whose_state_could_not_be_read(tree: pathlib.Path) -> None:
    index = TreeIndex(str(tree))
    rec = Recorder()
    index.replace(snap(tree))
    step(index, rec, [(IN_CREATE, 0, f"{tree}/vanished", None)])
    assert index.as_dirs()[str(tree)]["vanished"] == UNKNOWN_FILE
    got = diff(index.as_dirs(), snap(tree), str(tree), itertools.count(1))
    assert simple(got.items) == [("delete", f"{tree}/vanished")]


def test_index_moves_a_directory_subtree_by_cookie(tree: pathlib.Path) -> None:
    index = TreeIndex(str(tree))
    rec = Recorder()
    index.replace(snap(tree))
    os.rename(tree / "a", tree / "c" / "a")
    step(index, rec, [(IN_MOVED_FROM | IN_ISDIR, 9, f"{tree}/a", None)])
    # The pair split across two batches still finds the subtree.
    step(index, rec, [(IN_MOVED_TO | IN_ISDIR, 9, f"{tree}/c/a", f"{tree}/a")])
    assert index.as_dirs() == snap(tree)


def test_a_replayed_move_is_not_published(tree: pathlib.Path) -> None:
    # A directory renamed while a resync scanned: the scan (and the synthetic events) show it
    # at its new name already; its kernel events come after them and must not undo that.
    os.rename(tree / "a", tree / "c" / "a")
    index = TreeIndex(str(tree))
    rec = Recorder()
    index.replace(snap(tree))
    replay = [(IN_MOVED_FROM | IN_ISDIR, 7, f"{tree}/a", None),
              (IN_MOVED_TO | IN_ISDIR, 7, f"{tree}/c/a", f"{tree}/a")]
    assert step(index, rec, replay) == []
    assert index.as_dirs() == snap(tree)
    # Its pair split between two batches, and a destination the index lacks: a create.
    assert step(index, rec, [(IN_MOVED_FROM, 8, f"{tree}/gone", None)]) == []
    (tree / "new").touch()
    assert step(index, rec, [(IN_MOVED_TO, 8, f"{tree}/new", f"{tree}/gone")]) == [
        (IN_CREATE, 0, f"{tree}/new", None)]
    # An ordinary move is published as it is, the very list.
    os.rename(tree / "new", tree / "newer")
    batch = [(IN_MOVED_FROM, 9, f"{tree}/new", None),
             (IN_MOVED_TO, 9, f"{tree}/newer", f"{tree}/new")]
    assert step(index, rec, batch) is batch
    assert index.as_dirs() == snap(tree)



def test_a_replayed_move_after_a_replayed_attrib_is_not_published(tree: pathlib.Path) -> None:
    # A file chmodded and renamed while a resync scanned, made before its directory was
    # watched (so no create of it is queued): the scan shows it at its new name, and its
    # kernel events (attrib, then the pair) come after. The attrib names a path the index does
    # not hold; that does not make the move that follows any less a replay.
    (tree / "m").touch()
    index = TreeIndex(str(tree))
    rec = Recorder()
    index.replace(snap(tree))
    replay = [(IN_ATTRIB, 0, f"{tree}/k", None),
              (IN_MOVED_FROM, 7, f"{tree}/k", None),
              (IN_MOVED_TO, 7, f"{tree}/m", f"{tree}/k")]
    assert step(index, rec, replay) == [replay[0]]
    assert index.as_dirs() == snap(tree)
    # The same, with the read split after the attrib: nothing of k is recorded meanwhile.
    (tree / "n").touch()
    index.replace(snap(tree))
    assert step(index, rec, [(IN_MODIFY, 0, f"{tree}/j", None)]) == [
        (IN_MODIFY, 0, f"{tree}/j", None)]
    assert index.as_dirs() == snap(tree)
    assert step(index, rec, [(IN_MOVED_FROM, 8, f"{tree}/j", None),
                             (IN_MOVED_TO, 8, f"{tree}/n", f"{tree}/j")]) == []
    assert index.as_dirs() == snap(tree)
    # A file made in the batch and renamed in it is a move as ever.
    made = [(IN_CREATE, 0, f"{tree}/p", None), (IN_ATTRIB, 0, f"{tree}/p", None),
            (IN_MOVED_FROM, 9, f"{tree}/p", None), (IN_MOVED_TO, 9, f"{tree}/q", f"{tree}/p")]
    assert step(index, rec, made) is made


# -- records that do not say it all: unknown states, inodes used again, moves into namesakes ---

_U = UNKNOWN_DIR


def _d(ino: int) -> int:
    return ino << 58 | 1


def _f(ino: int, content: int = 1) -> int:
    return ino << 58 | content << 18


_R = "/r"
TANGLED = {
    # b/c took the place of b, whose own inode the index never learnt.
    "child-replaces-unknown-parent": (
        {_R: {"b": _U}, "/r/b": {"c": _d(10)}, "/r/b/c": {"e": _U}, "/r/b/c/e": {}},
        {_R: {"b": _d(10)}, "/r/b": {"e": _d(15)}, "/r/b/e": {}}),
    # f moved into a new f as f/a; the new f holds a file named as one the old f held.
    "moved-into-new-namesake": (
        {_R: {"f": _d(3)}, "/r/f": {"d": _f(12)}},
        {_R: {"f": _d(12)}, "/r/f": {"d": _f(5), "a": _d(3)}, "/r/f/a": {}}),
    # Found by test_random_records_replay_exactly (as records, they are its seeds 389, 705).
    "unknown-directory-replaced-with-its-file-kept": (
        {"/r": {"a": 1, "f": 2594073385365929985, "d": 2305843009213693952,
                "e": 1441151880758820865},
         "/r/a": {"f": 2017612633062506496, "e": 1152921504607371264, "a": 3458764513820803072,
                  "b": 1},
         "/r/f": {}, "/r/a/b": {"b": 3170534137669353472, "d": 576460752303685633},
         "/r/a/b/d": {}, "/r/e": {}},
        {"/r": {"e": 2882303761517641728, "c": 2594073385365929985, "a": 1441151880758820865},
         "/r/c": {"a": 576460752303947777, "d": 2017612633062244353}, "/r/c/a": {},
         "/r/a": {"a": 3458764513820803072}, "/r/c/d": {}}),
    "create-below-a-directory-that-moved-this-round-and-goes": (
        {"/r": {"d": 288230376151711744, "c": 1441151880759083009, "e": 1152921504607109120,
                "a": 2305843009214218240},
         "/r/c": {"e": 864691128455397376, "a": 1, "b": 2594073385365929985},
         "/r/c/a": {"e": 576460752303947776}, "/r/c/b": {}},
        {"/r": {"f": 1441151880758558721, "e": 576460752303947776},
         "/r/f": {"a": 864691128455659521}, "/r/f/a": {"d": 2017612633061982209},
         "/r/f/a/d": {"a": 2594073385365405696}}),
}


@pytest.mark.parametrize("case", list(TANGLED))
def test_tangled_changes_replay_exactly(case: str) -> None:
    old, new = TANGLED[case]
    items = diff(old, new, _R, itertools.count(1 << 32)).items
    assert replay(paths(old), items, {_R}) == paths(new)


def _random_dirs(rng: random.Random, inodes: list[int], unknown: bool) -> Dirs:
    """A small tree; each inode used once (a directory has one name), unknown states if asked."""
    pool = rng.sample(inodes, len(inodes))
    dirs: Dirs = {_R: {}}
    for _ in range(rng.randint(1, 12)):
        parent, name = rng.choice(list(dirs)), rng.choice("abcdef")
        if name in dirs[parent] or not pool:
            continue
        is_dir = rng.random() < 0.5
        ino = pool.pop()
        if unknown and rng.random() < 0.1:
            dirs[parent][name] = _U if is_dir else 0
        else:
            dirs[parent][name] = _d(ino) if is_dir else _f(ino, rng.randrange(3))
        if is_dir:
            dirs[f"{parent}/{name}"] = {}
    return dirs


def test_random_records_replay_exactly() -> None:
    # Small trees over few inodes: moves, inodes used again, types changed, states unknown.
    for seed in range(3000):
        rng = random.Random(seed)
        inodes = list(range(1, rng.randint(2, 20)))
        old, new = _random_dirs(rng, inodes, True), _random_dirs(rng, inodes, False)
        items = diff(old, new, _R, itertools.count(1 << 32)).items
        assert replay(paths(old), items, {_R}) == paths(new), seed



# -- the records the watcher sends with each batch ----------------------------------------------


@contextlib.contextmanager
def watching(root: pathlib.Path, *, resync: bool = True,
             ) -> Iterator[tuple[Watcher, socket.socket]]:
    """The watcher, in this process, watching root on a real socketpair (the daemon's end)."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    with ours, theirs:
        watcher = Watcher(ours)
        if resync:
            watcher.channel.resync_on = frozenset({"w"})
        spec = channel.Spec("w", str(root), True, kinds_mask(DEFAULT_KINDS), (), (), str(root))
        watcher.apply([spec])
        try:
            yield watcher, theirs
        finally:
            for watch in watcher.watches.values():
                watcher.deactivate(watch)


def sent_until(watcher: Watcher, theirs: socket.socket, reader: channel.FrameReader,
               last: pathlib.Path) -> list[tuple[Any, ...]]:
    """The messages the watcher sends as it reads its queue, until one names `last`."""
    watch = watcher.watches["w"]
    out: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert watch.ino is not None
        watch.ino.wait_readable(0.5)
        watcher.read_watch(watch)
        with contextlib.suppress(BlockingIOError):
            while data := theirs.recv(1 << 16):
                out += reader.feed(data)
        if any(item[2] == str(last) for m in out if m[0] == channel.Tag.EVENTS
               for _, items in m[2] for item in items):
            return out
    raise AssertionError(f"no event on {last} came")


def index_from(root: pathlib.Path, messages: list[tuple[Any, ...]]) -> TreeIndex:
    """The daemon's index of the watch after these messages: its scan, then each read."""
    index = TreeIndex(str(root))
    for m in messages:
        if m[0] == channel.Tag.SCAN:
            index.replace(m[2])
        elif m[0] == channel.Tag.EVENTS:
            for (_, items), records in zip(m[2], m[3], strict=True):
                assert index.apply(items, records) is items
    return index


def all_records(messages: list[tuple[Any, ...]]) -> list[dict[str, int]]:
    return [records for m in messages if m[0] == channel.Tag.EVENTS for records in m[3]]


def test_records_come_with_the_batch_and_keep_the_index_exact(tree: pathlib.Path) -> None:
    reader = channel.FrameReader()
    with watching(tree) as (watcher, theirs):
        scanned = reader.feed(theirs.recv(1 << 20))
        (tree / "kept").write_text("kept")
        (tree / "brief").write_text("gone at once")  # created and deleted in one batch
        (tree / "brief").unlink()
        (tree / "top").chmod(0o600)
        (tree / "settle").write_text("")
        got = sent_until(watcher, theirs, reader, tree / "settle")
    assert [m[0] for m in scanned] == [channel.Tag.SCAN]
    records = all_records(got)
    # Each path once per batch, as it was at its end; nothing for one that is gone by then.
    assert len(records) == 1
    assert records[0] == {str(tree / n): pack(os.lstat(tree / n)) for n in ("kept", "top",
                                                                             "settle")}
    assert index_from(tree, scanned + got).as_dirs() == snap(tree)


def test_a_move_within_one_batch_records_what_moved_under_its_new_name(
        tree: pathlib.Path) -> None:
    reader = channel.FrameReader()
    with watching(tree) as (watcher, theirs):
        scanned = reader.feed(theirs.recv(1 << 20))
        (tree / "a" / "new").write_text("written, then its directory renamed")
        os.rename(tree / "a", tree / "z")
        (tree / "settle").write_text("")
        got = sent_until(watcher, theirs, reader, tree / "settle")
    records = all_records(got)
    assert len(records) == 1
    assert set(records[0]) == {f"{tree}/z/new", f"{tree}/z", f"{tree}/settle"}
    assert records[0][f"{tree}/z/new"] == pack(os.lstat(tree / "z" / "new"))
    assert index_from(tree, scanned + got).as_dirs() == snap(tree)


def test_a_move_split_between_two_batches_records_what_moved_in_the_second(
        tree: pathlib.Path) -> None:
    # One read of BATCH_MAX + 1 events goes as two batches: the file created in a/ first, then
    # creates up to the batch's end, where the rename's moved_from falls; its moved_to opens
    # the next batch. The file is looked at once, under its new name, with the second batch.
    queue = int(pathlib.Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if queue < 2 * channel.BATCH_MAX:
        pytest.skip(f"fs.inotify.max_queued_events is {queue} (lowered by another test?): "
                    f"the burst of {channel.BATCH_MAX + 1} events would overflow it")
    reader = channel.FrameReader()
    with watching(tree) as (watcher, theirs):
        scanned = reader.feed(theirs.recv(1 << 20))
        os.symlink("x", tree / "a" / "link")
        for i in range(channel.BATCH_MAX - 2):
            os.symlink("x", tree / f"l{i:04}")
        os.rename(tree / "a", tree / "z")
        got = sent_until(watcher, theirs, reader, tree / "z")
    batches = [items for m in got if m[0] == channel.Tag.EVENTS for _, items in m[2]]
    assert [len(items) for items in batches][:1] == [channel.BATCH_MAX]
    assert len(batches) == 2  # (the second: the moved_to, and the directory's move_self)
    assert batches[0][-1][:3:2] == (IN_MOVED_FROM | IN_ISDIR, f"{tree}/a")
    assert batches[1][0][0] == IN_MOVED_TO | IN_ISDIR
    first, second = all_records(got)
    assert f"{tree}/a/link" not in first
    assert set(second) == {f"{tree}/z", f"{tree}/z/link"}
    assert second[f"{tree}/z/link"] == pack(os.lstat(tree / "z" / "link"))
    assert index_from(tree, scanned + got).as_dirs() == snap(tree)


def test_a_watch_without_an_index_gets_no_records(tree: pathlib.Path) -> None:
    reader = channel.FrameReader()
    with watching(tree, resync=False) as (watcher, theirs):
        (tree / "settle").write_text("")
        got = sent_until(watcher, theirs, reader, tree / "settle")
    assert not [m for m in got if m[0] == channel.Tag.SCAN]
    assert all_records(got) == [None]


def test_apply_takes_the_watchers_records_as_they_are(tree: pathlib.Path) -> None:
    # The daemon looks at nothing itself: a record it is given is the record it keeps, and a
    # path it is to record that the watcher had no record for is unknown.
    index = TreeIndex(str(tree))
    index.replace(snap(tree))
    made_up = 12345 << 58
    index.apply([(IN_MODIFY, 0, f"{tree}/top", None)], {f"{tree}/top": made_up})
    assert index.as_dirs()[str(tree)]["top"] == made_up
    # A batch that also removes takes the event-by-event way: the same.
    index.apply([(IN_CREATE, 0, f"{tree}/nowhere", None), (IN_DELETE, 0, f"{tree}/c", None),
                 (IN_ATTRIB, 0, f"{tree}/top", None)], {f"{tree}/top": made_up + 2})
    assert index.as_dirs()[str(tree)]["top"] == made_up + 2
    assert index.as_dirs()[str(tree)]["nowhere"] == UNKNOWN_FILE
    assert "c" not in index.as_dirs()[str(tree)]
