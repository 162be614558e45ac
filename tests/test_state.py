"""The state directory on real files, and an index brought forward by the journal's events."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.harness import NOBODY
from watchd import journal
from watchd import state as st
from watchd import statefiles as sf
from watchd.config.model import WatchConfig
from watchd.diff import diff
from watchd.events import KIND_BITS, Kind
from watchd.listing import Dirs
from watchd.protocol.event_lines import EventEncoder
from watchd.records import UNKNOWN_FILE
from watchd.replay import Held, Marker
from watchd.restore import (
    bring_forward,
    index_spec,
    restored_marker,
    unanswered,
    usable_indexes,
)
from watchd.resync import Resyncer
from watchd.scan import scan

ROOT = os.geteuid() == 0
IN_ISDIR = 0x40000000


def held(seq: int, kind: Kind, path: str, *, is_dir: bool = False, cookie: int = 0,
         src: str | None = None, watch: str = "w") -> Held:
    bits = {Kind.CREATE: 0x100, Kind.DELETE: 0x200, Kind.MODIFY: 0x2, Kind.MOVED_FROM: 0x40,
            Kind.MOVED_TO: 0x80}[kind] | (IN_ISDIR if is_dir else 0)
    tail = EventEncoder().tail(seq, 1.0, watch, kind, path, bits, cookie, src)
    return (seq, watch, KIND_BITS[kind], path, tail)


def opened(path: Path) -> st.State:
    return st.State(str(path), max_bytes=1 << 20, fsync_interval=1.0, retain=lambda: 100)


def test_a_fresh_directory_is_made_private_and_locked(tmp_path: Path) -> None:
    path = tmp_path / "state"
    state = opened(path)
    assert state.open({}) is None
    assert state.start("abc", 0)
    assert state.durable
    assert path.stat().st_mode & 0o777 == 0o700
    meta = json.loads((path / "state.json").read_text())
    assert meta["instance"] == "abc" and meta["clean"] is False
    # A second daemon on the same directory does not get it.
    other = opened(path)
    assert other.open({}) is None
    assert not other.start("def", 0)
    assert not other.durable


@pytest.mark.skipif(not ROOT, reason="making a directory another user's needs root")
def test_a_directory_of_another_user_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    os.chown(path, NOBODY, NOBODY)
    state = opened(path)
    state.open({})
    assert not state.start("abc", 0)
    assert not (path / "state.json").exists()


def stopped_cleanly(path: Path, dirs: Dirs) -> None:
    state = opened(path)
    state.open({})
    assert state.start("inst", 0)
    assert state.journal is not None
    state.journal.events([held(1, Kind.CREATE, "/r/a")])
    blobs = state._blobs(1, [("w", "spec", dirs, None)])
    assert not sf.write_all(blobs)
    state._write_meta("inst", clean=True, seq=1)
    state.journal.close()
    os.close(state._lock_fd)


def test_a_clean_stop_is_resumed(tmp_path: Path) -> None:
    path = tmp_path / "state"
    stopped_cleanly(path, {"/r": {"a": 12}})
    resumed = opened(path).open({"w": "spec"})
    assert resumed is not None
    assert resumed.instance == "inst"
    assert resumed.loaded.last_seq == 1
    assert resumed.indexes["w"] == sf.StoredIndex("spec", 1, {"/r": {"a": 12}})


def test_an_unclean_stop_in_an_earlier_boot_is_not_resumed(tmp_path: Path) -> None:
    path = tmp_path / "state"
    stopped_cleanly(path, {"/r": {}})
    meta = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps({**meta, "clean": False, "boot_id": "other"}))
    state = opened(path)
    assert state.open({"w": "spec"}) is None
    assert not list((path / "journal").iterdir())  # the old run's records are gone
    os.close(state._lock_fd)
    meta["clean"] = False  # the same boot: a crash of the daemon alone is resumed
    stopped_cleanly(path, {"/r": {}})
    (path / "state.json").write_text(json.dumps({**meta, "boot_id": st.boot_id()}))
    assert opened(path).open({"w": "spec"}) is not None


@pytest.mark.parametrize("data", [b"", b"WDINDEX1", b"WDINDEX1" + b"\0" * 40, b"junk"])
def test_an_unreadable_index_is_an_error(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(sf.StateError):
        sf.decode_index(data, "f")


def test_an_index_round_trips() -> None:
    dirs = {"/r": {"a": 5, "d": 7}, "/r/d": {}}
    assert sf.decode_index(sf.encode_index("w", "s", 9, dirs), "f") == (
        "w", sf.StoredIndex("s", 9, dirs))


def test_the_journal_brings_an_index_forward(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "d").mkdir(parents=True)
    (root / "d" / "x").write_text("x")
    (root / "a").write_text("a")
    (root / "b").write_text("b")
    r = str(root)
    before = scan(r, r, recursive=True, wanted=None, prune=None)
    # What the journal holds after the index was taken, and the tree with it applied.
    (root / "c").write_text("c")
    (root / "a").unlink()
    os.rename(root / "d", root / "e")
    (root / "b").write_text("bb")
    entries = [
        held(5, Kind.CREATE, "/elsewhere", watch="other"),
        held(6, Kind.CREATE, f"{r}/c"),
        held(7, Kind.DELETE, f"{r}/a"),
        held(8, Kind.MOVED_FROM, f"{r}/d", is_dir=True, cookie=3),
        held(9, Kind.MOVED_TO, f"{r}/e", is_dir=True, cookie=3, src=f"{r}/d"),
        held(10, Kind.MODIFY, f"{r}/b"),
    ]
    moved = dict(before[f"{r}/d"])
    dirs = bring_forward(sf.StoredIndex("s", 4, before), "w", entries, 10)
    assert dirs is not None
    assert set(dirs[r]) == {"b", "c", "e"}
    assert dirs[f"{r}/e"] == moved  # moved whole, with what it held
    assert dirs[r]["c"] == UNKNOWN_FILE
    # Compared with the tree, only what the journal could not tell is reported again.
    now = scan(r, r, recursive=True, wanted=None, prune=None)
    found = diff(dirs, now, r, iter(range(1 << 32, 1 << 33)))
    assert {item[2] for item in found.items} <= {f"{r}/b", f"{r}/c"}


def test_an_index_the_journal_no_longer_reaches_is_not_used() -> None:
    entries = [held(seq, Kind.CREATE, f"/r/f{seq}") for seq in range(10, 13)]
    assert bring_forward(sf.StoredIndex("s", 5, {"/r": {}}), "w", entries, 12) is None
    assert bring_forward(sf.StoredIndex("s", 13, {"/r": {}}), "w", entries, 12) is None
    assert bring_forward(sf.StoredIndex("s", 9, {"/r": {}}), "w", entries, 12) is not None
    watch = WatchConfig("w", "/r")
    good = sf.StoredIndex(index_spec(watch), 12, {"/r": {}})
    changed = sf.StoredIndex(index_spec(WatchConfig("w", "/r", exclude=("*.o",))), 12, {})
    assert usable_indexes([watch], {"w": good}, entries, 12) == {"w": {"/r": {}}}
    assert usable_indexes([watch], {"w": changed}, entries, 12) == {}
    assert usable_indexes([WatchConfig("w", "/r", resync=False)], {"w": good}, entries,
                          12) == {}


def test_the_index_of_a_watch_no_longer_configured_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "state"
    state = opened(path)
    state.open({})
    assert state.start("abc", 0)
    assert not sf.write_all(state._blobs(0, [("a", "s", {"/a": {}}, None),
                                             ("b", "s", {"/b": {}}, None)]))
    assert len(list((path / "index").iterdir())) == 2
    # "b" is gone from the configuration, "a" starts over (its index not filled yet).
    assert not sf.write_all(state._blobs(0, [("a", "s", None, None)]))
    assert list((path / "index").iterdir()) == []


def test_the_resyncs_a_previous_run_announced_and_did_not_answer_are_counted() -> None:
    def over(watch: str | None, resync: set[str], reason: str = "kernel_queue") -> Marker:
        return Marker(1, watch, reason, frozenset(resync))

    def resynced(watch: str) -> Marker:
        return Marker(1, watch, "", changes=0)

    # A kernel overflow of a, then the watcher died before its scan: two notices, one answer.
    assert unanswered([over("a", {"a"}), over(None, {"a", "b"}, "watcher_restart"),
                       resynced("a"), resynced("b")]) == {"a": 1, "b": 0}
    # A notice with "resync": false answers every one before it (its subscribers rescan).
    assert unanswered([over("a", {"a"}), over("a", set()), over(None, {"b"})]) == {"a": 0, "b": 1}
    assert unanswered([resynced("a"), over("a", {"a"})]) == {"a": 1}


def test_a_watch_restored_that_no_resynced_answered_is_owed_after_a_crash(tmp_path: Path,
                                                                          ) -> None:
    # Live, the watch_restored of a watch with an index is answered by a `resynced` of its
    # own (Resyncer.restored); the journal keeps it, so a run resumed after a crash before that
    # `resynced` owes it too.
    resync = Resyncer()
    resync.configure([WatchConfig(name="w", path=str(tmp_path)),
                      WatchConfig(name="plain", path=str(tmp_path), resync=False)],
                     changed=["w", "plain"])
    assert resync.restored("w") is True
    assert resync.restored("plain") is False
    (tmp_path / "j").mkdir()
    rec = journal.Journal(str(tmp_path / "j"), max_bytes=1 << 20, retain=lambda: 100,
                          on_error=lambda _what, _error: None, on_rotate=lambda: None)
    rec.open(0)
    rec.marker(restored_marker(0, "w"))
    rec.close()
    markers = journal.load(str(tmp_path / "j")).markers
    assert unanswered(markers) == {"w": 1}
    assert unanswered([*markers, Marker(0, "w", "", changes=0)]) == {"w": 0}
