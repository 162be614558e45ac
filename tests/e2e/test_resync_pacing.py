"""A resync of many changes reaches a client that keeps reading: paced like a kernel burst."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.harness import config, wait_for, watch
from tests.picture import Picture, listing

pytestmark = pytest.mark.timeout(120)

QUEUE = 500  # client_queue: far fewer than the differences the resync publishes


def test_a_large_resync_is_not_dropped_for_a_reading_client(start_daemon, watched: Path) -> None:
    spot = watched / "spot"
    spot.mkdir()
    # The test kills the frozen watcher itself: writing the files can take longer than the
    # default watcher_timeout on a loaded machine, and the daemon must not do it first.
    daemon = start_daemon(config(daemon_extra=f"client_queue = {QUEUE}\nwatcher_timeout = 300",
                                 watches=watch("w", watched)))
    line, _ = daemon.subscribe()
    picture = Picture(listing(watched))
    watcher = daemon.watcher_pid()
    # Frozen, it reads none of these; killed, its successor finds them by the rescan only.
    os.kill(watcher, signal.SIGSTOP)
    for i in range(QUEUE * 8):
        (spot / f"file-{i:05}").write_bytes(b"x")
    os.kill(watcher, signal.SIGKILL)
    wait_for(lambda: daemon.status()["watcher"]["pid"] not in (None, watcher), timeout=30)
    got = line.until(lambda m: m.get("type") == "resynced", timeout=60)
    picture.apply_all(got)
    notices = [m for m in got if m.get("type") not in ("event", "overflow", "resynced")]
    assert notices == []  # no `dropped`: the synthetic events waited for the client
    synthetic = [m for m in got if m.get("synthetic")]
    assert len(synthetic) == got[-1]["changes"] == QUEUE * 8
    assert picture.paths == listing(watched)
