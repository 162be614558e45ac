"""The diff of an index that holds one directory at two paths: where it was (its rename lost)
and where it is (reported there by the walk of the directory it went into)."""

from __future__ import annotations

import os
import pathlib

from tests.test_index import check, simple, snap
from watchd.listing import Dirs


def with_stale_path(before: Dirs, after: Dirs, new_top: pathlib.Path) -> Dirs:
    """The index as it is when a rename was lost but its destination was reported: the tree
    before it, and the directory at its new path too (same inodes)."""
    index = {key: dict(children) for key, children in before.items()}
    for key, children in after.items():
        if key == str(new_top) or key.startswith(str(new_top) + "/"):
            index[key] = dict(children)
    index[str(new_top.parent)] = dict(after[str(new_top.parent)])
    return index


def test_the_stale_path_goes_and_the_directory_stays_whole(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "t"
    (root / "x" / "a" / "s" / "c").mkdir(parents=True)
    (root / "x" / "a" / "s" / "f").write_text("1")
    (root / "x" / "a" / "g").write_text("2")
    (root / "y").mkdir()
    before = snap(root)
    os.rename(root / "x" / "a", root / "y" / "b")
    after = snap(root)
    index = with_stale_path(before, after, root / "y" / "b")
    # The stale path first in the index (it was there before), as in the daemon.
    assert list(index).index(str(root / "x" / "a")) < list(index).index(str(root / "y" / "b"))
    got = simple(check(index, after, root))  # check: applied in order, they give `after`
    assert got == [("delete", str(root / "x" / "a" / p)) for p in ("s/f", "s/c", "g", "s")] + [
        ("delete", str(root / "x" / "a"))]


def test_a_stale_path_inside_the_directory_itself(tmp_path: pathlib.Path) -> None:
    # The same with the directory's own subdirectory renamed within it and lost: the index
    # holds b/s (stale) and b/t (reported); the scan has only b/t.
    root = tmp_path / "t"
    (root / "b" / "s" / "c").mkdir(parents=True)
    (root / "b" / "s" / "f").write_text("1")
    before = snap(root)
    os.rename(root / "b" / "s", root / "b" / "t")
    after = snap(root)
    index = {key: dict(children) for key, children in before.items()}
    index[str(root / "b")][("t")] = after[str(root / "b")]["t"]
    index[str(root / "b" / "t")] = dict(after[str(root / "b" / "t")])
    index[str(root / "b" / "t" / "c")] = {}
    got = simple(check(index, after, root))
    assert got == [("delete", str(root / "b" / "s" / p)) for p in ("f", "c")] + [
        ("delete", str(root / "b" / "s"))]


def test_a_directory_held_at_two_stale_paths_and_moved_on_again(tmp_path: pathlib.Path) -> None:
    # Reported at y/b, then renamed again (that rename lost too): neither path the index holds
    # is where it is. The inode alone cannot say which of the two it was to a client, so it
    # is not taken for either: both go, and it comes at z/c with everything it holds.
    root = tmp_path / "t"
    (root / "x" / "a" / "s" / "c").mkdir(parents=True)
    (root / "x" / "a" / "s" / "f").write_text("1")
    (root / "y").mkdir()
    (root / "z").mkdir()
    before = snap(root)
    os.rename(root / "x" / "a", root / "y" / "b")
    index = with_stale_path(before, snap(root), root / "y" / "b")
    os.rename(root / "y" / "b", root / "z" / "c")
    after = snap(root)
    got = simple(check(index, after, root))  # check: applied in order, they give `after`
    assert ("create", str(root / "z" / "c" / "s" / "f")) in got
