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

from tests.e2e.test_durable import resubscribe
from tests.e2e.test_follow import QUICK, restart, subscribed
from tests.harness import Daemon, Message, Predicate, config, is_event, is_type, watch
from tests.picture import Picture, listing
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


def resync_false(m: Message) -> bool:
    return m.get("type") == "overflow" and m.get("watch") == "w" and m.get("resync") is False


def notices(got: list[Message]) -> list[tuple[str, object, object]]:
    return [(m["type"], m.get("reason"), m.get("resync")) for m in got
            if m.get("type") in {"overflow", "resynced"}]


def test_a_resumed_daemon_whose_root_is_away_says_resync_false_then_reports_its_return(
        start_daemon: Callable[..., Daemon], watched: Path, workdir: str) -> None:
    root, away = watched / "r", watched / "away"
    (root / "d").mkdir(parents=True)
    (root / "f").write_text("f")
    (root / "d" / "g").write_text("g")
    daemon = start_daemon(config(daemon_extra=f'state_directory = "{Path(workdir) / "state"}"',
                                 watches=watch("w", root)))
    raw, _ = daemon.subscribe()
    with Client.follow(socket_path=daemon.socket, backoff=QUICK) as follower:
        subscribed(follower, daemon)
        (root / "h").write_text("h")
        since = raw.until(is_event(root / "h", "close_write"))[-1]["seq"]
        follow_until(follower, is_event(root / "h", "close_write"))
        # The index is stored at the orderly stop, and kept: the restart's notice announces a
        # resync, which the first scan would answer; but the root is away then.
        restart(daemon, meanwhile=lambda: root.rename(away))
        line, reply = resubscribe(daemon, since, raw.hello["instance"])
        assert reply["type"] == "subscribed", reply
        takes: list[Until] = [lambda p: line.until(p, timeout=30),
                              lambda p: follow_until(follower, p)]
        pictures = []
        for until in takes:
            # No wait in vain: the failed scan says "resync": false, after the true.
            got = until(resync_false)
            assert notices(got) == [("overflow", "daemon_restart", True),
                                    ("overflow", got[-1]["reason"], False)], notices(got)
            pictures.append(Picture(listing(root)))  # the client's rescan: nothing there
        # The root back, unchanged: the index was built again from what the clients found
        # (nothing), so all the root holds comes, as creates.
        away.rename(root)
        for until, picture in zip(takes, pictures, strict=True):
            got = until(is_type("watch_restored"))
            got += until(is_type("resynced"))
            creates = {m["path"] for m in got
                       if m.get("type") == "event" and m["kind"] == "create"}
            assert creates == listing(root), got
            picture.apply_all(got)
            assert picture.paths == listing(root)
    assert daemon.status()["watches"][0]["resyncs"] == 1
    # One failed scan told; the scan asked to start the index over failed too, silently.
    assert daemon.log_text().count("cannot rescan") == 1


def test_a_replacement_watcher_that_finds_the_root_away_says_resync_false_once(
        start_daemon: Callable[..., Daemon], watched: Path) -> None:
    root, away = watched / "r", watched / "away"
    (root / "d").mkdir(parents=True)
    (root / "d" / "g").write_text("g")
    daemon = start_daemon(config(watches=watch("w", root)))
    line, _ = daemon.subscribe()
    root.rename(away)
    line.until(is_type("watch_lost"))
    # The index is complete, but the replacement cannot scan the root: its failed scan makes
    # the restart's notice say "resync": false, with no second notice after it.
    os.kill(daemon.watcher_pid(), signal.SIGKILL)
    assert line.until(overflow("watcher_restart"))[-1]["resync"] is False
    picture = Picture(listing(root))  # the client's rescan: nothing there
    away.rename(root)
    got = line.until(is_type("watch_restored"))
    got += line.until(is_type("resynced"))
    assert notices(got) == [("resynced", None, None)], notices(got)
    assert {m["path"] for m in got if m.get("type") == "event"} >= listing(root)
    picture.apply_all(got)
    assert picture.paths == listing(root)
    # The index is the tree again: a change the next loss hides is found by its resync.
    watcher = daemon.watcher_pid()
    os.kill(watcher, signal.SIGSTOP)
    (root / "d" / "g").unlink()
    os.kill(watcher, signal.SIGKILL)
    got = line.until(overflow("watcher_restart"))
    assert got[-1]["resync"] is True, got[-1]
    got += line.until(is_type("resynced"))
    picture.apply_all(got)
    assert picture.paths == listing(root)


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
    # One comparison for the return; two when the scan the abandon asked for (to re-base the
    # index) comes after the root's return: the first then answers it, the second finds
    # nothing and owes no notice (one `resynced` all the same, checked above).
    assert daemon.status()["watches"][0]["resyncs"] in (1, 2)
