"""A directory made, filled and renamed before a resync's scan: the scan finds it, contents and
all, under its new name; the kernel's events of those changes come after the differences.

Found by the follower through daemon restarts (tests/e2e/test_follow_restarts.py): at start
the tree's walk watched such a directory before its create was read (made between the root's
watch and its listing), so the create was not taken for the listing's duplicate, and the
first read after the start-up scan was its create, then its rename. The create gave the index
the old name, so the rename was taken for a real move and published: a client replaced what
the scan's differences had made at the new name with the bare directory of the create, and
the index kept what it no longer had. The batch below is that read's events, as the tree
sent them; the tree, the scan and the records are real.
"""

from __future__ import annotations

import pathlib

from tests.picture import listing
from tests.resync_setup import as_messages, indexed
from tests.test_index import snap
from watchd.records import IN_CREATE, IN_ISDIR, IN_MOVED_FROM, IN_MOVED_TO, Item

COOKIE = 4242


def fill(d: pathlib.Path) -> None:
    d.mkdir()
    (d / "g").write_text("x")
    (d / "moved").mkdir()
    (d / "moved" / "leaf").write_text("z")


def made_and_renamed(d: pathlib.Path, to: pathlib.Path) -> list[Item]:
    """The events of a directory's create and rename, as the tree reports them."""
    return [(IN_CREATE | IN_ISDIR, 0, str(d), None),
            (IN_MOVED_FROM | IN_ISDIR, COOKIE, str(d), None),
            (IN_MOVED_TO | IN_ISDIR, COOKIE, str(to), str(d))]


def test_a_replayed_create_and_rename_keep_what_the_scan_found(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "t"
    (root / "stable").mkdir(parents=True)
    lab = indexed(root)
    d, renamed = root / "d", root / "renamed"
    fill(d)
    d.rename(renamed)
    lab.resync.lost("w")
    result = lab.resync.scanned("w", snap(root), 0.0)
    assert result is not None
    lab.picture.apply_all(as_messages(result.items))
    assert lab.picture.paths == listing(root)
    items = made_and_renamed(d, renamed)
    published = lab.resync.track("w", [(0.0, items)], [lab.recorder.records(items)])[0][1]
    lab.picture.apply_all(as_messages(published))
    assert lab.picture.paths == listing(root)
    assert lab.resync.watches["w"].index.as_dirs() == snap(root)


def test_a_directory_made_and_renamed_after_the_scan_is_still_moved(
        tmp_path: pathlib.Path) -> None:
    # The same events for changes made after the scan: a real move, published as one.
    root = tmp_path / "t"
    (root / "stable").mkdir(parents=True)
    lab = indexed(root)
    lab.resync.lost("w")
    result = lab.resync.scanned("w", snap(root), 0.0)
    assert result is not None and result.items == []
    d, renamed = root / "d", root / "renamed"
    d.mkdir()
    d.rename(renamed)
    items = made_and_renamed(d, renamed)
    published = lab.resync.track("w", [(0.0, items)], [lab.recorder.records(items)])[0][1]
    assert published == items
    lab.picture.apply_all(as_messages(published))
    assert lab.picture.paths == listing(root)
    assert lab.resync.watches["w"].index.as_dirs() == snap(root)


def test_a_replayed_create_and_two_renames_keep_what_the_scan_found(
        tmp_path: pathlib.Path) -> None:
    # Renamed twice before the scan: the first rename's destination is not in the index (a
    # real move, to a client too), the second's is, as the very directory the batch created.
    root = tmp_path / "t"
    (root / "stable").mkdir(parents=True)
    lab = indexed(root)
    d, between, renamed = root / "d", root / "between", root / "renamed"
    fill(d)
    d.rename(between)
    between.rename(renamed)
    lab.resync.lost("w")
    result = lab.resync.scanned("w", snap(root), 0.0)
    assert result is not None
    lab.picture.apply_all(as_messages(result.items))
    items = [*made_and_renamed(d, between),
             (IN_MOVED_FROM | IN_ISDIR, COOKIE + 1, str(between), None),
             (IN_MOVED_TO | IN_ISDIR, COOKIE + 1, str(renamed), str(between))]
    published = lab.resync.track("w", [(0.0, items)], [lab.recorder.records(items)])[0][1]
    lab.picture.apply_all(as_messages(published))
    assert lab.picture.paths == listing(root)
    assert lab.resync.watches["w"].index.as_dirs() == snap(root)
