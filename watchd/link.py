"""The daemon's side of the watcher process: what it is told (the configuration, numbered by
generation) and what it says (its event batches, to the subscribers, and its notices, to the
parts they concern).

A part of the daemon (watchd.daemon wires it): the process itself, its start and its
replacement are watchd.supervisor's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from watchd import channel
from watchd.config.model import Config, WatchConfig
from watchd.events import kinds_mask
from watchd.inotify.errors import effective_watch_limit
from watchd.supervisor import WatcherProcess

if TYPE_CHECKING:  # for hints only: the daemon wires these parts together
    from watchd.broker import Broker
    from watchd.confirmations import Confirmations
    from watchd.holdback import HoldBack
    from watchd.losses import Losses
    from watchd.metrics import Metrics
    from watchd.resync import Resyncer
    from watchd.supervisor import Supervisor
    from watchd.systemd import Notifier
    from watchd.watchstate import Watches

log = logging.getLogger("watchd")

EXTEND_TIMEOUT_USEC = 30_000_000  # asked for while a scan is still running
PROGRESS_INTERVAL_S = 1.0  # at most this often a STATUS= line of a long scan


def watch_spec(watch: WatchConfig) -> channel.Spec:
    """The watch as the watcher process receives it."""
    return channel.Spec(watch.name, watch.path, watch.recursive, kinds_mask(watch.events),
                        tuple(watch.include), tuple(watch.exclude), watch.real_path)


class WatcherLink:
    """The daemon's end of its talk with the watcher process, whichever process runs now."""

    def __init__(self, *, config: Callable[[], Config], log_level: Callable[[], str],
                 notifier: Notifier, stopping: asyncio.Event, broker: Broker,
                 resync: Resyncer, supervisor: Supervisor, watches: Watches, hold: HoldBack,
                 losses: Losses, metrics: Metrics, confirmations: Confirmations) -> None:
        self.config = config  # the configuration in force (a reload replaces it)
        self.log_level = log_level
        self.notifier = notifier
        self.stopping = stopping
        self.broker = broker
        self.resync = resync
        self.supervisor = supervisor
        self.watches = watches
        self.hold = hold
        self.losses = losses
        self.metrics = metrics
        self.confirmations = confirmations
        self.generation = 0
        self.last_progress = -PROGRESS_INTERVAL_S

    def spawn_watcher(self, on_exit: Callable[[WatcherProcess], None]) -> WatcherProcess:
        """A new watcher process, its events and notices to this link (the supervisor's spawn)."""
        watcher = WatcherProcess(asyncio.get_running_loop(), self.log_level(),
                                 self.on_events, self.on_watcher_message, on_exit)
        watcher.merge_max = self.merge_limit()
        return watcher

    def merge_limit(self) -> int:
        """Events per merged batch: half the room a queue keeps before it counts as near full."""
        return min(channel.MERGE_MAX, self.broker.levels.headroom // 2) or 1

    def watcher_gone(self) -> None:
        """The watcher process is gone (the supervisor's on_exit)."""
        self.hold.release()  # its successor starts reading; the levels are looked at again then
        if not self.stopping.is_set():
            self.watches.all_pending()

    def watcher_replaced(self) -> int:
        """A replacement was started: it gets the configuration; returns its generation."""
        self.hold.review()  # subscribers may still be behind the old one's events
        return self.send_config()

    def send_config(self) -> int:
        """The configuration in force to the watcher, under a new generation, returned."""
        self.generation += 1
        watcher = self.supervisor.watcher
        if watcher is not None and not watcher.exited:
            config = self.config()
            specs = tuple(watch_spec(w) for w in config.watches)
            budgets = config.directory_budgets(effective_watch_limit())
            watcher.send(channel.Configure(self.generation, specs, budgets,
                                           tuple(self.resync.enabled()),
                                           tuple(self.resync.to_fill())))
        return self.generation

    def still_scanning(self) -> None:
        """A large tree takes a while to scan: say so, and ask systemd for more time."""
        self.notifier.extend_timeout(
            EXTEND_TIMEOUT_USEC, f"Establishing watches: {self.watches.directories()} directories")

    def on_events(self, watch: str, reads: list[channel.Read],
                  records: list[channel.Records]) -> None:
        """The hot path: the watcher's reads, to the subscribers (and their records, taken by
        the watcher, to the watch's index)."""
        reads = self.resync.track(watch, reads, records)
        first_write = self.broker.publish_reads(watch, reads)
        if first_write is not None:
            self.metrics.latency.observe(first_write - reads[0][0])
        if self.resync.raced:
            self.losses.rescan_raced()
        self.hold.after_publish()

    def on_watcher_message(self, message: channel.Notice) -> None:
        """A notice of the watcher's, to the part it concerns."""
        match message:
            case channel.Heartbeat(reports):
                self.watches.on_heartbeat(reports)
            case channel.Applied(generation):
                if self.supervisor.applied(generation):
                    self.losses.announce_restart()
                self.confirmations.applied(generation)
            case channel.Overflow(watch, resync, reason):
                self.losses.lost(watch, resync, reason)
            case channel.Scan(watch, dirs, seconds):
                self.losses.on_scan(watch, dirs, seconds)
            case channel.Caught(watch):
                self.losses.on_caught(watch)
            case channel.Fill():
                self.losses.filled(message)
            case channel.Lost(watch, path, reason):
                self.watches.on_lost(watch, path, reason)
            case channel.Restored(watch, path):
                self.losses.restored(watch)
                self.watches.on_restored(watch, path)
            case channel.Progress(watch, directories):
                self.watches.on_progress(watch, directories)
                now = time.monotonic()
                if now - self.last_progress >= PROGRESS_INTERVAL_S:
                    self.last_progress = now
                    self.still_scanning()
            case channel.Hello(pid):
                log.debug("watcher process %d says hello", pid)
