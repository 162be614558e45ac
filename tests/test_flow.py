"""The hold-back rule (watchd.flow) as a table: connections' views in, a decision out."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest

from watchd.channel import BATCH_MAX
from watchd.flow import KEEPING_UP_S, Decision, FlowClock, QueueLevels, Reason, View, decide
from watchd.server import ClientProtocol

LEVELS = QueueLevels.of(3000)  # headroom 1024, behind 952, near full 1976
NOW = 100.0  # monotonic
FLOW_NOW = 60.0  # the flow clock: 40 s were spent holding the watcher back so far
HALF = KEEPING_UP_S / 2


def view(paused: bool, queued: int, process: int = 1, *, ago: float = math.inf,
         flow_ago: float | None = None) -> View:
    """A connection that fell behind `ago` seconds ago (`flow_ago` of them on the flow clock)."""
    flow_ago = ago if flow_ago is None else flow_ago
    return View(paused=paused, queued=queued, process=process, behind_at=NOW - ago,
                behind_at_flow=FLOW_NOW - flow_ago)


FULL = view(True, 1976, ago=HALF)  # behind now, about to drop
BEHIND = view(True, 952, ago=HALF)  # behind, its queue used
SHALLOW = view(True, 951, ago=HALF)  # behind, its queue barely used
EMPTY = view(False, 0)  # never behind
KEEPS_UP = view(False, 0, 2, ago=KEEPING_UP_S)
RECENT = view(False, 0, 2, ago=HALF)  # caught up, fell behind half a second ago
# Idle a whole second while the watcher was held back, but only a moment of flowing time:
WAITING = view(False, 0, 2, ago=KEEPING_UP_S, flow_ago=HALF)
WAITING_SIBLING = view(False, 0, 1, ago=KEEPING_UP_S, flow_ago=HALF)  # FULL's process


def flows(near_full: bool, reason: Reason | None = None, spent: bool = False) -> Decision:
    return Decision(hold=False, reason=reason, spent=spent, near_full=near_full)


def holds(reason: Reason, near_full: bool) -> Decision:
    return Decision(hold=True, reason=reason, spent=False, near_full=near_full)


@pytest.mark.parametrize(("views", "spent", "expected"), [
    pytest.param([], False, flows(False), id="nobody subscribed"),
    pytest.param([EMPTY], False, flows(False), id="a client never behind"),
    pytest.param([BEHIND, BEHIND], False, holds(Reason.ALL_BEHIND, False),
                 id="every subscriber behind, queues used"),
    pytest.param([BEHIND, SHALLOW], False, flows(False), id="one behind with room to use first"),
    pytest.param([FULL], False, holds(Reason.ALL_BEHIND, True), id="a lone client about to drop"),
    pytest.param([FULL, KEEPS_UP], False, flows(True),
                 id="one keeps up: never held back for a slow one"),
    pytest.param([FULL, EMPTY], False, flows(True), id="one never fell behind: keeps up"),
    pytest.param([FULL, RECENT], False, holds(Reason.NEAR_FULL, True),
                 id="one fell behind just now: none keeps up"),
    pytest.param([FULL, WAITING], False, flows(True),
                 id="another process idle a second while held: keeps up"),
    pytest.param([FULL, WAITING_SIBLING, WAITING_SIBLING], False, holds(Reason.NEAR_FULL, True),
                 id="one process reading in turn: idle while held is not keeping up"),
    pytest.param([FULL, WAITING_SIBLING, KEEPS_UP], False, flows(True),
                 id="a process reading in turn beside one that keeps up"),
    pytest.param([view(True, 1976, 2, ago=HALF), WAITING_SIBLING, WAITING_SIBLING], False,
                 flows(True), id="siblings idle while held, none behind: they keep up"),
    pytest.param([BEHIND, RECENT], False, flows(False), id="nobody near full: nothing to save"),
    pytest.param([FULL, RECENT], True, flows(True, Reason.NEAR_FULL, spent=True),
                 id="spent: events flow and drop while the reason lasts"),
    pytest.param([BEHIND, SHALLOW], True, flows(False), id="spent is forgotten with the reason"),
])
def test_decide(views: list[View], spent: bool, expected: Decision) -> None:
    assert decide(views, LEVELS, NOW, FLOW_NOW, spent=spent) == expected


def test_the_flow_clock_stands_still_while_held() -> None:
    clock = FlowClock()
    assert clock.now(50.0) == pytest.approx(50.0)
    clock.hold(50.2)
    assert clock.now(59.0) == pytest.approx(50.2)
    clock.release(59.0)
    assert clock.now(59.5) == pytest.approx(50.7)  # it runs again, the hold left out
    clock.hold(60.0)
    clock.hold(61.0)  # already holding: the first instant counts
    assert clock.holding
    clock.release(62.0)
    clock.release(63.0)  # not holding: nothing to add
    assert not clock.holding
    assert clock.now(70.0) == pytest.approx(59.2)


class _Handler:
    def __init__(self) -> None:
        self.time = 7.0
        self.changes = 0

    def review_hold_back(self) -> None:
        self.changes += 1

    def flow_time(self) -> float:
        return self.time


def test_a_connection_falls_behind_on_the_flow_clock() -> None:
    handler = _Handler()
    client = ClientProtocol(None, handler, max_line_bytes=1024,  # type: ignore[arg-type]
                            registry=set())
    assert client.view() == View(paused=False, queued=0, process=0)
    before = time.monotonic()
    client.pause_writing()
    paused = client.view()
    assert paused.paused
    assert paused.behind_at_flow == 7.0
    assert before <= paused.behind_at <= time.monotonic()
    client.resume_writing()
    assert client.view() == dataclasses.replace(paused, paused=False)
    assert handler.changes == 2


@pytest.mark.parametrize(("client_queue", "levels"), [
    (10000, (1024, 7952, 8976)),  # the default: a batch of room, then another
    (3000, (1024, 952, 1976)),
    (1100, (550, 0, 550)),  # too small to use before holding back: behind when paused
    (50, (25, 0, 25)),
    (1, (0, 1, 1)),
])
def test_queue_levels(client_queue: int, levels: tuple[int, int, int]) -> None:
    got = QueueLevels.of(client_queue)
    assert (got.headroom, got.behind, got.near_full) == levels
    assert got.behind <= got.near_full <= client_queue


def test_the_headroom_is_one_batch_of_the_watcher() -> None:
    # Near full means the next batch might not fit: the room kept is the largest batch.
    assert QueueLevels.of(10 * BATCH_MAX).headroom == BATCH_MAX
