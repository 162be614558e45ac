"""The hold-back rule leaves the forwarders out: a forwarder that keeps up does not cost a
slow local subscriber its hold, as it would any subscriber that keeps up."""

from __future__ import annotations

import asyncio
import math

from watchd import flow
from watchd.broker import Broker
from watchd.holdback import HoldBack


class Conn:
    def __init__(self, view: flow.View) -> None:
        self._view = view
        self.subscribed = True

    def view(self) -> flow.View:
        return self._view


class Watcher:
    paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def test_a_forwarder_does_not_count_as_a_subscriber_that_keeps_up() -> None:
    async def main() -> tuple[bool, bool]:
        broker = Broker(instance="i", client_queue=10000, replay_buffer=100,
                        max_subscriptions=8, max_patterns=8, max_paths=8,
                        defer=lambda fn: asyncio.get_running_loop().call_soon(fn))
        slow = flow.View(paused=True, queued=broker.levels.near_full, process=1,
                         behind_at=0.0, behind_at_flow=0.0)
        forwarder = flow.View(paused=False, queued=0, process=99, behind_at=-math.inf,
                              behind_at_flow=-math.inf)
        clients = [Conn(slow), Conn(forwarder)]
        results = []
        for exempt in (frozenset[int](), frozenset({99})):
            watcher = Watcher()
            hold = HoldBack(broker, clients, lambda w=watcher: w,  # type: ignore[arg-type, misc]
                            exempt=lambda e=exempt: e)  # type: ignore[misc]
            hold.review()
            results.append(watcher.paused)
            hold.release()
        return results[0], results[1]

    counted, left_out = asyncio.run(main())
    assert not counted  # as any subscriber that keeps up: no hold
    assert left_out  # left out: the slow subscriber is held for, as without a forwarder
