"""An index voided by a `"resync": false` notice is removed at once, and a write that was
under way when it was removed does not bring it back (real files)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.test_state import opened
from watchd import statefiles as sf


def test_forget_removes_the_stored_index_at_once(tmp_path: Path) -> None:
    state = opened(tmp_path / "state")
    state.open({})
    assert state.start("inst", 0)
    assert not sf.write_all(state._blobs(0, [("w", "spec", {"/r": {}}, None),
                                             ("v", "spec", {"/q": {}}, None)]))
    state.forget(["w"])
    assert not os.path.exists(sf.index_file(state.path, "w"))
    assert os.path.exists(sf.index_file(state.path, "v"))  # another watch's stays
    assert state.durable


def test_a_write_under_way_does_not_bring_back_an_index_removed_meanwhile(
        tmp_path: Path) -> None:
    state = opened(tmp_path / "state")
    state.open({})
    assert state.start("inst", 0)
    removals = sf.Removals()
    removals.begin()
    # Serialized before the loss, as a save under way holds them; written after the removal.
    blobs = state._blobs(0, [("w", "spec", {"/r": {}}, None), ("v", "spec", {"/q": {}}, None)])
    removals.remove(sf.index_file(state.path, "w"))
    assert not sf.write_all(blobs, removals.replace)
    assert not os.path.exists(sf.index_file(state.path, "w"))
    assert os.path.exists(sf.index_file(state.path, "v"))
    assert [e for e in os.listdir(Path(state.path) / "index") if e.endswith(".tmp")] == []
    # The next write takes what the watch's index has become: stored again.
    removals.begin()
    assert not sf.write_all(state._blobs(1, [("w", "spec", {"/r": {}}, None)]), removals.replace)
    assert os.path.exists(sf.index_file(state.path, "w"))
