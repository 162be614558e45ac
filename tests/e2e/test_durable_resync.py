"""Durable state while a resync is going out: a SIGKILL between its synthetic events loses none
of them. The index stored is never newer than the events the journal holds."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.test_durable import durable_config, kill, resubscribe, until_resynced
from tests.harness import Daemon, is_event, wait_for
from watchd import journal

pytestmark = pytest.mark.timeout(180)

# Synthetic events in four batches: the daemon's socket buffer and the transport take the first
# two or three, then the rest waits behind the subscriber that does not read.
FILES = 3500
QUEUE = 100  # client_queue: the first batches fill it, so the rest is held back


def index_mtimes(state: Path) -> dict[str, int]:
    index = state / "index"
    return {e.name: e.stat().st_mtime_ns for e in index.iterdir()} if index.is_dir() else {}


def test_a_crash_while_a_resync_is_held_back_loses_none_of_it(
        start_daemon: Callable[..., Daemon], watched: Path, workdir: str) -> None:
    state = Path(workdir) / "state"
    spot = watched / "spot"
    spot.mkdir()
    # replay_buffer: the journal closes a segment every 1000 events, which makes the indexes
    # due at the next tick while the resync's later batches still wait; and the history still
    # holds the seq of the crash after the start-up differences. watcher_timeout: the test
    # kills the frozen watcher itself.
    text = durable_config(state, watched, f"client_queue = {QUEUE}\nreplay_buffer = 4000\n"
                                          "watcher_timeout = 300")
    d1 = start_daemon(text)
    line, _ = d1.subscribe()
    instance = line.hello["instance"]
    (watched / "a").write_text("a")
    line.until(is_event(watched / "a", "close_write"))
    wait_for(lambda: index_mtimes(state) or None, timeout=30)  # the first scan's, stored
    before = index_mtimes(state)
    slow, _ = d1.subscribe()  # never reads: the resync's steps are held back for it
    line.close()
    watcher = d1.watcher_pid()
    os.kill(watcher, signal.SIGSTOP)
    for i in range(FILES):
        (spot / f"f{i:05}").write_bytes(b"x")
    os.kill(watcher, signal.SIGKILL)  # its successor's scan finds them: a resync
    # A tick stores the indexes while the later batches wait behind the slow subscriber.
    wait_for(lambda: index_mtimes(state) != before or None, timeout=60)
    crashed_at = d1.status()["seq"]
    kill(d1)
    slow.close()
    held = journal.load(str(state / "journal")).entries
    published = {path for _seq, _watch, _bit, path, _tail in held}
    unpublished = {str(p) for p in spot.iterdir()} - published
    assert unpublished, "every synthetic event went out before the crash: nothing was tested"

    d2 = start_daemon(text)
    line, reply = resubscribe(d2, crashed_at, instance)
    assert reply["type"] == "subscribed", reply
    got = until_resynced(line)
    notice = next(m for m in got if m.get("reason") == "daemon_restart")
    assert notice["resync"] is True
    # Every path whose event the crash kept from going out is reported now.
    reported = {m["path"] for m in got if m["type"] == "event" and m["kind"] == "create"}
    assert unpublished <= reported
