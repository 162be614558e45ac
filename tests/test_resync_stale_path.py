"""A resync whose index holds one directory at two paths.

A directory is renamed into a new directory while the watcher is behind, and the kernel's queue
overflows before the rename's moved_from gets in (it is lost). Reading the new directory's
create, the watcher walks it and reports the renamed directory there, contents and all: the
index now has it at its old path (stale) and at its new one, the same inodes at both. The
resync that follows must take the stale path away and leave the directory where it is; taken
for the directory's old self, the stale path made its contents vanish from a client's picture.
"""

from __future__ import annotations

import os
import pathlib

import pytest

from tests.picture import Picture, listing
from tests.resync_setup import as_messages
from tests.sysctl import sysctl
from tests.test_index import QUIET, _events, snap
from watchd.config.model import WatchConfig
from watchd.inotify import IN_Q_OVERFLOW, InotifyFd
from watchd.inotify.tree import Tree
from watchd.records import Recorder
from watchd.resync import Resyncer

QUEUE = 64


def flood(path: pathlib.Path, times: int) -> None:
    """3 kernel events each (modify, close_write, attrib): no two alike in a row, none merged."""
    for _ in range(times):
        with path.open("ab") as f:
            f.write(b"z")
        os.utime(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to lower "
                    "fs.inotify.max_queued_events (the overflow that loses the rename)")
def test_the_stale_path_goes_and_the_directory_keeps_its_contents(tmp_path: pathlib.Path,
                                                                  ) -> None:
    root = tmp_path / "t"
    moved = root / "x" / "a"
    (moved / "s" / "c").mkdir(parents=True)
    (moved / "s" / "f").write_text("1")
    (moved / "g").write_text("2")
    (root / "flood").touch()
    resync = Resyncer()
    resync.configure([WatchConfig(name="w", path=str(root))], changed=["w"])
    assert resync.scanned("w", snap(root), 0.0) is not None  # the first: fills the index
    picture = Picture(listing(root))  # a client's, in step with the index
    recorder = Recorder()
    with sysctl("max_queued_events", QUEUE):  # taken by the inotify fd as it is made
        ino = InotifyFd()
    with ino:
        tree = Tree(ino, str(root), QUIET, synthetic=True)
        tree.start()
        (root / "y").mkdir()  # queued; read, it has the tree walk y
        flood(root / "flood", QUEUE)  # the queue overflows
        os.rename(moved, root / "y" / "b")  # its moved_from is lost
        events = tree.handle(ino.read_raw())
        assert tree.overflowed
        cut = next(i for i, ev in enumerate(events) if ev.mask & IN_Q_OVERFLOW)
        items = [(ev[0], ev[1], ev[2], ev[3]) for ev in events[:cut]]
        assert (str(root / "y" / "b" / "s" / "f")) in [item[2] for item in items], \
            "the walk of y did not report what y/b holds"
        published = resync.track("w", [(0.0, items)], [recorder.records(items)])[0][1]
        picture.apply_all(as_messages(published))
        # A change inside it before the resync's scan (its events come after the resync):
        # the scan's listing of y/b/s then differs from the index's, so the resync compares
        # y/b, with the stale x/a beside it.
        (root / "y" / "b" / "s" / "new").write_text("3")
        resync.lost("w")
        result = resync.scanned("w", snap(root), 0.0)
        assert result is not None
        picture.apply_all(as_messages(result.items))
        assert str(root / "y" / "b" / "s" / "f") in picture.paths
        later = _events(ino, tree, root / "settle")
        published = resync.track("w", [(0.0, later)], [recorder.records(later)])[0][1]
        picture.apply_all(as_messages(published))
    assert picture.paths == listing(root)
    assert resync.watches["w"].index.as_dirs() == snap(root)
