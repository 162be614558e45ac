"""A resync's scan meets a directory that moves between its parent's listing and its own.

The scan lists the parent (the directory is there), then cannot enter it (it moved away), and
the rename's events come after the scan. The differences must not report the directory's
contents as deleted: applied in order, the synthetic events and then the kernel's leave a
client with the tree as it is, the moved directory's contents at its new place.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Callable

from tests.resync_setup import indexed, scanned_watch, settle_and_check
from tests.test_index import snap
from watchd.fill import scan_whole
from watchd.inotify import InotifyFd
from watchd.listing import thawed
from watchd.scan import scan_parts


def test_a_directory_moved_while_the_scan_ran_keeps_its_contents(tmp_path: pathlib.Path,
                                                                   ) -> None:
    root = tmp_path / "t"
    (root / "a" / "d" / "sub").mkdir(parents=True)
    (root / "a" / "d" / "f").write_text("x")
    (root / "a" / "d" / "sub" / "g").write_text("y")
    lab = indexed(root)
    with InotifyFd() as ino:
        _, tree = scanned_watch(root, ino)
        lab.resync.lost("w")  # a loss: the next scan is compared
        dirs: dict[str, dict[str, int]] = {}
        # One part per directory listed: between two, the walk holds the names still to enter.
        for part in scan_parts(str(root), str(root), recursive=True, wanted=None, prune=None,
                               part_size=1):
            dirs.update(part)
            if str(root / "a") in part:  # a is listed, d is not entered yet
                os.rename(root / "a" / "d", root / "e")
        assert str(root / "a" / "d") not in dirs, "the scan entered d: no race made"
        settle_and_check(lab, lab.resync.scanned("w", dirs, 0.0), ino, tree)


def _resync_race(root: pathlib.Path, change: Callable[[], None],
                 after_scan: Callable[[], None]) -> None:
    """A loss, then `change` made after the tree's walk (its events unread), the watcher's
    whole scan, `after_scan`, and only then the tree's events: applied in order, the
    synthetic events and the kernel's leave a client, and the index, with the tree as it is."""
    lab = indexed(root)
    with InotifyFd() as ino:
        watch, tree = scanned_watch(root, ino)
        lab.resync.lost("w")
        change()
        scanned = scan_whole(watch, lambda: None)
        assert scanned is not None
        after_scan()
        settle_and_check(lab, lab.resync.scanned("w", scanned[0], 0.0), ino, tree)


def test_a_directory_made_after_the_walk_is_not_entered_by_the_scan(tmp_path: pathlib.Path,
                                                                     ) -> None:
    """Its entry, removed before the tree reads the directory's create, has no event: had
    the scan listed it, a client would keep it for good."""
    root = tmp_path / "t"
    (root / "a").mkdir(parents=True)
    d = root / "a" / "d"

    def change() -> None:
        (d / "sub").mkdir(parents=True)
        (d / "x").write_text("x")
        (d / "sub" / "y").write_text("y")

    def after_scan() -> None:
        (d / "x").unlink()
        (d / "sub" / "y").unlink()

    _resync_race(root, change, after_scan)


def test_a_directory_deleted_and_made_again_loses_its_old_contents(tmp_path: pathlib.Path,
                                                                    ) -> None:
    """The new directory (another inode) is not watched yet: it is not entered, and what the
    old one held goes as deletes."""
    root = tmp_path / "t"
    d = root / "a" / "d"
    (d / "sub").mkdir(parents=True)
    (d / "old").write_text("x")
    (d / "sub" / "old").write_text("x")

    def change() -> None:
        shutil.rmtree(d)
        d.mkdir()
        (d / "new").write_text("y")

    def after_scan() -> None:
        (d / "gone").write_text("z")  # made and removed before its create is read
        (d / "gone").unlink()

    _resync_race(root, change, after_scan)


def test_a_directory_watched_since_the_walk_is_entered(tmp_path: pathlib.Path) -> None:
    """The scan still records what the directories the tree watches hold."""
    root = tmp_path / "t"
    (root / "a" / "d").mkdir(parents=True)
    (root / "a" / "d" / "f").write_text("x")
    with InotifyFd() as ino:
        watch, tree = scanned_watch(root, ino)
        scanned = scan_whole(watch, lambda: None)
        assert scanned is not None
        assert thawed(scanned[0]) == snap(root)
        assert tree.directories == 3  # the scan left no watch of its own behind
