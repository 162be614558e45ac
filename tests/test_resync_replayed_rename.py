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

import os
import pathlib
from collections.abc import Callable

import pytest

from tests.picture import listing
from tests.resync_setup import Indexed, as_messages, indexed
from tests.test_broker import make_broker
from tests.test_index import paths, snap
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


def after_a_loss(lab: Indexed) -> list[Item]:
    """The watch's loss and its scan of the tree as it is now; the differences, applied to the
    client's picture, are returned."""
    lab.resync.lost("w")
    result = lab.resync.scanned("w", snap(lab.root), 0.0)
    assert result is not None
    lab.picture.apply_all(as_messages(result.items))
    return result.items


def tracked(lab: Indexed, items: list[Item]) -> list[Item]:
    """One read of events through the index, its records taken now; what goes out is applied
    to the client's picture, which must then hold the tree's paths, as must the index."""
    out = lab.resync.track("w", [(0.0, items)], [lab.recorder.records(items)])[0][1]
    lab.picture.apply_all(as_messages(out))
    assert lab.picture.paths == listing(lab.root)
    assert lab.resync.watches["w"].index.as_dirs() == snap(lab.root)
    return out


def renamed_before_the_scan(tmp_path: pathlib.Path) -> tuple[Indexed, pathlib.Path, pathlib.Path]:
    """`d` made, filled and renamed `renamed` after the index was filled, then a loss and its
    scan (applied to the client's picture)."""
    root = tmp_path / "t"
    (root / "stable").mkdir(parents=True)
    lab = indexed(root)
    d, renamed = root / "d", root / "renamed"
    fill(d)
    d.rename(renamed)
    after_a_loss(lab)
    return lab, d, renamed


def test_a_replayed_create_and_rename_keep_what_the_scan_found(tmp_path: pathlib.Path) -> None:
    lab, d, renamed = renamed_before_the_scan(tmp_path)
    root = lab.root
    assert lab.picture.paths == listing(root)
    tracked(lab, made_and_renamed(d, renamed))


def test_a_directory_made_and_renamed_after_the_scan_is_still_moved(
        tmp_path: pathlib.Path) -> None:
    # The same events for changes made after the scan: a real move, published as one.
    root = tmp_path / "t"
    (root / "stable").mkdir(parents=True)
    lab = indexed(root)
    assert after_a_loss(lab) == []
    d, renamed = root / "d", root / "renamed"
    d.mkdir()
    d.rename(renamed)
    items = made_and_renamed(d, renamed)
    assert tracked(lab, items) == items


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
    after_a_loss(lab)
    tracked(lab, [*made_and_renamed(d, between),
                  (IN_MOVED_FROM | IN_ISDIR, COOKIE + 1, str(between), None),
                  (IN_MOVED_TO | IN_ISDIR, COOKIE + 1, str(renamed), str(between))])


# The rule must not take a real move for a replay when ext4 gives the inode number of the
# directory the index holds at the destination (freed by a rename over it) to the next
# directory made: the records, taken once the renames are done, then show "that very
# directory" at the destination. No loss here, so nothing would ever repair a dropped move.

TRIES = 200


def reused(lab_root: pathlib.Path, first: Callable[[], None], then: Callable[[], None],
           again: pathlib.Path, undo: Callable[[], None]) -> Indexed:
    """Index the tree, then run `first` (which frees the inode of `dest`) and `then` (which
    makes `again`) until `again` has the inode `dest` had when indexed; `undo` puts the tree
    back between tries. Skips where the file system never reuses it."""
    for _ in range(TRIES):
        lab = indexed(lab_root)
        old = os.stat(lab_root / "dest").st_ino
        first()
        then()
        if os.stat(again).st_ino == old:
            return lab
        undo()
    pytest.skip(f"the file system gave no freed inode number again in {TRIES} tries")


def published(lab: Indexed, reads: list[list[Item]]) -> None:
    """Track the reads, their records taken now (after every change), and apply what goes
    out to the client's picture: it, and the index, must hold the tree's paths (a path a
    read named and the next moved away is recorded unknown: taken now, it was gone)."""
    records = [lab.recorder.records(items) for items in reads]
    out = lab.resync.track("w", [(0.0, items) for items in reads], records)
    for _when, items in out:
        lab.picture.apply_all(as_messages(items))
    assert lab.picture.paths == listing(lab.root)
    watch = lab.resync.watches["w"]
    assert paths(watch.index.as_dirs()) == paths(snap(lab.root))
    assert not watch.index.unseen and not lab.resync.raced  # no needless rescan


