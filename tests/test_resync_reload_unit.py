"""A scan of a watch as it was before a reload changed it, still on its way when the reload
comes (a resync's, a rescan's, or one held with a replacement watcher's), is not taken as the
changed watch's first index: that begins with the new watch's own fill (or its root's
return), and the index describes the watch as configured now."""

from __future__ import annotations

import pathlib

from tests.test_index import snap
from watchd.config.model import WatchConfig
from watchd.resync import Resyncer


def test_a_scan_of_the_watch_before_the_reload_is_not_its_first_index(
        tmp_path: pathlib.Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "only_in_a").mkdir(parents=True)
    (b / "only_in_b").mkdir(parents=True)
    resync = Resyncer()
    resync.configure([WatchConfig(name="w", path=str(a))], changed=["w"])
    assert resync.scanned("w", snap(a), 0.0) is not None  # the first: fills the index
    resync.lost("w")  # a resync announced, its scan on its way
    resync.held.append(("w", snap(a), 0.0))  # and one held with a replacement watcher
    assert resync.configure([WatchConfig(name="w", path=str(b))], changed=["w"]) == ["w"]
    assert resync.held == []
    assert resync.scanned("w", snap(a), 0.0) is None  # the old watch's scan: not taken
    assert resync.to_fill() == ["w"]
    assert resync.filled("w", snap(b), True, True)  # the new watch's fill is its index
    assert set(resync.watches["w"].index.as_dirs()) == set(snap(b))
    assert resync.scanned("w", snap(b), 0.0) is not None  # later scans are the new watch's


def test_a_changed_watch_whose_root_comes_back_takes_its_scan(tmp_path: pathlib.Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "x").mkdir(parents=True)
    (b / "y").mkdir(parents=True)
    resync = Resyncer()
    resync.configure([WatchConfig(name="w", path=str(a))], changed=["w"])
    resync.scanned("w", snap(a), 0.0)
    resync.configure([WatchConfig(name="w", path=str(b))], changed=["w"])
    assert resync.restored("w")  # its root was away, and is back: its scan follows
    result = resync.scanned("w", snap(b), 0.0)
    assert result is not None and result.resynced_owed == 1
