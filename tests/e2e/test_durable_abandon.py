"""A crash at the abandon of a resync: the stored index that the `"resync": false` notice voids
must not outlive the notice.

When a resync cannot come, clients are told `"resync": false` and rescan, and the watch's
index starts over. The daemon is killed here at the very moment it removes the stored index
(strace stops it on entering that unlink, deterministically): a restart that compared its
first scan with that index would tell a client that rescanned with the notice
`"resync": true` and report nothing of what changed since its rescan.
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

from tests.e2e.test_follow import QUICK, forget_ready, subscribed
from tests.e2e.test_resync_abandoned import follow_until
from tests.harness import Daemon, Message, config, is_event, is_type, wait_for, watch
from tests.picture import Picture, listing
from watchd.client import Client
from watchd.statefiles import index_file

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("strace") is None,
                       reason="strace stops the daemon at the index's removal"),
]


@contextlib.contextmanager
def killed_at_unlink(pid: int, path: str) -> Iterator[None]:
    """SIGKILL the process (any of its threads) as it enters the unlink of path: nothing after
    that syscall's start happens."""
    tracer = subprocess.Popen(
        ["strace", "-f", "-p", str(pid), "-o", "/dev/null", "-e", "trace=unlink,unlinkat",
         "-P", path, "-e", "inject=unlink,unlinkat:signal=SIGKILL"],
        stderr=subprocess.PIPE, text=True)
    try:
        assert tracer.stderr is not None
        attached = tracer.stderr.readline()  # "Process N attached": the syscalls are caught
        assert "attached" in attached, attached
        yield
    finally:
        tracer.kill()
        tracer.wait()
        tracer.stderr.close()


def rescanning(picture: Picture, root: Path, got: list[Message]) -> None:
    """A client's picture: events applied in order, and the tree listed again at each
    `"resync": false` (the protocol's rule)."""
    for message in got:
        if message.get("type") == "overflow" and message.get("resync") is False:
            picture.paths = listing(root)
        picture.apply(message)


def stored_watch(start_daemon: Callable[..., Daemon], watched: Path,
                 workdir: str) -> tuple[Daemon, Path, Path]:
    """A daemon with durable state (in workdir/state) and a watch "w" of watched/r, which
    holds d/g and f, once the watch's index is stored; the root and the state directory."""
    root = watched / "r"
    (root / "d").mkdir(parents=True)
    (root / "d" / "g").write_text("g")
    (root / "f").write_text("f")
    state = Path(workdir) / "state"
    daemon = start_daemon(config(daemon_extra=f'state_directory = "{state}"',
                                 watches=watch("w", root)))
    stored = index_file(str(state), "w")
    wait_for(lambda: os.path.exists(stored), 20, "the watch's index stored")
    return daemon, root, state


def test_a_crash_at_the_abandon_leaves_no_index_that_the_notice_voided(
        start_daemon: Callable[..., Daemon], watched: Path, workdir: str) -> None:
    daemon, root, state = stored_watch(start_daemon, watched, workdir)
    away, stored = watched / "away", index_file(str(state), "w")
    assert daemon.proc is not None
    with Client.follow(socket_path=daemon.socket, backoff=QUICK) as follower:
        subscribed(follower, daemon)
        picture = Picture(listing(root))
        root.rename(away)
        got = follow_until(follower, is_type("watch_lost"))
        with killed_at_unlink(daemon.proc.pid, stored):
            # The replacement watcher cannot scan the root: the resync its notice would
            # announce cannot come, so the notice says "resync": false.
            os.kill(daemon.watcher_pid(), signal.SIGKILL)
            daemon.proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.proc.pid, signal.SIGKILL)  # its watcher
        daemon.log.close()
        # What reached the follower before the crash (the notice or not), then the tree back,
        # unchanged, while no daemon runs.
        while (message := follower.get(timeout=0.5)) is not None:
            got.append(message)
        told = [m for m in got if m.get("type") == "overflow" and m.get("resync") is False]
        rescanning(picture, root, got)
        away.rename(root)
        forget_ready(daemon)
        daemon.start()
        got = follow_until(follower, lambda m: m.get("reason") == "daemon_restart")
        if got[-1]["resync"]:
            got += follow_until(follower, is_type("resynced"))
        (root / "sentinel").write_text("")
        got += follow_until(follower, is_event(root / "sentinel", "create"))
        rescanning(picture, root, got)
        notices = [(m["type"], m.get("reason"), m.get("resync")) for m in got
                   if m.get("type") in {"overflow", "resynced"}]
        assert picture.paths == listing(root), (
            f"told before the crash: {told}; after it: {notices}; the index on disk: "
            f"{os.path.exists(stored)}")
