"""The daemon's side of holding the watcher back: applying watchd.flow's rule to the live parts.

flow.decide says whether to hold back; this module gathers its inputs (the subscribed
connections' views, the broker's levels, the flow clock), pauses or resumes reading from the
watcher accordingly, and looks again while a hold lasts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from watchd import flow

if TYPE_CHECKING:  # for hints only: the parts this glues together import nothing of it
    from watchd.broker import Broker
    from watchd.server import ClientProtocol
    from watchd.supervisor import WatcherProcess

log = logging.getLogger("watchd")

RECHECK_S = 0.05  # while held back: how often to look at the levels again


class HoldBack:
    """Holds the watcher back, or lets it go, as the rule in watchd.flow decides.

    While held, each subscriber works through its own backlog, already encoded, and the
    watcher keeps draining the kernel queue into its own buffer: a burst larger than
    client_queue still reaches clients that read steadily, where dropping it would only
    make them ask again.
    """

    def __init__(self, broker: Broker, clients: Collection[ClientProtocol],
                 watcher: Callable[[], WatcherProcess | None],
                 exempt: Callable[[], Collection[int]] = frozenset) -> None:
        self.broker = broker
        self.clients = clients
        self.watcher = watcher  # the running watcher, if any
        # Processes the rule leaves out: the forwarders (watchd.forward), which never make
        # the watcher wait, and whose keeping up must not cost local subscribers their hold.
        self.exempt = exempt
        self.clock = flow.FlowClock()  # stands still while the hold lasts
        self.recheck: asyncio.TimerHandle | None = None
        self.spent = False  # the limit was reached; wait for a subscriber to catch up
        # Some queue was near full at the last review: every batch is worth a look until none is.
        self.near_full = False
        # A review asked for by review_soon, to run once the loop's current turn is done.
        self.pending: asyncio.Handle | None = None

    def after_publish(self) -> None:
        """Look again after a batch when a queue reached near_full, or some still is, or a
        connection paused or resumed meanwhile: a hold then stops the watcher's next message."""
        if self.pending is not None or self.near_full or self.broker.near_full_reached:
            self.review()

    def flow_time(self) -> float:
        """Now on the clock the hold-back rule judges by (see watchd.flow)."""
        return self.clock.now(time.monotonic())

    def review_soon(self) -> None:
        """Decide again once the loop's current turn is done, however often asked meanwhile.

        A connection asks whenever its writing pauses or resumes. A burst written to many
        connections pauses each of them in one publish; a review looks at every connection, so
        reviewing at each pause would cost connections squared. One review sees the same
        levels as the last of those would have: after_publish makes it at once when the pauses
        came from a publish (before the watcher's next message), and otherwise it runs when
        the turn ends, before the loop polls again.
        """
        if self.pending is None:
            self.pending = asyncio.get_running_loop().call_soon(self._review_pending)

    def _review_pending(self) -> None:
        self.pending = None
        self.review()

    def review(self) -> None:
        """Decide again: the levels, the subscribers or the watcher may have changed."""
        if self.pending is not None:
            self.pending.cancel()  # this look answers it
            self.pending = None
        self.broker.take_near_full()  # this look answers the signal
        watcher = self.watcher()
        if watcher is None:
            return
        now = time.monotonic()
        exempt = self.exempt()
        views = [v for c in self.clients if c.subscribed and (v := c.view()).process not in exempt]
        decision = flow.decide(views, self.broker.levels, now, self.clock.now(now),
                               spent=self.spent)
        self.near_full = decision.near_full
        self.spent = decision.spent
        if not decision.hold:
            self.release()
            return
        if not self.clock.holding:
            self.clock.hold(now)
            log.debug("%s: the watcher holds its batches meanwhile", decision.reason)
            watcher.pause_reading()
        if self.recheck is None:
            # Not every change of the levels comes with a call (an unsubscribe, a drained queue).
            self.recheck = asyncio.get_running_loop().call_later(RECHECK_S, self._recheck)

    def _recheck(self) -> None:
        self.recheck = None
        if self.clock.holding:
            self.review()

    def release(self) -> None:
        """Let the watcher go: read from it again."""
        self.clock.release(time.monotonic())
        if self.recheck is not None:
            self.recheck.cancel()
            self.recheck = None
        watcher = self.watcher()
        if watcher is not None:
            watcher.resume_reading()

    def expire(self, limit_s: float) -> None:
        """End a hold that has lasted `limit_s`: the hold is spent (see watchd.flow)."""
        since = self.clock.since
        if since is not None and time.monotonic() - since > limit_s:
            log.debug("the watcher was held back for %.1f s; publishing again", limit_s)
            self.spent = True
            self.release()
