"""What the daemon knows of each configured watch, kept current from the watcher's reports.

The watcher reports each watch's state in its heartbeat, and a watch's loss and return as they
happen; `Watches` keeps the picture that status shows and tells the watch's subscribers (through
the broker) when a watch is lost, comes back, or has directories a limit leaves unwatched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from watchd.broker import Broker
from watchd.channel import Limit, Phase, WatchReport
from watchd.config.model import WatchConfig
from watchd.protocol import LostReason, OverflowReason

log = logging.getLogger("watchd")


@dataclass(slots=True)
class WatchState:
    """What the daemon knows of one watch, from the watcher's reports."""

    config: WatchConfig
    state: Phase = Phase.PENDING
    directories: int = 0
    unwatched: int = 0
    limit_message: str | None = None
    limit: Limit | None = None  # the limit that leaves directories unwatched, as last announced


class Watches:
    """Every configured watch's state, by name, and the notices its changes call for."""

    def __init__(self, broker: Broker, configs: Iterable[WatchConfig]) -> None:
        self.broker = broker
        self.by_name = {w.name: WatchState(w) for w in configs}
        self.lost: set[str] = set()  # watches whose subscribers were told watch_lost

    def __iter__(self) -> Iterator[WatchState]:
        return iter(self.by_name.values())

    def directories(self) -> int:
        """Directories watched, over every watch."""
        return sum(ws.directories for ws in self.by_name.values())

    def all_pending(self) -> None:
        """The watcher is gone: nothing is watched until its successor reports."""
        for ws in self.by_name.values():
            ws.state = Phase.PENDING

    def reconfigure(self, configs: Iterable[WatchConfig], removed: Iterable[WatchConfig]) -> None:
        """Take a reloaded configuration's watches; the removed ones' subscribers are told."""
        for watch in removed:
            self.lost.discard(watch.name)
            self.broker.watch_lost(watch.name, watch.path, LostReason.REMOVED)
        current = self.by_name
        # An unchanged watch keeps its state; a new or changed one starts over (the watcher's
        # heartbeat right after it applies the configuration fills it in).
        self.by_name = {
            w.name: current[w.name] if w.name in current and current[w.name].config == w
            else WatchState(w)
            for w in configs
        }

    def on_progress(self, name: str, directories: int) -> None:
        """A long scan of the watch got this far."""
        ws = self.by_name.get(name)
        if ws is not None:
            ws.directories = directories

    def on_lost(self, name: str, path: str, reason: LostReason) -> None:
        """The watch's root went away; the watcher looks for it to come back."""
        ws = self.by_name.get(name)
        if ws is not None:
            ws.state, ws.directories = Phase.PENDING, 0
        log.warning("watch %s: %s was %s; waiting for it to come back", name, path, reason)
        self.lost.add(name)
        self.broker.watch_lost(name, path, reason)

    def on_restored(self, name: str, path: str) -> None:
        """The watch's root is back and watched again."""
        ws = self.by_name.get(name)
        if ws is not None:
            ws.state = Phase.ACTIVE
        self.restored(name, path)

    def restored(self, name: str, path: str) -> None:
        self.lost.discard(name)
        log.info("watch %s: %s is watched again", name, path)
        self.broker.watch_restored(name, path)

    def on_heartbeat(self, reports: dict[str, WatchReport]) -> None:
        """Take the watcher's view of every watch."""
        for name, report in reports.items():
            ws = self.by_name.get(name)
            if ws is None:
                continue
            if name in self.lost and report.state != Phase.PENDING:
                # Came back while no watcher that knew it was lost was running.
                self.restored(name, ws.config.path)
            ws.state, ws.directories, ws.unwatched = (report.state, report.directories,
                                                      report.unwatched)
            degraded = report.state == Phase.DEGRADED
            ws.limit_message = report.problem if degraded else None
            self.limit_changed(ws, report.limit if degraded else None)

    def limit_changed(self, ws: WatchState, limit: Limit | None) -> None:
        """Tell a watch's subscribers when a limit starts or stops leaving directories unwatched.

        watch_degraded when it starts (or the limit in the way changes); when every directory
        is watched again, an overflow (reason watch_limit): what happened in the directories
        that were not watched is lost, and a rescan from now on is complete.
        """
        name = ws.config.name
        if limit == ws.limit:
            return
        if limit is not None:
            log.error("watch %s is degraded: %d directories not watched: %s",
                      name, ws.unwatched, ws.limit_message)
            self.broker.watch_degraded(name, ws.unwatched, limit)
        elif ws.state == Phase.ACTIVE and not ws.config.resync:
            # (With resync, the watcher says so itself, before the differences it scanned.)
            log.warning("watch %s: every directory is watched again; subscribers are told to "
                        "rescan", name)
            self.broker.overflow(name, OverflowReason.WATCH_LIMIT)
        ws.limit = limit
