"""A crash soon after a resume must not leave an index that the resume's own notice voided.

At a resume, a watch whose stored index cannot be used (its configuration changed, or
`resync` was turned off) gets its `daemon_restart` notice with `"resync": false`, and its
subscribers rescan. Its stored index used to stay on disk until the next save (after the
watch's first scan, or a minute later, or at a stop). Killed before that save, the daemon
found it again at the next start, usable once more if the configuration had gone back, and
compared its first scan with it: with the tree as it was before the first restart, not as the
subscribers had rescanned it. A directory renamed while the daemon was down then came as a
move onto the name the rescan had already given it, and a client had it empty.

The daemon is killed here with SIGKILL once the notice has reached the follower: with
`resync = false` no save comes for a minute, and with a changed configuration the daemon is
stopped by strace as it opens the first index it writes after the resume.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.test_durable_abandon import rescanning
from tests.e2e.test_follow import QUICK, forget_ready, subscribed
from tests.e2e.test_resync_abandoned import follow_until
from tests.harness import Daemon, Message, config, is_event, is_type, wait_for, watch
from tests.picture import Picture, listing
from watchd.client import Client
from watchd.statefiles import index_file

pytestmark = pytest.mark.timeout(120)


def restart_notice(message: Message) -> bool:
    return message.get("reason") == "daemon_restart"


def killed_at_first_index_write(daemon: Daemon, stored: str) -> None:
    """Start the daemon under strace, which SIGKILLs it as it opens the temporary file of the
    index `stored` (the first write of it after the resume); wait for its end."""
    tmp = os.path.join(os.path.dirname(stored), "." + os.path.basename(stored) + ".tmp")
    daemon.start(wait_ready=False, shell_prefix=(
        f"exec strace -f -o /dev/null --seccomp-bpf -e trace=openat -P {tmp} "
        '-e inject=openat:signal=SIGKILL "$@"'))
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=60) == -signal.SIGKILL, daemon.log_text()


@pytest.mark.parametrize("how", ["resync_off", "configuration"])
def test_a_crash_after_a_resume_leaves_no_index_that_its_notice_voided(
        start_daemon: Callable[..., Daemon], watched: Path, workdir: str, how: str) -> None:
    if how == "configuration" and shutil.which("strace") is None:
        pytest.skip("strace stops the daemon at its first write of the index")
    root = watched / "r"
    (root / "a" / "s").mkdir(parents=True)
    (root / "a" / "f").write_text("f")
    (root / "a" / "s" / "g").write_text("g")
    state = Path(workdir) / "state"
    settings = f'state_directory = "{state}"'
    first = config(daemon_extra=settings, watches=watch("w", root))
    other = config(daemon_extra=settings, watches=(
        watch("w", root, resync=False) if how == "resync_off"
        else watch("w", root, exclude=["*.nothing"])))
    daemon = start_daemon(first)
    stored = index_file(str(state), "w")
    wait_for(lambda: os.path.exists(stored), 20, "the watch's index stored")
    with Client.follow(socket_path=daemon.socket, backoff=QUICK) as follower:
        subscribed(follower, daemon)
        picture = Picture(listing(root))
        # Stopped cleanly (the index stored as of its last seq); renamed while it is down;
        # started with the watch configured otherwise: told "resync": false, and rescanned.
        assert daemon.stop() == 0
        (root / "a").rename(root / "b")
        daemon.write_config(other)
        forget_ready(daemon)
        if how == "resync_off":
            daemon.start()
            got = follow_until(follower, restart_notice)
            assert daemon.proc is not None
            os.killpg(daemon.proc.pid, signal.SIGKILL)  # long before its first save
            daemon.proc.wait()
        else:
            killed_at_first_index_write(daemon, stored)
            got = []
            while (message := follower.get(timeout=0.5)) is not None:
                got.append(message)
        with contextlib.suppress(ProcessLookupError):
            assert daemon.proc is not None
            os.killpg(daemon.proc.pid, signal.SIGKILL)  # its watcher
        daemon.log.close()
        told = [m.get("resync") for m in got if restart_notice(m)]
        rescanning(picture, root, got)
        # Back to the first configuration.
        daemon.write_config(first)
        forget_ready(daemon)
        daemon.start()
        # Its notice may not reach the follower: one alike, at the same seq, already did.
        (root / "sentinel").write_text("")
        got = follow_until(follower, is_event(root / "sentinel", "create"))
        if any(restart_notice(m) and m["resync"] for m in got) and not any(
                m.get("type") == "resynced" for m in got):
            got += follow_until(follower, is_type("resynced"))
        rescanning(picture, root, got)
        notices = [(m["type"], m.get("reason"), m.get("resync")) for m in got
                   if m.get("type") in {"overflow", "resynced"}]
        assert picture.paths == listing(root), (
            f"told after the first restart: {told}; after the second: {notices}")
