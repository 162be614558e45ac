"""A resync that cannot come: the `overflow` with "resync": false answers every one owed before it.

Two ways the daemon learns that a watch with an index cannot be rescanned: a replacement
watcher that could not establish it (its root is away), and the watcher itself reporting the
loss with "resync": false (the root moved out in the very read that overflowed). Either way a
client that applies events in order is told to rescan, and no `resynced` is owed for a resync
announced before: the next one it gets answers the next loss, once, and no later.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.test_follow import QUICK, restart, subscribed
from tests.harness import Daemon, Message, Predicate, config, is_event, is_type, watch
from watchd.client import Client, Follower

pytestmark = pytest.mark.timeout(120)


def overflow(reason: str) -> Callable[[Message], bool]:
    return lambda m: m.get("type") == "overflow" and m.get("reason") == reason


Until = Callable[[Predicate], list[Message]]


def follow_until(follower: Follower, predicate: Predicate, timeout: float = 30.0) -> list[Message]:
    """A follower's messages up to the first that matches, each waited for with a deadline."""
    got: list[Message] = []
    while not got or not predicate(got[-1]):
        message = follower.get(timeout=timeout)
        assert message is not None, f"nothing matched within {timeout} s after {got[-3:]}"
        got.append(message)
    return got


def back_with_one_resynced(until: Until, away: Path, root: Path) -> None:
    """Move the root back: watch_restored, then exactly one `resynced` before the events that
    follow it (a sentinel's, made and removed: its delete)."""
    away.rename(root)
    got = until(is_type("watch_restored"))
    got += until(is_type("resynced"))
    (root / "sentinel").write_text("")
    (root / "sentinel").unlink()
    got += until(is_event(root / "sentinel", "delete"))
    assert [m["watch"] for m in got if m.get("type") == "resynced"] == ["w"]


def test_a_resync_owed_while_the_root_is_away_is_answered_by_the_watchers_restart(
        start_daemon: Callable[..., Daemon], watched: Path, workdir: str) -> None:
    root, away = watched / "r", watched / "away"
    root.mkdir()
    (root / "f").write_text("f")
    daemon = start_daemon(config(daemon_extra=f'state_directory = "{Path(workdir) / "state"}"',
                                 watches=watch("w", root)))
    with Client.follow(socket_path=daemon.socket, backoff=QUICK) as follower:
        subscribed(follower, daemon)

        def until(predicate: Predicate) -> list[Message]:
            return follow_until(follower, predicate)

        (root / "g").write_text("g")
        until(is_event(root / "g", "close_write"))
        # The index is stored at the orderly stop, and kept: the restart's notice announces a
        # resync, which the first scan would answer; but the root is away, and the watch waits.
        restart(daemon, meanwhile=lambda: root.rename(away))
        notice = until(overflow("daemon_restart"))[-1]
        assert notice["watch"] == "w" and notice["resync"] is True, notice
        # A replacement watcher cannot establish the watch either: its notice says "resync":
        # false for it, which answers the resync announced above.
        os.kill(daemon.watcher_pid(), signal.SIGKILL)
        got = until(overflow("watcher_restart"))
        assert got[-1]["resync"] is False, got[-1]
        assert not [m for m in got if m.get("type") == "resynced"]
        # One `resynced`, for the root's return; none left over for the resync answered already.
        back_with_one_resynced(until, away, root)
    assert daemon.status()["watches"][0]["resyncs"] == 1


def test_a_root_moved_away_in_the_read_that_overflowed_owes_no_resync(
        start_daemon: Callable[..., Daemon], watched: Path) -> None:
    root, away = watched / "r", watched / "away"
    (root / "d").mkdir(parents=True)
    # watcher_timeout: the test stops the watcher itself, for a while.
    daemon = start_daemon(config(daemon_extra="watcher_timeout = 300", watches=watch("w", root)))
    # The thousands of creates are not what this is about: the notices come whatever the filter.
    line, _ = daemon.subscribe(events=["delete"])
    queue = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    watcher = daemon.watcher_pid()
    os.kill(watcher, signal.SIGSTOP)
    try:
        # The root's move first, then more events than the kernel's queue holds, on the watches
        # the moved tree keeps: one read brings the move and the overflow together.
        root.rename(away)
        for i in range(queue + 100):
            os.close(os.open(away / "d" / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    finally:
        os.kill(watcher, signal.SIGCONT)
    got = line.until(is_type("watch_lost"), timeout=60)
    notices = [m for m in got if m.get("type") in {"overflow", "resynced"}]
    assert [(m["type"], m.get("reason"), m.get("resync")) for m in notices] == [
        ("overflow", "kernel_queue", False)], notices
    # The tree back where it was: its differences from the index, and one `resynced` for the
    # root's return alone.
    back_with_one_resynced(lambda predicate: line.until(predicate, timeout=30), away, root)
    assert daemon.status()["watches"][0]["resyncs"] == 1
