"""A state given up without state.json removed: the lock file's note (real files).

The end-to-end case (both files immutable, the follower's picture) is
tests/e2e/test_durable_given_up.py; here the note itself: it keeps the state from being
resumed once, and the fresh state that follows it is resumed again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.test_state import opened, stopped_cleanly
from watchd import statefiles as sf
from watchd.state import LOCK


def test_a_noted_give_up_is_not_resumed_and_the_fresh_state_after_it_is(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state"
    stopped_cleanly(path, {"/r": {}})
    left = [sf.index_file(str(path), "w"), str(path / sf.META)]
    fd = os.open(path / LOCK, os.O_RDWR)
    sf.note_given_up(fd, left)
    os.close(fd)
    state = opened(path)
    with caplog.at_level(logging.WARNING, logger="watchd"):
        assert state.open({"w": "spec"}) is None
    assert any(left[0] in r.getMessage() and left[1] in r.getMessage()
               and "new instance" in r.getMessage() for r in caplog.records)
    assert not os.path.exists(left[0])  # what it left is wiped
    assert state.start("fresh", 0)
    assert sf.given_up(state._lock_fd) == []  # answered: a later start may resume again
    state._write_meta("fresh", clean=True, seq=0)
    assert state.journal is not None
    state.journal.close()
    os.close(state._lock_fd)
    resumed = opened(path).open({"w": "spec"})
    assert resumed is not None and resumed.instance == "fresh"
