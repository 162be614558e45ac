"""A reload that removes a watch while its resync is under way answers that resync with an
overflow "resync": false; the watch's stored index is removed before that notice is on record
(as at every "resync": false), so that a crash in between cannot leave an index the notice
voided for a start with the watch configured again."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.test_broker import FakeWatch, make_broker
from watchd.config.model import WatchConfig
from watchd.losses import Losses
from watchd.resync import Resyncer
from watchd.supervisor import Supervisor


class Record:
    """What the durable state is told, in order: the indexes it forgets, the markers journaled."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def forget(self, names: Any) -> None:
        self.calls.append(("forget", tuple(names)))

    def events(self, entries: Any) -> None:
        pass

    def marker(self, marker: Any) -> None:
        self.calls.append(("marker", marker.watch, str(marker.reason), marker.resync))


def test_the_index_is_forgotten_before_the_notice_that_voids_it() -> None:
    broker = make_broker(watches=(FakeWatch("w"),))
    resync = Resyncer()
    resync.configure([WatchConfig(name="w", path="/nonexistent")], changed=["w"])
    resync.restore("w", {}, owed=1)  # an index, and a resync announced for it
    assert resync.under_way("w")
    record = Record()
    broker.history.recorder = record
    supervisor = Supervisor(lambda on_exit: None, asyncio.Event(),  # type: ignore[arg-type,return-value]
                            on_exit=lambda: None, on_replaced=lambda: 1)
    losses = Losses(broker, resync, record, supervisor,  # type: ignore[arg-type]
                    after_publish=lambda: None, snapshots=list)
    losses.reload_removed(["w"])
    assert record.calls == [("forget", ("w",)), ("marker", "w", "reload", frozenset())]
