"""Which directories a tree watches, told by their identity (st_dev, st_ino) without asking
the kernel per directory (Tree.watches_dir, Identities.vouched), on real directories with real
watches: removed, moved, and an inode number given to another directory with the removal's
events unread, as ext4 does at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.inotify.test_watches import dir_stat
from watchd.inotify import IN_ALL_EVENTS, InotifyFd
from watchd.inotify.tree import Tree
from watchd.inotify.watches import NOT_OURS, UNSURE, Watches


@pytest.fixture
def ino() -> Iterator[InotifyFd]:
    with InotifyFd() as fd:
        yield fd


def watches_dir(tree: Tree, path: Path) -> bool:
    """Tree.watches_dir of the directory at path, opened as a scan opens it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        return tree.watches_dir(fd, os.fstat(fd))
    finally:
        os.close(fd)


def started(ino: InotifyFd, root: Path) -> Tree:
    tree = Tree(ino, root, IN_ALL_EVENTS, synthetic=True)
    tree.start()
    tree.distrust()
    assert watches_dir(tree, root / "a")  # the kernel confirms a claim: the device is vouched
    return tree


def made_again(old: Path, new: Path, between: Callable[[], object] = lambda: None) -> None:
    """Remove the directory `old`, call `between`, and make `new` with old's inode number,
    or skip."""
    ino = os.stat(old).st_ino
    os.rmdir(old)
    between()
    new.mkdir()
    if os.stat(new).st_ino != ino:
        pytest.skip("this file system gave the new directory another inode number")


def test_a_new_directory_with_a_removed_ones_inode_number_is_not_watched(
        ino: InotifyFd, tmp_path: Path) -> None:
    # The removal's IN_DELETE_SELF and IN_IGNORED are still queued: the record still says the
    # inode number is watched. The directory made since is younger than that claim.
    (tmp_path / "a" / "d").mkdir(parents=True)
    tree = started(ino, tmp_path)
    made_again(tmp_path / "a" / "d", tmp_path / "a" / "e")
    assert not watches_dir(tree, tmp_path / "a" / "e")
    assert watches_dir(tree, tmp_path / "a")


def test_a_removed_directorys_identity_is_forgotten_with_its_events(
        ino: InotifyFd, tmp_path: Path) -> None:
    (tmp_path / "a" / "d").mkdir(parents=True)
    tree = started(ino, tmp_path)
    # IN_DELETE, IN_DELETE_SELF, IN_IGNORED read before the new directory is made
    made_again(tmp_path / "a" / "d", tmp_path / "a" / "e", lambda: tree.handle(ino.read_raw()))
    assert tree.directories == 2
    assert not watches_dir(tree, tmp_path / "a" / "e")


def test_a_moved_directory_is_still_watched_before_and_after_its_events(
        ino: InotifyFd, tmp_path: Path) -> None:
    (tmp_path / "a" / "d").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    tree = started(ino, tmp_path)
    os.rename(tmp_path / "a" / "d", tmp_path / "b" / "d")
    assert watches_dir(tree, tmp_path / "b" / "d")  # its rename unread: known by its inode
    tree.handle(ino.read_raw())
    assert watches_dir(tree, tmp_path / "b" / "d")
    assert tree.directories == 4


def test_a_directory_made_after_the_walk_is_not_watched(ino: InotifyFd, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    tree = started(ino, tmp_path)
    (tmp_path / "a" / "new").mkdir()
    assert not watches_dir(tree, tmp_path / "a" / "new")
    assert tree.directories == 2  # asking left no watch behind


def test_the_record_vouches_only_for_directories_older_than_its_claim(ino: InotifyFd) -> None:
    watches = Watches(ino)
    ids = watches.identities
    old, new = dir_stat(5, ctime_ns=0), dir_stat(5, ctime_ns=time.time_ns())
    watches.remember(7, "/r/", old)
    assert ids.vouched(old) == UNSURE  # the device not confirmed since distrust()
    ids.checked(old, 7, timely=True)  # the kernel agrees
    assert ids.vouched(old) == 7
    assert ids.vouched(new) == UNSURE  # changed since: maybe another directory
    assert ids.vouched(dir_stat(6)) == NOT_OURS
    watches.distrust()
    assert ids.vouched(old) == UNSURE


def test_a_device_whose_time_stamps_are_not_ours_is_always_asked(ino: InotifyFd) -> None:
    watches = Watches(ino)  # device 1 not timely: NFS, FUSE...
    ids = watches.identities
    st = dir_stat(5, ctime_ns=0)
    watches.remember(7, "/r/", st)
    ids.checked(st, 7, timely=False)
    assert ids.vouched(st) == UNSURE


def test_a_claim_the_kernel_denies_or_gives_another_wd_is_dropped(ino: InotifyFd) -> None:
    watches = Watches(ino)
    ids = watches.identities
    a, b = dir_stat(5, ctime_ns=0), dir_stat(6, ctime_ns=0)
    watches.remember(7, "/r/", a)
    watches.remember(8, "/r/x/", b)
    ids.checked(a, 7, timely=True)
    ids.checked(b, -1, timely=False)  # not watched after all (its watch went, its events lost)
    assert ids.vouched(b) == NOT_OURS
    ids.identify(9, a)  # the inode number is another watch's now: 7 went, unread
    assert ids.vouched(a) == 9
    assert 7 not in ids.inode_of
    watches.forget(9)
    assert ids.vouched(a) == NOT_OURS
