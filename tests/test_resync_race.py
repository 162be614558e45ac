"""A resync's scan misses a directory that moves while it runs, on both sides.

The directory moves out of a directory the scan has not entered yet into one it has listed
already: neither listing holds it, so the differences delete its contents, and the rename's
kernel events that follow are a replay to the index (its source is gone) whose destination it
lacks. Nothing published holds what the directory holds: the daemon must scan the watch again
(Resyncer.raced), and that scan's differences make a client's picture exact.
"""

from __future__ import annotations

import pathlib

from tests.picture import listing
from tests.resync_setup import as_messages, indexed, scanned_watch
from tests.test_broker import FakeWatch, make_broker
from tests.test_index import _events, snap
from watchd.config.model import WatchConfig
from watchd.inotify import InotifyFd
from watchd.records import IN_CREATE, IN_ISDIR
from watchd.resync import Resyncer
from watchd.scan import scan_parts


def test_a_directory_the_scan_saw_on_neither_side_is_scanned_again(tmp_path: pathlib.Path,
                                                                   ) -> None:
    root = tmp_path / "t"
    # Whichever of p and q the scan enters first is the destination; the directory that moves
    # is the one below the other, not entered yet then (in breadth- or depth-first order).
    for side in ("p/x", "q/y"):
        (root / side / "d" / "sub").mkdir(parents=True)
        (root / side / "d" / "f").write_text("x")
        (root / side / "d" / "sub" / "g").write_text("y")
    moves = [(root / "p", root / "q" / "y" / "d"), (root / "q", root / "p" / "x" / "d")]
    lab = indexed(root)
    resync, picture = lab.resync, lab.picture
    with InotifyFd() as ino:
        _, tree = scanned_watch(root, ino)
        resync.lost("w")  # a loss announced: the next scan is compared
        dirs: dict[str, dict[str, int]] = {}
        moved = None
        for part in scan_parts(str(root), str(root), recursive=True, wanted=None, prune=None,
                               part_size=1):
            dirs.update(part)
            for into, mover in moves:
                if moved is None and str(into) in dirs and str(mover.parent) not in dirs:
                    moved = into / "moved"
                    mover.rename(moved)
        assert moved is not None and str(moved) not in dirs, "no race made"
        result = resync.scanned("w", dirs, 0.0)
        assert result is not None
        picture.apply_all(as_messages(result.items))
        events = _events(ino, tree, root / "settle")
        published = resync.track("w", [(0.0, events)], [lab.recorder.records(events)])[0][1]
    # The move's events come as the create of an empty directory: the index knows no more.
    assert (IN_CREATE | IN_ISDIR, 0, str(moved), None) in published
    assert resync.raced == ["w"]
    picture.apply_all(as_messages(published))
    assert str(moved / "f") not in picture.paths
    # The daemon announces another resync (Resyncer.rescan_raced) and the watcher scans again.
    resync.lost("w")
    again = resync.scanned("w", snap(root), 0.0)
    assert again is not None and again.resynced_owed == 1
    picture.apply_all(as_messages(again.items))
    assert picture.paths == listing(root)
    assert resync.watches["w"].index.as_dirs() == snap(root)


def test_races_keep_one_rescan_outstanding_and_back_off(tmp_path: pathlib.Path) -> None:
    # A user who renames a directory back and forth makes a race at every scan: each is
    # answered, but by one rescan at a time, and less and less often.
    root = tmp_path / "t"
    (root / "d").mkdir(parents=True)
    broker = make_broker(watches=(FakeWatch("w"),))
    resync = Resyncer()
    resync.configure([WatchConfig(name="w", path=str(root))], changed=["w"])
    assert resync.scanned("w", snap(root), 0.0) is not None  # the first: fills the index
    asked: list[str] = []

    def race(now: float) -> None:
        resync.raced.append("w")
        resync.rescan_raced(broker, asked.append, now=now)

    race(100.0)
    assert asked == ["w"] and broker.overflows == 1
    for now in (100.1, 100.2, 500.0):  # while its scan has not come: no other
        race(now)
    assert asked == ["w"] and broker.overflows == 1
    assert resync.scanned("w", snap(root), 0.0) is not None  # it comes, 0.5 s after the first
    resync.rescan_raced(broker, asked.append, now=100.5)  # (the tick) too soon after it
    assert asked == ["w"]
    resync.rescan_raced(broker, asked.append, now=101.0)  # exactly one more for those races
    resync.rescan_raced(broker, asked.append, now=101.1)
    assert asked == ["w", "w"] and broker.overflows == 2
    assert resync.scanned("w", snap(root), 0.0) is not None
    race(101.5)  # the wait has doubled: 2 s after the last
    race(102.9)
    assert asked == ["w", "w"]
    resync.rescan_raced(broker, asked.append, now=103.0)
    assert asked == ["w", "w", "w"] and broker.overflows == 3
    assert not resync.racing()
    # Each announced resync is answered by one `resynced`.
    last = resync.scanned("w", snap(root), 0.0)
    assert last is not None and last.resynced_owed == 1
