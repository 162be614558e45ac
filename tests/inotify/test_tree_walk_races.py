"""The tree's walks of directories (new ones, and those listed again) racing with the events
still queued: what a walk reports must never contradict what a client applies after it."""

from __future__ import annotations

from pathlib import Path

from tests.test_tree import _overflow
from watchd.inotify import IN_ATTRIB, IN_CREATE, IN_Q_OVERFLOW, InotifyFd
from watchd.inotify.tree import Tree


def test_nothing_listed_is_reported_after_an_overflow_in_the_same_read(tmp_path: Path) -> None:
    # A directory gone before the tree could walk it gets its parent listed again at the end
    # of the read. With an overflow in that read, the listing's creates would go out after
    # the overflow's resync, which already describes the tree; and they describe it as it
    # was before: under names that may have changed meanwhile with no event left to say so.
    root = tmp_path / "root"
    root.mkdir()
    with InotifyFd() as ino:
        tree = Tree(ino, root, IN_CREATE | IN_ATTRIB, synthetic=True)
        tree.start()
        (root / "x").mkdir()
        (root / "x").rmdir()  # its create is read after it went: the root is listed again
        _overflow(ino, root)
        (root / "new" / "inner").mkdir(parents=True)  # no event: the queue is full
        (root / "new" / "inner" / "f").touch()
        events = tree.handle(ino.read_raw())
        assert tree.overflowed
        cut = next(i for i, e in enumerate(events) if e.mask & IN_Q_OVERFLOW)
        assert events[cut + 1:] == []
        # The resync that follows an overflow watches and reports it all.
        assert [e.path for e in tree.resync()] == [
            str(root / "new"), str(root / "new" / "inner"), str(root / "new" / "inner" / "f")]
        assert tree.directories == 3


def test_a_directory_found_by_listing_its_parent_again_comes_before_what_it_holds(
        tmp_path: Path) -> None:
    # The parent is listed again at the end of a read (a directory in it went before the
    # tree could walk it) and meets a directory whose create is not read yet. Reporting only
    # what it holds, the tree left the directory itself to its kernel create, which comes in
    # a later read: after its contents, or never, when the queue overflows before it.
    root = tmp_path / "root"
    root.mkdir()
    with InotifyFd() as ino:
        tree = Tree(ino, root, IN_CREATE, synthetic=True)
        tree.start()
        (root / "x").mkdir()
        (root / "x").rmdir()
        first = ino.read_raw()  # read: the create of x; not yet queued: that of new
        (root / "new" / "inner").mkdir(parents=True)
        (root / "new" / "inner" / "f").touch()
        events = tree.handle(first)
        events += tree.handle(ino.read_raw())
        known = {str(root)}
        for e in events:
            assert e.path.rpartition("/")[0] in known, f"{e.path} before its directory"
            known.add(e.path)
        assert [e.path for e in events].count(str(root / "new")) == 1
        assert {e.path for e in events} >= {
            str(root / "new"), str(root / "new" / "inner"), str(root / "new" / "inner" / "f")}
