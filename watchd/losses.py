"""When a watch's events are lost: the notice to its subscribers, the resync that answers it or
the abandon that replaces it, and the stored index kept in step with what they were told.

The daemon's part of exact recovery (the comparison itself is watchd.resync's): the watcher
reports a loss (`overflow`), its scans, the parts of a first scan, a root come back, and the
restart of a replacement watcher; this turns each into notices and synthetic events in the
order docs/protocol.md gives, and tells the durable state (watchd.state) when an index is to
be stored or voided.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from watchd import channel
from watchd.reasons import OverflowReason
from watchd.restore import restored_marker

if TYPE_CHECKING:  # for hints only: the daemon wires these parts together
    from watchd.broker import Broker
    from watchd.resync import Resyncer
    from watchd.state import Snapshot, State
    from watchd.supervisor import Supervisor

log = logging.getLogger("watchd")

# What the log says of a loss the watcher reports.
_LOSSES = {
    OverflowReason.KERNEL_QUEUE: "the kernel event queue overflowed",
    OverflowReason.WATCH_LIMIT: "every directory is watched again after a limit left some out",
    OverflowReason.WATCHER_RESTART: "the watcher was replaced",
    OverflowReason.UNMOUNT: "a file system mounted in it was unmounted",
    OverflowReason.WATCH_FAILED: "it failed (see the watcher's log) and events were lost",
}


class Losses:
    """The daemon's handling of lost events, resyncs and their abandon."""

    def __init__(self, broker: Broker, resync: Resyncer, state: State | None,
                 supervisor: Supervisor, *, after_publish: Callable[[], None],
                 snapshots: Callable[[], list[Snapshot]]) -> None:
        self.broker = broker
        self.resync = resync
        self.state = state
        self.supervisor = supervisor
        self.after_publish = after_publish  # the hold-back's look at the queues (HoldBack)
        self.snapshots = snapshots  # each watch's index, to store (Daemon.index_snapshots)

    def save(self) -> None:
        """Store the indexes as of the last seq published (when the daemon is durable)."""
        if self.state is not None:
            self.state.save(self.broker.last_seq, self.snapshots)

    def ask_rescan(self, name: str) -> None:
        watcher = self.supervisor.watcher  # gone meanwhile: its replacement's scan answers
        if watcher is not None and not watcher.exited:
            watcher.send(channel.Rescan(name))

    def rescan_raced(self) -> None:
        """Rescans after a scan race (see Resyncer.rescan_raced)."""
        self.resync.rescan_raced(self.broker, self.ask_rescan)

    def lost(self, watch: str, resync: bool, reason: OverflowReason) -> None:
        """The watcher lost a watch's events; a scan follows when it could make one."""
        resyncing = self.resync.resyncing([watch]) if resync else frozenset()
        log.warning("watch %s: %s; %s", watch, _LOSSES[reason],
                    "resynchronizing" if resyncing else "subscribers are told to rescan")
        if resyncing:
            self.resync.lost(watch)
        # "resync": false answers every resync announced before it.
        self.overflow(watch, reason, resyncing, () if resyncing else (watch,))

    def filled(self, fill: channel.Fill) -> None:
        if self.resync.filled(fill.watch, fill.dirs, fill.start, fill.done):
            self.save()  # as after a scan

    def restored(self, watch: str) -> None:
        """A watch's root is back: its scan is compared with what was known."""
        recorder = self.broker.history.recorder
        if self.resync.restored(watch) and recorder is not None:
            # On record, so that a crash before its `resynced` leaves it owed.
            recorder.marker(restored_marker(self.broker.last_seq, watch))

    def announce_restart(self) -> None:
        """The replacement watcher's watches are established: the notice, then the differences
        its scans found (held until now: see on_scan).

        After every event published before it: the replay marker lands here too.
        """
        held, self.resync.held = self.resync.held, []
        # A scan that failed (None: the root is away) is a resync that cannot come: the
        # notice says "resync": false for its watch, rather than true and then false.
        resyncing = self.resync.resyncing(name for name, dirs, _ in held if dirs is not None)
        # Told "resync": false: every watch not in resyncing.
        abandoned = tuple(n for n in self.resync.enabled() if n not in resyncing)
        self.overflow(None, OverflowReason.WATCHER_RESTART, resyncing, abandoned)
        for name in resyncing:
            self.resync.lost(name)
        for name, dirs, seconds in held:
            if dirs is not None:
                self.on_scan(name, dirs, seconds)
        caught, self.resync.held_caught = self.resync.held_caught, set()
        for name in caught:
            self.on_caught(name)

    def on_scan(self, name: str, dirs: channel.AtRest | None, seconds: float) -> None:
        """A scan of a watch: held while a restart notice is owed, else compared at once."""
        if self.supervisor.policy.notice_at is not None:
            self.resync.held.append((name, dirs, seconds))
            self.resync.held_caught.discard(name)  # a catch-up answers the last scan before it
            return
        if dirs is None:
            # The root could not be read: a resync announced will not come. None was for a
            # watch without a complete index (abandon's scan): its clients rescan already.
            if self.resync.resyncing([name]):
                log.warning("watch %s: cannot rescan; subscribers are told to rescan", name)
                self.overflow(name, OverflowReason.KERNEL_QUEUE, frozenset(), (name,))
            return
        result = self.resync.scanned(name, dirs, seconds, self.broker.last_seq)
        if result is None:
            return
        steps = self.resync.steps(self.broker, name, result, self.after_publish)
        if self.state is not None:
            # The index was replaced: stored once its differences are out, so that a crash
            # finds it.
            steps.append(self.save)
        watcher = self.supervisor.watcher
        if watcher is not None and not watcher.exited:
            watcher.defer(steps)
        else:
            for step in steps:  # no watcher to pace them with: nothing waits behind them
                step()

    def reload_cut(self, name: str) -> None:
        """A reload changed a watch (or turned its resync off) while a resync of it was under
        way: the notice "resync": false answers what was announced (see Resyncer.configure)."""
        log.warning("watch %s: changed while it was resynchronized; subscribers are told to "
                    "rescan", name)

        def step() -> None:
            self.overflow(name, OverflowReason.RELOAD, frozenset(), (name,))

        # Behind what that resync has still to publish (its steps, deferred): after the notice,
        # a client rescans, and those differences would describe the tree before it.
        watcher = self.supervisor.watcher
        if watcher is not None and not watcher.exited:
            watcher.defer([step])
        else:
            step()

    def reload_removed(self, names: Iterable[str]) -> None:
        """A reload removes these watches: one whose resync was under way gets no `resynced`;
        the notice "resync": false answers it, now, while its subscribers still receive it
        (before its watch_lost)."""
        for name in names:
            if self.resync.under_way(name):
                log.warning("watch %s: removed while it was resynchronized", name)
                if self.state is not None:
                    # Its stored index goes before the notice that voids it is on record, as
                    # at any "resync": false (see overflow): a crash in between, then a start
                    # with the watch back, would compare with it.
                    self.state.forget((name,))
                self.broker.overflow(name, OverflowReason.RELOAD)

    def on_caught(self, name: str) -> None:
        """The watcher has sent every event older than a watch's last scan: the resync's
        notices go out (Resyncer.caught), after its differences."""
        if self.supervisor.policy.notice_at is not None:
            self.resync.held_caught.add(name)  # its scan is held: so is this
            return

        def step() -> None:
            self.resync.caught(self.broker, name)

        watcher = self.supervisor.watcher
        if watcher is not None and not watcher.exited:
            watcher.defer([step])  # behind the differences' steps, if any wait
        else:
            step()

    def overflow(self, watch: str | None, reason: OverflowReason, resyncing: frozenset[str],
                 abandoned: tuple[str, ...]) -> None:
        """Publish a loss. The watches in `abandoned` are told "resync": false: their stored
        indexes are removed before the notice is on record (State.forget: a crash in between
        would leave an index the notice voided), and start over after it (abandon)."""
        if self.state is not None:
            self.state.forget(abandoned)
        self.broker.overflow(watch, reason, resyncing)
        for name in abandoned:
            self.abandon(name)

    def abandon(self, name: str) -> None:
        """Clients were told "resync": false for a watch: its index starts over from a scan
        taken without events (Resyncer.abandoned); the stale one is no longer stored."""
        if self.resync.abandoned(name):
            self.ask_rescan(name)
            self.save()
