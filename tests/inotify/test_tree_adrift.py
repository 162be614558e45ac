"""Events below a directory that moved away, read in the same batch as its IN_MOVED_FROM."""

from __future__ import annotations

import os
from pathlib import Path

from watchd.inotify import IN_ALL_EVENTS, IN_MOVED_FROM, IN_Q_OVERFLOW, InotifyFd
from watchd.inotify.tree import Tree, TreeEvent


def batch(ino: InotifyFd, tree: Tree) -> list[TreeEvent]:
    """What one read of everything queued gives (the kernel queues during the syscalls)."""
    return tree.handle(ino.read_raw())


def test_changes_in_a_directory_moved_out_are_not_reported_under_its_old_path(
    tmp_path: Path,
) -> None:
    # A client applies the IN_MOVED_FROM as "a/ and all below it gone"; events that follow
    # in the same read, from the watches still on a/ and a/b/, carry the old paths: reported,
    # they would put root/a/b/f back in its picture, where nothing is.
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    with InotifyFd() as ino:
        tree = Tree(ino, root, IN_ALL_EVENTS, synthetic=True)
        tree.start()
        os.rename(root / "a", outside / "a")
        (outside / "a" / "b" / "f").write_bytes(b"x")
        (outside / "a" / "g").mkdir()
        events = batch(ino, tree)
        assert [(e.mask & IN_MOVED_FROM, e.path) for e in events if e.mask & IN_MOVED_FROM] == [
            (IN_MOVED_FROM, str(root / "a"))]
        stale = [e.path for e in events if e.path.startswith(str(root / "a") + "/")]
        assert stale == []
        assert not tree.overflowed
        assert tree.directories == 1  # it left the tree: only the root is watched
        (outside / "a" / "b" / "h").write_bytes(b"x")
        (root / "c").write_bytes(b"x")
        assert {e.path for e in batch(ino, tree)} == {str(root / "c")}


def test_a_directory_moved_within_the_tree_keeps_reporting_under_its_new_path(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    with InotifyFd() as ino:
        tree = Tree(ino, root, IN_ALL_EVENTS, synthetic=True)
        tree.start()
        os.rename(root / "a", root / "z")
        (root / "z" / "b" / "f").write_bytes(b"x")
        events = batch(ino, tree)
        assert str(root / "z" / "b" / "f") in [e.path for e in events]
        assert not [e for e in events if e.mask & IN_Q_OVERFLOW]
        assert tree.directories == 3