def with_dest(tmp_path: pathlib.Path) -> pathlib.Path:
    """A tree with `stable` and an empty `dest`."""
    root = tmp_path / "t"
    (root / "stable").mkdir(parents=True)
    (root / "dest").mkdir()
    return root


def test_a_move_onto_a_reused_inode_split_between_reads_is_published(
        tmp_path: pathlib.Path) -> None:
    # mkdir tmp; mv tmp dest; mkdir d (dest's old inode); echo x > d/f; mv d dest, the read
    # ending between moved_from d and moved_to dest.
    root = with_dest(tmp_path)
    tmp, d, dest = root / "tmp", root / "d", root / "dest"

    def first() -> None:
        tmp.mkdir()
        tmp.rename(dest)

    lab = reused(root, first, d.mkdir, d, d.rmdir)
    (d / "f").write_text("x")
    d.rename(dest)
    a = [(IN_CREATE | IN_ISDIR, 0, str(tmp), None),
         (IN_MOVED_FROM | IN_ISDIR, COOKIE, str(tmp), None),
         (IN_MOVED_TO | IN_ISDIR, COOKIE, str(dest), str(tmp)),
         (IN_CREATE | IN_ISDIR, 0, str(d), None),
         (IN_CREATE, 0, str(d / "f"), None),
         (IN_MOVED_FROM | IN_ISDIR, COOKIE + 1, str(d), None)]
    b = [(IN_MOVED_TO | IN_ISDIR, COOKIE + 1, str(dest), str(d))]
    published(lab, [a, b])


@pytest.mark.parametrize("split", [False, True])
def test_a_filled_directory_moved_over_a_reused_inode_is_published(
        tmp_path: pathlib.Path, split: bool) -> None:
    # mkdir tmp; echo x > tmp/f; mv tmp dest; mv dest elsewhere; mkdir dest (the old inode):
    # tmp's move onto dest is real (it holds f, the scan's dest did not).
    root = with_dest(tmp_path)
    tmp, dest, elsewhere = root / "tmp", root / "dest", root / "elsewhere"

    def first() -> None:
        tmp.mkdir()
        (tmp / "f").write_text("x")
        tmp.rename(dest)
        dest.rename(elsewhere)

    def undo() -> None:
        (elsewhere / "f").unlink()
        elsewhere.rmdir()

    lab = reused(root, first, dest.mkdir, dest, undo)
    items = [(IN_CREATE | IN_ISDIR, 0, str(tmp), None),
             (IN_CREATE, 0, str(tmp / "f"), None),
             (IN_MOVED_FROM | IN_ISDIR, COOKIE, str(tmp), None),
             (IN_MOVED_TO | IN_ISDIR, COOKIE, str(dest), str(tmp)),
             (IN_MOVED_FROM | IN_ISDIR, COOKIE + 1, str(dest), None),
             (IN_MOVED_TO | IN_ISDIR, COOKIE + 1, str(elsewhere), str(dest)),
             (IN_CREATE | IN_ISDIR, 0, str(dest), None)]
    published(lab, [items[:2], items[2:]] if split else [items])


def test_once_the_watcher_caught_up_a_move_is_never_taken_for_its_replay(
        tmp_path: pathlib.Path) -> None:
    # The events of the first test above, once the watcher has said that every event older
    # than the scan is out (channel.Caught): none of them can be older than it, so they go out
    # as they are. Ticks alone, with or without events, do not close the window.
    lab, d, renamed = renamed_before_the_scan(tmp_path)
    for _ in range(100):
        lab.resync.unsettled(tick=True)
        lab.resync.track("w", [(0.0, [])], [{}])
    lab.resync.caught(make_broker(), "w")  # nothing owed: it publishes nothing
    items = made_and_renamed(d, renamed)
    out = lab.resync.track("w", [(0.0, items)], [lab.recorder.records(items)])
    assert out[0][1] == items
