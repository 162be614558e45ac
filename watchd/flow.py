"""When the daemon holds its watcher back instead of dropping events: the rule, with no I/O.

The daemon may stop taking batches from its watcher, which then keeps draining the kernel queue
into a buffer of its own. That costs the subscribers latency and saves them drops. The rule,
as docs/protocol.md promises it:

- A subscriber *keeps up* when it is not behind now (its transport is below its high-water
  mark) and has not fallen behind during the last KEEPING_UP_S. For a connection whose process
  has another subscribed connection that is behind, time during which the watcher is held back
  does not count (the *flow clock* stands still then): a process that reads its connections
  in turn leaves each idle while it reads the others, so it looks caught up on every
  connection it is not reading. Connections of one process may so hold each other back; a
  connection is held back for another process's no longer than KEEPING_UP_S after it fell
  behind itself.
- While a subscriber keeps up, the watcher is never held back.
- The watcher is held back while every subscriber is behind (paused, its queue used up to
  `levels.behind`), or while some subscriber's queue is near full (`levels.near_full`) and
  none keeps up; for at most HOLD_LIMIT_S at a time (the daemon's tick enforces it).
- Past that limit, the hold is *spent*: events flow, and a connection whose queue is full has
  them dropped, always with a `dropped` notice, until no reason to hold back remains.

`decide` is that rule as a pure function; `FlowClock` is the clock it is judged on.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from watchd.channel import BATCH_MAX

# A subscriber keeps up once it has not been behind for this much flowing time.
KEEPING_UP_S = 1.0
# How long the watcher's batches may wait in its own buffer at a time (no longer than a hung
# watcher may go unnoticed: we do not hear it meanwhile).
HOLD_LIMIT_S = 10.0
# Room kept in a connection's queue before it counts as near full (see QueueLevels): the
# most events one batch from the watcher brings.
QUEUE_HEADROOM = BATCH_MAX


@dataclass(frozen=True, slots=True)
class QueueLevels:
    """Where a connection's queue stands against client_queue.

    headroom: room kept for what arrives between two looks (merged batches are smaller);
    behind: from here a paused connection counts as behind: its queue is used, so a burst
    reaches it already encoded; near_full: from here the next batch might overflow it.
    """

    headroom: int
    behind: int
    near_full: int

    @classmethod
    def of(cls, client_queue: int) -> QueueLevels:
        """The levels for a given daemon.client_queue."""
        headroom = min(QUEUE_HEADROOM, client_queue // 2)
        return cls(headroom, max(0, client_queue - 2 * headroom), client_queue - headroom)


@dataclass(frozen=True, slots=True)
class View:
    """One subscribed connection, as the rule sees it."""

    paused: bool  # behind now: its transport is above its high-water mark
    queued: int  # event lines waiting in its broker queue
    process: int  # the peer's pid: connections of one process are judged together
    behind_at: float = -math.inf  # monotonic time at which it last fell behind (-inf: never)
    behind_at_flow: float = -math.inf  # the same instant on the flow clock


class Reason(enum.StrEnum):
    """Why holding the watcher back is called for."""

    ALL_BEHIND = "every subscriber is behind"
    NEAR_FULL = "a subscriber's queue is nearly full and none keeps up"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do now; `spent` carries over to the next decision."""

    hold: bool
    reason: Reason | None  # None: no reason to hold back (a spent hold is forgotten)
    spent: bool
    near_full: bool  # some queue is near full: every batch from the watcher is worth a look


def keeps_up(view: View, now: float, flow_now: float, *, shared: bool) -> bool:
    """Not behind now, and its last fall behind began KEEPING_UP_S ago or more.

    Counted on the flow clock when `shared`: another connection of its process is behind.
    """
    if view.paused:
        return False
    since = flow_now - view.behind_at_flow if shared else now - view.behind_at
    return since >= KEEPING_UP_S


def decide(views: Iterable[View], levels: QueueLevels, now: float, flow_now: float, *,
           spent: bool) -> Decision:
    """The hold-back rule for the subscribed connections at `now` (`flow_now` on the flow clock).

    `spent` is True once a hold reached HOLD_LIMIT_S; it lasts while a reason does.
    """
    views = list(views)
    near_full = any(v.queued >= levels.near_full for v in views)
    reason: Reason | None = None
    if views and all(v.paused and v.queued >= levels.behind for v in views):
        reason = Reason.ALL_BEHIND
    elif near_full:
        # (A paused view never keeps up, so for the others this counts their siblings.)
        behind = Counter(v.process for v in views if v.paused)
        if not any(keeps_up(v, now, flow_now, shared=behind[v.process] > 0) for v in views):
            reason = Reason.NEAR_FULL
    spent = spent and reason is not None
    return Decision(hold=reason is not None and not spent, reason=reason, spent=spent,
                    near_full=near_full)


class FlowClock:
    """Monotonic time that stands still while the watcher is held back."""

    def __init__(self) -> None:
        self.held_s = 0.0  # held back so far, holds that ended
        self.since: float | None = None  # when the current hold began (monotonic)

    @property
    def holding(self) -> bool:
        """True during a hold."""
        return self.since is not None

    def now(self, monotonic: float) -> float:
        """Flow time at a monotonic instant (at or after every hold begun so far)."""
        if self.since is not None:
            return self.since - self.held_s
        return monotonic - self.held_s

    def hold(self, monotonic: float) -> None:
        """A hold begins (no-op during one)."""
        if self.since is None:
            self.since = monotonic

    def release(self, monotonic: float) -> None:
        """The hold ends (no-op outside one)."""
        if self.since is not None:
            self.held_s += monotonic - self.since
            self.since = None
