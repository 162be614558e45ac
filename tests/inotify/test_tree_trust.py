"""When a tree stops vouching for directories by its record of identities, and asks the kernel
again (Identities.vouched): the wall clock stepped back, a device number given to another file
system. Real inotify, real directories, real mounts; the clock is the machine's, read ahead
by a set amount where a test steps it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.inotify.test_tree_identity import made_again, watches_dir
from watchd.inotify import IN_ALL_EVENTS, InotifyFd
from watchd.inotify.tree import Tree
from watchd.inotify.watches import UNSURE

STEP_NS = 5_000_000_000


@dataclasses.dataclass
class SteppedClock:
    """The machine's clocks, the wall clock read `ahead` ns ahead of the real one."""

    ahead: int = 0

    def realtime_ns(self) -> int:
        return time.time_ns() + self.ahead

    def boottime_ns(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


@pytest.fixture
def ino() -> Iterator[InotifyFd]:
    with InotifyFd() as fd:
        yield fd


def started(ino: InotifyFd, root: Path, clock: SteppedClock) -> Tree:
    tree = Tree(ino, root, IN_ALL_EVENTS, synthetic=True, clock=clock)
    tree.start()
    tree.distrust()
    assert watches_dir(tree, root / "a")  # the kernel confirms a claim: the device is vouched
    return tree


def stepped_back(ino: InotifyFd, root: Path) -> Tree:
    """A tree of root/a/d whose claims were stamped while the wall clock ran 5 s ahead, and
    the clock then stepped back (NTP, date -s): a directory made now looks older than them."""
    (root / "a" / "d").mkdir(parents=True)
    clock = SteppedClock(ahead=STEP_NS)
    tree = started(ino, root, clock)
    clock.ahead = 0
    return tree


def made_again_unseen(tree: Tree, root: Path) -> None:
    """d removed and made again as e with its inode number, its removal's events unread (as
    after an overflow): e's ctime is older than d's claim, and e is not watched."""
    made_again(root / "a" / "d", root / "a" / "e")
    assert not watches_dir(tree, root / "a" / "e")


def test_a_clock_stepped_back_before_a_resync_has_the_kernel_asked_again(
        ino: InotifyFd, tmp_path: Path) -> None:
    tree = stepped_back(ino, tmp_path)
    made_again(tmp_path / "a" / "d", tmp_path / "a" / "e")
    tree.distrust()  # a resync or a scan begins
    assert watches_dir(tree, tmp_path / "a")
    assert not watches_dir(tree, tmp_path / "a" / "e")


def test_a_clock_step_seen_when_a_watch_is_added_has_the_kernel_asked_again(
        ino: InotifyFd, tmp_path: Path) -> None:
    tree = stepped_back(ino, tmp_path)
    (tmp_path / "b").mkdir()
    tree.handle(ino.read_raw())  # b watched and stamped: the step is seen there
    assert tree.directories == 4
    made_again_unseen(tree, tmp_path)


def mount(kind: str, path: Path) -> None:
    subprocess.run(["mount", "-t", kind, "none", str(path)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs and a ramfs: needs root")
def test_a_device_number_given_to_another_file_system_is_asked_about_again(
        ino: InotifyFd, tmp_path: Path) -> None:
    # A tmpfs mounted in the tree is unmounted, and a ramfs (standing in for a user's FUSE
    # mount: its time stamps are not trusted) takes its device number at the same place.
    m = tmp_path / "m"
    (tmp_path / "a").mkdir()
    m.mkdir()
    mount("tmpfs", m)
    try:
        (m / "x").mkdir()
        (m / "y").mkdir()
        clock = SteppedClock(ahead=2 * STEP_NS)  # the directories are older than the claims
        tree = started(ino, tmp_path, clock)
        assert watches_dir(tree, m / "x")
        dev = os.stat(m).st_dev
        # tmpfs: its time stamps are trusted.
        assert tree._watches.identities.vouched(os.stat(m / "y")) >= 0
        subprocess.run(["umount", str(m)], check=True)
        mount("ramfs", m)
        if os.stat(m).st_dev != dev:
            pytest.skip("the ramfs was given another device number")
        (m / "x").mkdir()
        (m / "y").mkdir()
        tree.handle(ino.read_raw())  # IN_UNMOUNT, IN_IGNORED
        assert tree.unmounted
        tree.resync()  # watches the ramfs's directories
        assert watches_dir(tree, m / "x")  # the kernel confirms a claim on the device
        assert tree._watches.identities.vouched(os.stat(m / "y")) == UNSURE
    finally:
        subprocess.run(["umount", str(m)], check=False)


def test_a_clock_step_is_seen_when_a_directory_is_vouched_for_between_walks(
        ino: InotifyFd, tmp_path: Path) -> None:
    # Nothing walks and nothing new is watched after the step: events handled meanwhile ask
    # whether a directory is watched (Reach), and the step must be seen there too.
    made_again_unseen(stepped_back(ino, tmp_path), tmp_path)
