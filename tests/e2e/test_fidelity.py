"""A short model-based fidelity run: the tree rebuilt from events equals the real tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fidelity import run
from tests.harness import config, watch

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("seed", [1, 2])
def test_events_describe_the_tree(start_daemon, workdir: str, seed: int) -> None:
    root, outside = Path(workdir) / "tree", Path(workdir) / "outside"
    root.mkdir()
    outside.mkdir()
    daemon = start_daemon(config(watches=watch("t", root)))
    result = run(root, outside, daemon.socket, ops=400, pause_every=40, seed=seed)
    assert result.differences == 0, result.details
    assert result.pauses == 10
