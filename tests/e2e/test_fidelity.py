"""A short model-based fidelity run: the tree rebuilt from events equals the real tree."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from bench.fidelity import Faults, run, watcher_of
from tests.e2e.test_resilience import sysctl
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


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to lower fs.inotify.max_queued_events")
def test_events_describe_the_tree_through_overflows_and_kills(start_daemon, workdir: str) -> None:
    # The short version of `bench/fidelity.py --faults` (it lowers a global sysctl: run it
    # under the suite's lock, as test_resilience.py): the kernel queue overflows while the
    # watcher is stopped, the watcher is killed and replaced, and at every pause the tree
    # rebuilt from the events alone (synthetic ones included) is the real tree, no rescan.
    root, outside = Path(workdir) / "tree", Path(workdir) / "outside"
    root.mkdir()
    outside.mkdir()
    with sysctl("max_queued_events", 64):  # replacements take it too: kept for the whole run
        daemon = start_daemon(config(watches=watch("t", root)))
        # Every stop overflows the queue (64 events): before the watcher is continued, a file
        # of the tree is changed 30 times (90 events), whatever the operations made meanwhile.
        faults = Faults(lambda: watcher_of(daemon.proc.pid), random.Random(11), every=15,
                        kill_every=120, flood_file=root / "flood", flood=30)
        result = run(root, outside, daemon.socket, ops=800, pause_every=100, seed=5,
                     faults=faults)
    assert result.differences == 0, result.details
    assert result.announced == 0, "a loss was told as one to rescan"
    assert result.stops > 0 and result.overflows > 0, result
    assert result.kills > 0 and result.restarts > 0, result
