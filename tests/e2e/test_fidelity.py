"""A short model-based fidelity run: the tree rebuilt from events equals the real tree."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.fidelity import Faults, Restarts, Result, run, watcher_of
from tests.e2e.test_follow_restarts import stop_daemon
from tests.harness import Daemon, config, wait_for, watch
from tests.sysctl import sysctl
from watchd.client import Backoff, Client, Follower

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("seed", [1, 2])
def test_events_describe_the_tree(start_daemon, workdir: str, seed: int) -> None:
    root, outside = trees(workdir)
    daemon = start_daemon(config(watches=watch("t", root)))
    result = run(root, outside, daemon.socket, ops=400, pause_every=40, seed=seed)
    assert result.differences == 0, result.details
    assert result.pauses == 10


def restarter(daemon: Daemon, rng: random.Random, every: int) -> Restarts:
    """Daemon restarts for run(): SIGTERM (waited for) or SIGKILL of the daemon and its
    watcher, then the daemon started again on the same configuration and state directory."""
    return Restarts(lambda sig: stop_daemon(daemon, sig), daemon.start, rng, every=every)


def trees(workdir: str) -> tuple[Path, Path]:
    """The watched tree and the area outside it that operations move things in from."""
    root, outside = Path(workdir) / "tree", Path(workdir) / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside


def assert_exact(result: Result) -> None:
    """Every pause found the picture exact, with no rescan and no seq twice."""
    assert result.differences == 0, result.details
    assert result.announced == 0, "a loss was told as one to rescan"
    assert not result.repeats, "the follower yielded a seq twice"


# In the default run again: it failed about one run in three while a follower waited for a
# `resynced` owed for an overflow a killed watcher had announced, then at times with a moved
# directory's contents missing; both are fixed (13 of 13 runs passed since, 4 of them beside
# stress-ng --cpu 2).
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to lower fs.inotify.max_queued_events")
def test_events_describe_the_tree_through_overflows_and_kills(start_daemon, workdir: str) -> None:
    # The short version of `bench/fidelity.py --faults --flood 30` (it lowers a global sysctl:
    # run it under the suite's lock, as test_resilience.py): the kernel queue overflows while
    # the watcher is stopped, the watcher is killed and replaced, and at every pause the tree
    # rebuilt from the events alone (synthetic ones included) is the real tree, no rescan.
    root, outside = trees(workdir)
    with sysctl("max_queued_events", 64):  # replacements take it too: kept for the whole run
        daemon = start_daemon(config(watches=watch("t", root)))
        # Every stop overflows the queue (64 events): before the watcher is continued, a file
        # of the tree is changed 30 times (90 events), whatever the operations made meanwhile.
        faults = Faults(lambda: watcher_of(daemon.proc.pid) if daemon.proc else None,
                        random.Random(11), every=15, kill_every=120,
                        flood_file=root / "flood", flood=30)
        result = run(root, outside, daemon.socket, ops=800, pause_every=100, seed=5,
                     faults=faults)
    assert_exact(result)
    assert result.stops > 0 and result.overflows > 0, result
    assert result.kills > 0 and result.restarts > 0, result


def through_restarts(start_daemon, workdir: str, ops: int, pause_every: int, every: int,
                     seed: int) -> Result:
    """`bench/fidelity.py --faults --flood 30 --restart-every N`, shortened (it lowers a global
    sysctl: run it under the suite's lock, as test_resilience.py): the kernel queue overflows
    while the watcher is stopped, the watcher is killed and replaced, the daemon is stopped or
    killed and started again (it resumes from its state directory; the subscriber follows it
    with Client.follow), and at every pause the tree rebuilt from the events alone (synthetic
    ones included) is the real tree, no rescan."""
    root, outside = trees(workdir)
    state = Path(workdir) / "state"
    with sysctl("max_queued_events", 64):  # replacements take it too: kept for the whole run
        daemon = start_daemon(config(daemon_extra=f'state_directory = "{state}"',
                                     watches=watch("t", root)))
        # Every stop overflows the queue (64 events): before the watcher is continued, a file
        # of the tree is changed 30 times (90 events), whatever the operations made meanwhile.
        faults = Faults(lambda: watcher_of(daemon.proc.pid) if daemon.proc else None,
                        random.Random(seed + 6), every=15, kill_every=120,
                        flood_file=root / "flood", flood=30)
        restarts = restarter(daemon, random.Random(seed + 7), every=every)
        result = run(root, outside, daemon.socket, ops=ops, pause_every=pause_every, seed=seed,
                     faults=faults, restarts=restarts)
    assert_exact(result)
    assert result.stops > 0 and result.overflows > 0, result
    assert result.daemon_stops > 0 and result.daemon_kills > 0, result
    assert result.resumed == result.daemon_stops + result.daemon_kills, result
    return result


# What this run found, each fixed with a test of its own: a directory the index held at two
# paths (tests/test_resync_stale_path.py, tests/test_diff_stale_path.py), an index stored
# between the halves of a move (tests/test_state_split_move.py), a moved-in directory read
# after an overflow (tests/test_resync_after_cut.py), keys a scan missed left behind by a move
# (tests/test_resync_unheld_parent.py), and a directory moved in while a rescan ran, listed
# but not entered, whose contents came after `resynced` (tests/test_watcher_caught_up.py).
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to lower fs.inotify.max_queued_events")
def test_events_describe_the_tree_through_overflows_kills_and_restarts(start_daemon,
                                                                       workdir: str) -> None:
    result = through_restarts(start_daemon, workdir, ops=800, pause_every=100, every=200,
                              seed=5)
    assert result.kills > 0 and result.restarts > 0, result


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not os.environ.get("WATCHD_SLOW"),
                    reason="a long run (about a minute each): set WATCHD_SLOW=1")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to lower fs.inotify.max_queued_events")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_events_describe_the_tree_through_overflows_kills_and_restarts_long(
        start_daemon, workdir: str, seed: int) -> None:
    through_restarts(start_daemon, workdir, ops=3000, pause_every=100, every=300, seed=seed)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to lower fs.inotify.max_queued_events")
def test_events_describe_the_tree_through_stops_and_kills_without_state(start_daemon,
                                                                        workdir: str) -> None:
    # The case the run above does not make: a daemon without durable state, and stops of the
    # watcher that need not overflow its queue (no flood): some are mere delays, some losses.
    root, outside = trees(workdir)
    with sysctl("max_queued_events", 64):  # replacements take it too: kept for the whole run
        daemon = start_daemon(config(watches=watch("t", root)))
        faults = Faults(lambda: watcher_of(daemon.proc.pid), random.Random(7), every=25,
                        kill_every=200)
        result = run(root, outside, daemon.socket, ops=500, pause_every=50, seed=3,
                     faults=faults)
    assert_exact(result)
    assert result.resyncs >= 3 and result.stops >= 2 and result.kills >= 1, result


# A flat directory this large takes the watcher a while to scan, long enough for a kill sent
# when the overflow notice reaches the client to land before the scan is sent.
SLOW_SCAN_FILES = 20_000
QUICK = Backoff(initial=0.02, maximum=0.3)


def until(follower: Follower, wanted: Callable[[dict[str, Any]], bool],
          timeout: float = 30) -> list[dict[str, Any]]:
    """The follower's messages up to and with the first that is wanted."""
    got: list[dict[str, Any]] = []
    while not got or not wanted(got[-1]):
        message = follower.get(timeout)
        assert message is not None, f"nothing more within {timeout} s after {got[-3:]}"
        got.append(message)
    return got


def overflow(reason: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == "overflow" and m["reason"] == reason


def is_resynced(m: dict[str, Any]) -> bool:
    return bool(m["type"] == "resynced")


def kill_in_its_scan(daemon: Daemon, follower: Follower, flood: Path) -> bool:
    """Overflow the watcher's queue and kill it once the overflow notice (a resync announced)
    reaches the follower, while it scans; False when its scan was out first after all."""
    assert daemon.proc is not None
    pid = watcher_of(daemon.proc.pid)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    for _ in range(40):  # 3 events each: more than the queue of 64 holds
        with flood.open("ab") as f:
            f.write(b"z")
        os.utime(flood)
    os.kill(pid, signal.SIGCONT)
    announced = until(follower, overflow("kernel_queue"))[-1]
    os.kill(pid, signal.SIGKILL)
    assert announced["resync"] is True, announced
    return not any(is_resynced(m) for m in until(follower, overflow("watcher_restart")))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to lower fs.inotify.max_queued_events")
def test_a_resync_the_watcher_died_before_answers_with_its_own_resynced(start_daemon,
                                                                        workdir: str) -> None:
    # The watcher announces a loss (an overflow with "resync": true) and dies before its scan
    # is out; the replacement's watcher_restart notice announces another. The replacement's
    # scan answers both, and each notice gets a `resynced` of its own: a client that waits for
    # one per notice, as the protocol says, does not wait in vain.
    root, _ = trees(workdir)
    for i in range(SLOW_SCAN_FILES):
        os.close(os.open(root / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    with sysctl("max_queued_events", 64):
        daemon = start_daemon(config(watches=watch("t", root)))
        wait_for(lambda: daemon.status()["watches"][0]["tracked"] >= SLOW_SCAN_FILES, 60,
                 "the watch's first index")
        with Client.follow(events=["create"], socket_path=daemon.socket,
                           backoff=QUICK) as follower:
            follower.start()
            attempts = 1
            while not kill_in_its_scan(daemon, follower, root / "flood"):
                attempts += 1
                assert attempts <= 5, "each kill came after the watcher's scan was out"
            first = until(follower, is_resynced)
            marker = root / "marker"
            marker.touch()  # its create comes after every notice of the resync
            rest = until(follower, lambda m: m.get("path") == str(marker))
    assert sum(map(is_resynced, first + rest)) == 2, first + rest
