"""A whole scan lists a directory the tree watches, which moves before the scan enters it.

The index knows nothing of the directory (it was made while the daemon was down), so the
differences can only say that it exists; its rename's events come after the scan. The tree
has watched it since its walk, without reporting what it holds (the scan was to): it must
report that when the rename's events place the directory.
"""

from __future__ import annotations

import os
import pathlib

from tests.resync_setup import indexed, scanned_watch, settle_and_check
from tests.test_index import snap
from tests.test_scan_race import _resync_race
from watchd.fill import scan_whole
from watchd.index import TreeIndex
from watchd.inotify import InotifyFd
from watchd.records import IN_CREATE, IN_ISDIR, IN_MOVED_FROM, IN_MOVED_TO, Recorder


def test_a_new_directory_moved_away_before_the_scan_enters_it_keeps_its_contents(
        tmp_path: pathlib.Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    lab = indexed(root)  # the index: an empty root
    # Made while nobody watched: neither the index nor the client knows of it.
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "g").write_text("x")
    (root / "d" / "sub" / "leaf").write_text("y")
    with InotifyFd() as ino:
        watch, tree = scanned_watch(root, ino)  # its walk watches d and d/sub
        lab.resync.lost("w")
        moved: list[str] = []

        def rename_while_listing(name: str) -> bool:
            # Called as the scan lists the root (d is listed, with its inode): d moves before
            # the scan can enter it, and its rename's events wait in the queue.
            if name == "d" and not moved:
                os.rename(root / "d", root / "e")
                moved.append(name)
            return True

        watch.wanted = rename_while_listing
        scanned = scan_whole(watch, lambda: None)
        assert scanned is not None and moved, "the scan did not list d"
        assert "d" in scanned[0][str(root)][0].split("/")
        assert str(root / "d") not in scanned[0], "the scan entered d: no race made"
        settle_and_check(lab, lab.resync.scanned("w", scanned[0], 0.0), ino, tree)


def test_a_create_replayed_under_a_directory_renamed_before_the_scan_is_taken_back(
        tmp_path: pathlib.Path) -> None:
    # A file made in a watched directory, which is then renamed, all before the scan: the
    # scan's differences show the directory, file included, at its new name. The kernel's
    # events follow: the create under the old name, then the pair. The pair is a replay (the
    # index has nothing at its source), but the create put the file back under the old name
    # where a client applies it: the pair must take it away again.
    root = tmp_path / "t"
    (root / "d" / "sub").mkdir(parents=True)

    def change() -> None:
        (root / "d" / "sub" / "leaf").write_text("x")
        os.rename(root / "d" / "sub", root / "d" / "moved")

    _resync_race(root, change, lambda: None)


def test_the_replayed_pair_split_from_the_create_takes_it_back(tmp_path: pathlib.Path) -> None:
    # As above, the create read in one batch (recorded under the old name), the pair in the
    # next: the moved_from goes out to take the file away, its moved_to does not.
    root = tmp_path / "t"
    (root / "d" / "moved").mkdir(parents=True)
    (root / "d" / "moved" / "leaf").write_text("x")
    index = TreeIndex(str(root))
    index.replace(snap(root))
    recorder = Recorder()
    create = [(IN_CREATE, 0, f"{root}/d/sub/leaf", None)]
    assert index.apply(create, recorder.records(create)) == create
    pair = [(IN_MOVED_FROM | IN_ISDIR, 5, f"{root}/d/sub", None),
            (IN_MOVED_TO | IN_ISDIR, 5, f"{root}/d/moved", f"{root}/d/sub")]
    assert index.apply(pair, recorder.records(pair)) == pair[:1]
    assert index.as_dirs() == snap(root)
