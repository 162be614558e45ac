"""After an `overflow` with "resync": false, the index is built again from the tree as it is.

Its subscribers rescan then (the documented rule), so the index must describe what they found,
not the tree before the loss: otherwise a path made during that loss and gone during the next
is in every client's picture and in neither of the daemon's two sides, and the next resync
never says it went. The real index and real scans of a real tree.
"""

from __future__ import annotations

import pathlib

from tests.picture import listing
from tests.resync_setup import as_messages, indexed
from tests.test_broker import FakeWatch, make_broker
from tests.test_index import snap


def test_the_scan_after_an_abandoned_resync_is_taken_silently_and_the_next_diff_is_exact(
        tmp_path: pathlib.Path) -> None:
    root = tmp_path / "t"
    (root / "d").mkdir(parents=True)
    (root / "a").write_text("a")
    lab = indexed(root)
    resync, picture = lab.resync, lab.picture
    # A loss, announced; meanwhile a file is made; then the resync is abandoned.
    resync.lost("w")
    (root / "d" / "new").write_text("made in the loss")
    assert resync.abandoned("w"), "a scan of the tree as it is must be asked"
    assert not resync.abandoned("w"), "asked once: a root that stays away makes no loop"
    # The index is incomplete until that scan: a loss meanwhile is told "resync": false, and
    # nothing stale is stored for it.
    assert resync.resyncing(["w"]) == frozenset()
    assert {name: dirs for name, dirs, _ in resync.indexes()} == {"w": None}
    picture.paths = listing(root)  # the clients' rescan, at "resync": false
    taken = resync.scanned("w", snap(root), 0.0)
    assert taken is not None and not taken.compared and taken.items == []
    assert resync.resyncing(["w"]) == frozenset({"w"})
    # The next loss undoes what the last one made: its diff is against the re-based index.
    resync.lost("w")
    (root / "d" / "new").unlink()
    result = resync.scanned("w", snap(root), 0.0)
    assert result is not None and result.resynced_owed == 1 and result.changes == 1
    picture.apply_all(as_messages(result.items))
    assert picture.paths == listing(root)


def test_a_root_away_when_abandoned_reports_all_it_holds_when_it_returns(
        tmp_path: pathlib.Path) -> None:
    root, away = tmp_path / "t", tmp_path / "away"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("f")
    lab = indexed(root)
    resync = lab.resync
    resync.lost("w")
    root.rename(away)
    assert resync.abandoned("w")
    # The scan asked finds no root (the daemon is sent None, and says nothing more): the
    # clients rescanned an empty tree. The root comes back unchanged: all it holds is new.
    lab.picture.paths = listing(root)
    away.rename(root)
    assert resync.restored("w")
    result = resync.scanned("w", snap(root), 0.0)
    assert result is not None and result.resynced_owed == 1
    assert {path for _, _, path, _ in result.items} == listing(root)
    lab.picture.apply_all(as_messages(result.items))
    assert lab.picture.paths == listing(root)


def test_a_race_waiting_for_its_rescan_is_answered_by_the_scan_abandon_asks(
        tmp_path: pathlib.Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    lab = indexed(root)
    resync = lab.resync
    broker = make_broker(watches=(FakeWatch("w"),))
    asked: list[str] = []
    resync.raced.append("w")
    resync.rescan_raced(broker, asked.append, now=0.0)
    resync.raced.append("w")  # another race while that rescan is under way: one more waits
    resync.rescan_raced(broker, asked.append, now=0.5)
    assert asked == ["w"] and resync.racing()
    assert resync.abandoned("w")
    # An incomplete index announces no resync: the scan abandon asked for fills it.
    assert not resync.racing()
    resync.rescan_raced(broker, asked.append, now=100.0)
    assert asked == ["w"]
