"""A reload that changes a watch, or turns its resync off, while a resync of it is under way:
the `overflow` with "resync": true that was announced is still answered, by an `overflow` with
"resync": false and reason "reload" (the watch's index starts over, so that resync cannot
finish), never left without its `resynced`."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon, config, wait_for, watch

pytestmark = pytest.mark.timeout(120)
QUEUE = 500  # the subscriber's queue: the resync's 4,000 creates fill it, and hold it back


def resyncs(daemon: Daemon) -> int:
    return int(next(w for w in daemon.status()["watches"] if w["name"] == "w")["resyncs"])


def answered(messages: list[dict[str, Any]]) -> None:
    """Each `overflow` with "resync": true is answered, by `resynced` or by an `overflow` with
    "resync": false; here, by the latter, for the reload."""
    notices = [m for m in messages if m["type"] in ("overflow", "resynced")]
    kinds = [(m["type"], m.get("resync"), m.get("reason")) for m in notices]
    assert kinds == [("overflow", True, "watcher_restart"), ("overflow", False, "reload")], kinds


@pytest.mark.parametrize("change", [{"include": ["*"]}, {"resync": False}],
                         ids=["include", "resync-off"])
def test_a_reload_during_a_resync_answers_its_notice(start_daemon, watched: Path,
                                                     change: dict[str, Any]) -> None:
    spot = watched / "spot"
    spot.mkdir()
    extra = f"client_queue = {QUEUE}\nwatcher_timeout = 4"
    daemon = start_daemon(config(daemon_extra=extra, watches=watch("w", watched)))
    line, _ = daemon.subscribe()
    watcher = daemon.watcher_pid()
    os.kill(watcher, signal.SIGSTOP)
    for i in range(QUEUE * 8):
        (spot / f"file-{i:05}").write_bytes(b"x")
    with contextlib.suppress(ProcessLookupError):  # (or the daemon found it hung and did)
        os.kill(watcher, signal.SIGKILL)
    # The replacement's scan is compared: its differences go out in steps that the subscriber,
    # not reading yet, holds back (and the watcher's catch-up behind them), for up to 4 s (the
    # watcher_timeout, which also bounds the hold).
    wait_for(lambda: resyncs(daemon) >= 1, timeout=30)
    # Its READY=1 waits for the watcher's confirmation, which the hold keeps behind them.
    daemon.reload(config(daemon_extra=extra, watches=watch("w", watched, **change)), timeout=60)
    got = line.until(lambda m: m["type"] == "overflow" and m.get("reason") == "reload",
                     timeout=60)
    (watched / "settle").write_text("")
    got += line.until(lambda m: m.get("path") == str(watched / "settle"), timeout=60)
    answered(got)
    # The cut resync's differences that had not gone out yet go before the notice, not after
    # it: a client that rescans at the notice has the tree, and a move pair described from
    # before it would empty a directory of that picture.
    # (Kernel events may follow it: under load the daemon may find the stopped watcher hung
    # and replace it while files are still being made.)
    cut = next(i for i, m in enumerate(got) if m.get("reason") == "reload")
    assert not [m for m in got[cut + 1:] if m.get("synthetic")]


def test_a_reload_that_removes_a_watch_during_its_resync_answers_its_notice(
        start_daemon, watched: Path) -> None:
    """Removed, the watch has no `resynced` to come: "resync": false (reason "reload") answers
    the notice, before its watch_lost."""
    spot, other = watched / "spot", watched.parent / "other"
    spot.mkdir()
    other.mkdir()
    # The hold (up to watcher_timeout) keeps the resync under way until the reload.
    extra = f"client_queue = {QUEUE}\nwatcher_timeout = 10"
    kept = watch("o", other)
    daemon = start_daemon(config(daemon_extra=extra, watches=watch("w", watched) + kept))
    line, _ = daemon.subscribe()
    watcher = daemon.watcher_pid()
    os.kill(watcher, signal.SIGSTOP)
    for i in range(QUEUE * 8):
        (spot / f"file-{i:05}").write_bytes(b"x")
    with contextlib.suppress(ProcessLookupError):
        os.kill(watcher, signal.SIGKILL)
    wait_for(lambda: resyncs(daemon) >= 1, timeout=30)
    daemon.reload(config(daemon_extra=extra, watches=kept), timeout=60)
    got = line.until(lambda m: m["type"] == "watch_lost", timeout=60)
    (other / "settle").write_text("")
    got += line.until(lambda m: m.get("path") == str(other / "settle"), timeout=60)
    notices = [(m["type"], m.get("resync"), m.get("reason")) for m in got
               if m["type"] in ("overflow", "resynced", "watch_lost")
               and m.get("watch") in ("w", None)]
    assert notices == [("overflow", True, "watcher_restart"), ("overflow", False, "reload"),
                       ("watch_lost", None, "removed")], notices
