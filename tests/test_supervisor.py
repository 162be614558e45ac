"""Restart policy and supervision of the watcher, in-process: no child is started here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from watchd.supervisor import (
    BACKOFF_S,
    HEARTBEAT_FRESH_S,
    STABLE_AFTER_S,
    RestartPolicy,
    Supervisor,
    WatcherProcess,
)


def test_backoff_grows_with_each_young_death_up_to_its_last_step() -> None:
    policy = RestartPolicy()
    delays = [policy.died(lived_s=0.5) for _ in range(len(BACKOFF_S) + 2)]
    assert delays == [*BACKOFF_S[1:], BACKOFF_S[-1], BACKOFF_S[-1], BACKOFF_S[-1]]
    assert policy.crashes_in_a_row == len(BACKOFF_S) + 2
    assert policy.restarts == len(BACKOFF_S) + 2


def test_a_watcher_that_ran_long_enough_resets_the_crash_count() -> None:
    policy = RestartPolicy()
    for _ in range(4):
        policy.died(lived_s=1.0)
    assert policy.crashes_in_a_row == 4
    assert policy.died(lived_s=STABLE_AFTER_S) == 0.0  # one crash a day is no crash loop
    assert policy.crashes_in_a_row == 0
    assert policy.died(lived_s=STABLE_AFTER_S - 0.1) == BACKOFF_S[1]
    assert policy.restarts == 6


def test_a_failed_start_backs_off_too() -> None:
    policy = RestartPolicy()
    assert [policy.failed_to_start() for _ in range(3)] == list(BACKOFF_S[1:4])
    assert policy.restarts == 0  # nothing ran, so nothing was restarted


def test_several_deaths_before_a_replacement_is_established_owe_one_notice() -> None:
    policy = RestartPolicy()
    assert not policy.applied(1)  # nothing owed
    policy.died(lived_s=0.1)
    # The dead watcher's own APPLIED, handed on before its exit, is not the replacement's.
    assert not policy.applied(10**9)
    policy.configured(2)
    policy.died(lived_s=0.1)  # the replacement dies before it applied: still owed, not yet due
    assert not policy.applied(2)
    policy.configured(3)
    assert not policy.applied(2)
    assert policy.applied(3)
    assert not policy.applied(3)
    assert not policy.applied(4)  # sent once


def test_configuring_a_watcher_owes_no_notice_when_none_died() -> None:
    policy = RestartPolicy()
    policy.configured(1)
    assert policy.notice_at is None
    assert not policy.applied(1)


class _Child:
    """What the supervisor reads of a watcher process, without a process behind it."""

    def __init__(self, pid: int, started: float) -> None:
        self.pid = pid
        self.started = started
        self.last_heard = started
        self.exited = False
        self.reading_paused = False
        self.killed = False

    def describe_exit(self) -> str:
        return "exited with status 1"

    def kill(self) -> None:
        self.killed = True

    async def stop(self) -> None:
        self.exited = True


class _Spawner:
    def __init__(self, fail: int = 0) -> None:
        self.children: list[_Child] = []
        self.fail = fail  # this many starts fail first
        self.on_exit: Callable[[WatcherProcess], None] | None = None

    def __call__(self, on_exit: Callable[[WatcherProcess], None]) -> WatcherProcess:
        if self.fail:
            self.fail -= 1
            raise OSError(11, "Resource temporarily unavailable")
        self.on_exit = on_exit
        child = _Child(1000 + len(self.children), time.monotonic())
        self.children.append(child)
        return child  # type: ignore[return-value]


def _delay(handle: asyncio.TimerHandle | None) -> float:
    assert handle is not None
    return handle.when() - asyncio.get_running_loop().time()


def test_the_supervisor_replaces_a_dying_watcher_with_backoff_and_one_notice() -> None:
    async def scenario() -> None:
        spawn = _Spawner()
        exits: list[int] = []
        generations = iter(range(2, 100))
        sup = Supervisor(spawn, asyncio.Event(), on_exit=lambda: exits.append(1),
                         on_replaced=lambda: next(generations))
        sup.start()
        first = spawn.children[0]
        assert sup.watcher is first  # type: ignore[comparison-overlap]
        spawn.on_exit(sup.watcher)  # type: ignore[misc, arg-type]  # it died young
        assert sup.watcher is None
        assert sup.restarting
        assert exits == [1]
        assert _delay(sup.restart_handle) == pytest.approx(BACKOFF_S[1], abs=0.05)
        sup.restart_handle.cancel()  # type: ignore[union-attr]
        sup.restart()  # (what the timer does)
        assert len(spawn.children) == 2
        assert not sup.applied(1)  # the configuration the dead one was given
        spawn.on_exit(sup.watcher)  # type: ignore[misc, arg-type]  # the replacement died too
        assert _delay(sup.restart_handle) == pytest.approx(BACKOFF_S[2], abs=0.05)
        sup.restart_handle.cancel()  # type: ignore[union-attr]
        sup.restart()
        assert not sup.applied(2)  # the second watcher's configuration
        assert sup.applied(3)  # the third's: now its watches exist; one notice for both
        assert not sup.applied(3)
        assert (sup.policy.restarts, sup.policy.crashes_in_a_row) == (2, 2)
        # The exit of a watcher that is no longer the current one changes nothing.
        spawn.on_exit(first)  # type: ignore[misc, arg-type]
        assert sup.watcher is spawn.children[2]  # type: ignore[comparison-overlap]
        await sup.stop()
        assert spawn.children[2].exited

    asyncio.run(scenario())


def test_a_watcher_that_cannot_be_started_is_tried_again_later() -> None:
    async def scenario() -> None:
        spawn = _Spawner(fail=1)
        sup = Supervisor(spawn, asyncio.Event(), on_exit=lambda: None, on_replaced=lambda: 1)
        sup.start()
        assert sup.watcher is None
        assert _delay(sup.restart_handle) == pytest.approx(BACKOFF_S[1], abs=0.05)
        await sup.stop()  # cancels the retry
        assert sup.restart_handle is not None
        assert sup.restart_handle.cancelled()

    asyncio.run(scenario())


def test_no_restart_once_the_daemon_is_stopping() -> None:
    async def scenario() -> None:
        spawn = _Spawner()
        stopping = asyncio.Event()
        sup = Supervisor(spawn, stopping, on_exit=lambda: None, on_replaced=lambda: 1)
        sup.start()
        stopping.set()
        spawn.on_exit(sup.watcher)  # type: ignore[misc, arg-type]
        assert sup.restart_handle is None
        assert not sup.restarting
        assert sup.policy.restarts == 0
        sup.start()
        assert len(spawn.children) == 1

    asyncio.run(scenario())


def test_a_silent_watcher_is_killed_and_a_talking_one_keeps_the_watchdog_fed() -> None:
    async def scenario() -> None:
        spawn = _Spawner()
        sup = Supervisor(spawn, asyncio.Event(), on_exit=lambda: None, on_replaced=lambda: 1)
        assert not sup.check(timeout=5.0)  # none running
        sup.start()
        child = spawn.children[0]
        assert sup.check(timeout=5.0)
        child.last_heard = time.monotonic() - (HEARTBEAT_FRESH_S + 1)
        assert not sup.check(timeout=HEARTBEAT_FRESH_S + 30)  # alive, but not heard lately
        assert not child.killed
        child.reading_paused = True  # we do not listen: its silence says nothing
        assert sup.check(timeout=1.0)
        assert not child.killed
        child.reading_paused = False
        assert not sup.check(timeout=1.0)
        assert child.killed

    asyncio.run(scenario())
