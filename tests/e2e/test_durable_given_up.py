"""A state given up whose files could not be removed is not resumed.

When a resync cannot come, the watch's stored index is removed before clients are told
`"resync": false` (State.forget). When that removal fails, the daemon gives its state up and
removes `state.json`, so that the next start begins a new instance. When that fails too (a
read-only or failing disk; here both files are made immutable), the next start used to resume
the instance once the cause was gone, and compared its first scan with the voided index: a
client that rescanned with the notice was told `"resync": true` and nothing of what changed
since.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.test_durable_abandon import rescanning, stored_watch
from tests.e2e.test_follow import QUICK, forget_ready, subscribed
from tests.e2e.test_resync_abandoned import follow_until
from tests.harness import Daemon, is_event, is_type
from tests.picture import Picture, listing
from watchd.client import Client
from watchd.statefiles import META, index_file

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chattr") is None,
                       reason="makes files immutable (chattr +i): root only"),
]


@contextlib.contextmanager
def immutable(*paths: str) -> Iterator[None]:
    """The files cannot be removed (nor replaced) until the block ends."""
    made: list[str] = []
    try:
        for path in paths:
            subprocess.run(["chattr", "+i", path], check=True)
            made.append(path)
        yield
    finally:
        for path in made:
            subprocess.run(["chattr", "-i", path], check=True)


def test_a_state_whose_void_index_and_state_file_cannot_be_removed_is_not_resumed(
        start_daemon: Callable[..., Daemon], watched: Path, workdir: str) -> None:
    daemon, root, state = stored_watch(start_daemon, watched, workdir)
    away = watched / "away"
    stored, meta = index_file(str(state), "w"), str(state / META)
    with Client.follow(socket_path=daemon.socket, backoff=QUICK) as follower:
        subscribed(follower, daemon)
        instance = follower.instance
        picture = Picture(listing(root))
        with immutable(stored, meta):
            root.rename(away)
            got = follow_until(follower, is_type("watch_lost"))
            # The replacement watcher cannot scan the root: "resync": false, whose index
            # cannot be removed, nor state.json after it.
            os.kill(daemon.watcher_pid(), signal.SIGKILL)
            got += follow_until(follower, lambda m: m.get("resync") is False)
            daemon.wait_log(f"cannot remove {stored}")
            assert daemon.stop() == 0
        rescanning(picture, root, got)
        # The cause gone (the files are not immutable any more), and the tree back, unchanged,
        # while no daemon runs.
        assert os.path.exists(stored) and os.path.exists(meta)
        away.rename(root)
        forget_ready(daemon)
        before = len(daemon.log_text())
        daemon.start()
        got = follow_until(follower, lambda m: m.get("reason") == "daemon_restart")
        (root / "sentinel").write_text("")
        got += follow_until(follower, is_event(root / "sentinel", "create"))
        if any(m.get("resync") for m in got if m.get("type") == "overflow") and not any(
                m.get("type") == "resynced" for m in got):
            got += follow_until(follower, is_type("resynced"))
        rescanning(picture, root, got)
        notices = [(m["type"], m.get("reason"), m.get("resync")) for m in got
                   if m.get("type") in {"overflow", "resynced"}]
        assert picture.paths == listing(root), f"told after the restart: {notices}"
        assert follower.instance != instance
        warning = next(line for line in daemon.log_text()[before:].splitlines()
                       if "a new instance" in line)
        assert stored in warning and meta in warning, warning
