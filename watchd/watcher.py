"""The watcher process: owns every inotify fd and blocks in epoll over them and its channel.

It runs as a child of the daemon (`python -m watchd.watcher --fd N`), started with exec rather
than fork so that it never inherits the daemon's threads, locks or event loop. It reads the
kernel queues as fast as it can into its own bounded outgoing buffer, independently of how fast
the daemon takes batches, so a busy daemon does not make the kernel overflow.

Here: the loop, the watches' lifecycle and the event path (read, filter, frame). Beside it:
`watcher_channel` (its end of the channel, the bounded outgoing buffer), `watcher_watch`
(one watch's state: back-off after a failure, when a limit is retried, what it reports) and
`fill` (the scans for the daemon's index: whole, or in parts for a first index).
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import logging
import operator
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Iterable

from watchd import __version__, channel
from watchd.channel import Spec
from watchd.fill import Fills, scan_whole
from watchd.globs import glob_predicate
from watchd.inotify import (
    IN_Q_OVERFLOW,
    InotifyError,
    InotifyFd,
    PathNotFoundError,
    WatchLimitError,
)
from watchd.inotify.tree import Tree, TreeEvent
from watchd.levels import DEFAULT_LOG_LEVEL
from watchd.listing import AtRest
from watchd.reasons import LostReason, OverflowReason
from watchd.watcher_channel import ChannelEnd
from watchd.watcher_nice import raise_priority
from watchd.watcher_watch import Watch, name_filter

log = logging.getLogger("watchd.watcher")

HEARTBEAT_S = 1.0  # how often the daemon hears from us when nothing else happens
PENDING_POLL_S = 1.0  # how often a pending root is looked for again
# After a read of fewer events than this, pause this long before looking again (see run).
COALESCE_BELOW = 64
COALESCE_S = 0.0001
# What the daemon needs of a TreeEvent, as a channel.Item (a plain tuple: marshal takes no
# NamedTuple).
_ITEM = operator.itemgetter(0, 1, 2, 3)


class Watcher:
    """The child's whole state: the watches, the epoll set and its end of the channel."""

    def __init__(self, sock: socket.socket) -> None:
        self.epoll = select.epoll()
        self.channel = ChannelEnd(sock, self.epoll)
        self.watches: dict[str, Watch] = {}
        self.by_fd: dict[int, Watch] = {}
        self.running = True  # until the daemon says stop; see also channel.open
        self.next_heartbeat = 0.0
        self.next_pending_poll = 0.0
        self.budgets: dict[str, int | None] = {}  # watch name -> max_directories
        self.channel.rescan = self.rescan
        # First scans made in parts between reads (watchd.fill).
        self.fills = Fills(self.send, self.rescan)

    def send(self, message: channel.FromWatcher) -> None:
        """Queue a message for the daemon and push what the socket takes now."""
        self.channel.send(message)

    def on_channel(self) -> None:
        for message in self.channel.receive():
            if isinstance(message, channel.Configure):
                self.budgets = message.budgets
                before, self.channel.resync_on = self.channel.resync_on, frozenset(message.resync)
                self.apply(message.specs, self.channel.resync_on - before,
                           frozenset(message.fill))
                self.heartbeat()  # fresh states first, so the daemon's view is current at APPLIED
                self.send(channel.Applied(message.generation))
            elif isinstance(message, channel.Stop):
                self.running = False
            elif isinstance(message, channel.Rescan):
                self.rescan(message.watch, owed=True)

    # -- configuration -------------------------------------------------------------------------

    def apply(self, specs: Iterable[Spec], newly_resynced: frozenset[str] = frozenset(),
              fill: frozenset[str] = frozenset()) -> None:
        """Make the set of watches equal to specs, touching only what changed. Watches in
        `fill` have no index in the daemon yet: their first scan is made in parts."""
        wanted = {spec.name: spec for spec in specs}
        for name in [n for n in self.watches if n not in wanted]:
            self.deactivate(self.watches.pop(name))
        to_scan: list[str] = []  # established anew, or newly indexed: the daemon needs a scan
        for name, spec in wanted.items():
            old = self.watches.get(name)
            if old is not None and old.spec == spec:
                if old.tree is not None:
                    # A new budget applies to what is added from now on (see retry_limited).
                    old.tree.max_directories = self.budgets.get(name)
                if name in newly_resynced:
                    to_scan.append(name)
                continue
            to_scan.append(name)
            if old is not None and old.lost_events:
                # It failed, its loss owed until it was back (see activate): told now, as the
                # changed watch starts afresh, with no notice of its own.
                self.send(channel.Overflow(name, reason=OverflowReason.WATCH_FAILED))
            # A changed watch is not a lost one coming back: no watch_restored for it.
            watch = Watch(spec=spec)
            self.watches[name] = watch
            self.activate(watch, announce=False)
            if old is not None:
                # The new tree is in place before the old one goes: what happened in between is
                # read from the old fd now, so a changed watch misses nothing.
                if old.ino is not None:
                    self.read_watch(old)
                self.deactivate(old)
        # After every watch is in place: a replacement watcher's scans all come before any of
        # its events, and the daemon can announce the restart before it publishes them.
        for name in to_scan:
            if name in fill:
                self.fills.start(self.watches[name])
            else:
                # Owed: the daemon has an index of it and announced its resync (a restart's
                # notice), so a scan that fails is sent too, and the daemon says "resync": false.
                self.rescan(name, owed=name in self.channel.resync_on)

    def activate(self, watch: Watch, *, announce: bool) -> None:
        """Try to establish a watch; on a missing root it stays pending."""
        spec = watch.spec
        name, path, include, exclude = spec.name, spec.path, spec.include, spec.exclude
        try:
            ino = InotifyFd()
        except InotifyError as e:
            self.pending(watch, str(e))
            return
        restoring = announce or (watch.was_active and not watch.lost_events)
        resync = name in self.channel.resync_on
        tree: Tree | None = None
        try:
            tree = Tree(ino, path, spec.mask, recursive=spec.recursive,
                        prune=glob_predicate(exclude), synthetic=True,
                        progress=lambda n: self.send(channel.Progress(name, n)),
                        real_root=spec.real_path, real_fs_only=True,
                        max_directories=self.budgets.get(name))
            existing = tree.start(report=restoring and not resync)
        except PathNotFoundError:
            ino.close()  # and every watch on it
            self.root_gone(watch)
            self.pending(watch, None)
            return
        except InotifyError as e:
            # Also a symbolic link or a pseudo file system where the directory was.
            ino.close()
            if os.path.islink(spec.real_path) or not os.path.isdir(spec.real_path):
                self.root_gone(watch)  # a file or a link in its place: the root went
            self.pending(watch, str(e))
            return
        except Exception as e:
            # A bug or an unforeseen error of the file system: this watch's problem alone.
            log.exception("watch %s: cannot be established", name)
            ino.close()
            self.fail(watch, e)
            return
        watch.ino, watch.tree = ino, tree
        watch.wanted = name_filter(include, exclude)
        watch.problem = None
        self.by_fd[ino.fileno()] = watch
        self.epoll.register(ino.fileno(), select.EPOLLIN)
        if tree.limit_error is not None:
            log.warning("watch %s: %s", name, tree.limit_error)
        if watch.lost_events:
            # It failed while active: events were lost. Its subscribers are told to rescan now
            # that its watches are in place again, so that their rescan misses nothing.
            watch.lost_events = False
            scanned = self.scan(watch) if resync else None
            self.send(channel.Overflow(name, scanned is not None, OverflowReason.WATCH_FAILED))
            if scanned is not None:
                self.send(channel.Scan(name, *scanned))
                watch.scan_sent()
        elif restoring:
            self.send(channel.Restored(name, path))
            if resync:
                # The differences from what the daemon knew, not everything. Owed: the daemon
                # owes a `resynced` for the return, so a scan that fails (the root went again)
                # is sent too, and "resync": false answers it.
                self.rescan(name, owed=True)
            else:
                self.send_items(watch, existing, time.time())
        watch.was_active = True
        log.debug("watch %s: %d directories watched under %s", name, tree.directories, path)

    def fail(self, watch: Watch, error: Exception) -> None:
        """An unexpected error in one watch: drop its tree and try again later, with backoff."""
        watch.failed(error, time.monotonic())
        self.deactivate(watch)
        log.warning("watch %s: %s", watch.name, watch.problem)

    def root_gone(self, watch: Watch) -> None:
        """The root went (nothing, or a file or a link, in its place): a watch that failed while
        active tells its loss now (see Watch.root_gone). A directory that cannot be watched
        (a pseudo file system mounted on it, a limit) is no root gone: its loss is told once it
        is watched again."""
        for message in watch.root_gone():
            self.send(message)

    def pending(self, watch: Watch, problem: str | None) -> None:
        if problem is not None and problem != watch.problem:
            log.warning("watch %s: %s; will retry", watch.name, problem)
        watch.problem = problem

    def deactivate(self, watch: Watch) -> None:
        self.fills.stop(watch.name)
        if watch.ino is None:
            return
        self.by_fd.pop(watch.ino.fileno(), None)
        self.epoll.unregister(watch.ino.fileno())
        # Closing the fd drops every watch on it at once; no rm_watch per directory needed.
        watch.ino.close()
        watch.ino = watch.tree = None
        # Nothing more is read: a catch-up owed is due now, and sent here (a watch removed or
        # replaced is no longer there at the turn's end).
        watch.catch_read = False
        if watch.catch_up_due():
            self.send(channel.Caught(watch.name))

    def poll_pending(self) -> None:
        now = time.monotonic()
        for watch in self.watches.values():
            if watch.ino is not None:
                continue
            # Not only a directory: whatever is there (a link, a file) is tried, so that the
            # reason it is refused is logged.
            if not os.path.lexists(watch.real_path):
                self.root_gone(watch)
            elif now >= watch.retry_at:
                self.activate(watch, announce=True)

    # -- events ------------------------------------------------------------------------------

    def read_watch(self, watch: Watch) -> int:
        """on_inotify, where an unexpected error fails this watch alone, not the process."""
        try:
            read = self.on_inotify(watch)
        except Exception as e:
            log.exception("watch %s: failed while handling its events", watch.name)
            self.fail(watch, e)
            return 0
        if read and watch.failures and watch.tree is not None:
            watch.failures = 0  # working again
        return read

    def on_inotify(self, watch: Watch) -> int:
        """Read and forward what the watch's queue holds; returns how many kernel events."""
        ino, tree = watch.ino, watch.tree
        assert ino is not None
        assert tree is not None
        awaited = watch.awaited()
        raw = ino.read_raw()
        if not raw:
            return 0
        now = time.time()
        events = tree.handle(raw)
        if tree.overflowed:
            # The notice goes where the loss is: after what came before it.
            cut = next(i for i, ev in enumerate(events) if ev.mask & IN_Q_OVERFLOW)
            self.send_items(watch, events[:cut], now)
            if not self.resync(watch, OverflowReason.KERNEL_QUEUE, now):
                # With a scan, what was read after the loss is not sent: it happened before
                # the scan, which shows it. Sent after it, a directory's moved_to would replace
                # what the resync created with a bare directory (a tree lists nothing once it
                # has overflowed), and what it holds would be reported nowhere.
                self.send_items(watch, events[cut + 1 :], now)
        else:
            self.send_items(watch, events, now)
            if tree.unmounted and tree.lost is None:
                # A file system mounted in the tree went: the directory underneath is watched
                # again, and what changed (its contents for the mounted ones) is published.
                self.resync(watch, OverflowReason.UNMOUNT, now)
        watch.read_done(awaited)
        if self.fills:
            self.fills.check(watch, events)
        if tree.lost is not None:
            reason = LostReason.UNMOUNTED if tree.lost == "unmounted" else LostReason.DELETED
            self.deactivate(watch)
            self.send(channel.Lost(watch.name, watch.path, reason))
        return len(raw)

    def resync(self, watch: Watch, reason: OverflowReason, now: float) -> bool:
        """After a loss (or an unmount) in an established watch: watch again what its tree
        lacks, and tell the daemon, with a scan of it for a watch that has an index (then
        True)."""
        tree = watch.tree
        assert tree is not None
        if watch.name in self.channel.resync_on and tree.lost is None:
            # The notice at once (the daemon tells subscribers while we scan); watches first,
            # then the scan: what changes from now on is in the queue too. A scan that fails
            # is sent as None: the daemon then tells subscribers to rescan.
            self.send(channel.Overflow(watch.name, resync=True, reason=reason))
            tree.resync()
            self.rescan(watch.name, owed=True)
            return True
        self.send(channel.Overflow(watch.name, reason=reason))
        self.send_items(watch, tree.resync(), now)
        return False

    def scan(self, watch: Watch) -> tuple[AtRest, float] | None:
        """The tree of an established watch at rest, and the seconds it took (see
        watchd.fill.scan_whole); None when its root cannot be read. It replaces a fill."""
        self.fills.stop(watch.name)
        return scan_whole(watch, self.heartbeat)

    def rescan(self, name: str, *, owed: bool = False) -> None:
        """Send the daemon a scan of a watch that has an index (see watchd.resync). `owed`: a
        resync was announced (by us after a loss, or by the daemon asking: channel.Rescan),
        which the scan answers: it is sent even when it fails, as None, and the daemon then
        tells subscribers to rescan."""
        watch = self.watches.get(name)
        scanned = None
        if watch is not None and (owed or name in self.channel.resync_on):
            scanned = self.scan(watch)  # None without a tree
        if scanned is not None or owed:
            self.send(channel.Scan(name, *(scanned or (None, 0.0))))
        if scanned is not None and watch is not None:
            watch.scan_sent()

    def send_caught(self) -> None:
        """At the end of a turn of the loop, after all it sent: the catch-ups now due (see
        Watch.scan_sent)."""
        for watch in self.watches.values():
            if watch.catch_up_due():
                self.send(channel.Caught(watch.name))

    def send_items(self, watch: Watch, events: list[TreeEvent], now: float) -> None:
        """Ship tree events to the daemon as (mask, cookie, path, src_path), in bounded batches.

        For a watch the daemon keeps an index of, each batch goes with the records of the paths
        it named (watchd.records.Recorder), taken here, now, before the daemon publishes it: the
        lstat runs on our core, not on the daemon's event path. Other watches cost no stat.
        """
        wanted = watch.wanted
        if wanted is None:
            items = list(map(_ITEM, events))  # the common case, at C speed
        else:
            items = [_ITEM(ev) for ev in events if wanted(ev.path.rpartition("/")[2])]
        name = watch.name
        send_events = self.channel.send_events
        recorder = watch.recorder if name in self.channel.resync_on else None
        step = channel.BATCH_MAX
        for start in range(0, len(items), step):
            batch = items[start : start + step]
            send_events(name, [(now, batch)],
                        [None if recorder is None else recorder.records(batch)])

    def retry_limited(self, now: float) -> None:
        """Watch what a limit left unwatched again, once watches may have been freed (see
        Watch.limit_retry_due). The rescan reports what it finds in the newly watched
        directories as creates, like the one after a kernel queue overflow.
        """
        for watch in self.watches.values():
            tree = watch.tree
            if tree is None or not watch.limit_retry_due(now):
                continue
            try:
                found = tree.resync()
                if tree.limit_error is None and watch.name in self.channel.resync_on:
                    # Every directory is watched again: what changed in those that were not
                    # is published as differences from the daemon's index (watchd.resync),
                    # not as the creation of everything they hold.
                    self.send(channel.Overflow(watch.name, resync=True,
                                               reason=OverflowReason.WATCH_LIMIT))
                    self.rescan(watch.name, owed=True)
                    continue
                self.send_items(watch, found, time.time())
            except Exception as e:
                log.exception("watch %s: failed while watching again what a limit left out",
                              watch.name)
                self.fail(watch, e)

    def heartbeat(self) -> None:
        self.send(channel.Heartbeat({name: w.report() for name, w in self.watches.items()}))

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        self.send(channel.Hello(os.getpid()))
        out = self.channel
        sock_fd = out.fd
        while self.running and out.open:
            now = time.monotonic()
            if now >= self.next_heartbeat:
                self.retry_limited(now)
                self.heartbeat()
                self.next_heartbeat = now + HEARTBEAT_S
            if now >= self.next_pending_poll:
                self.poll_pending()
                self.next_pending_poll = now + PENDING_POLL_S
            timeout = max(0.0, min(self.next_heartbeat, self.next_pending_poll) - now)
            if self.fills:
                timeout = 0.0  # events first, then the next part of a fill
            read = 0
            for fd, mask in self.epoll.poll(timeout):
                if fd == sock_fd:
                    if mask & select.EPOLLOUT:
                        out.flush()
                    if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                        self.on_channel()
                else:
                    watch = self.by_fd.get(fd)
                    if watch is not None:
                        read += self.read_watch(watch)
            filling = bool(self.fills)
            if filling:
                self.fills.step(self.watches)
            self.send_caught()
            if not filling and 0 < read < COALESCE_BELOW:
                # Events are trickling in: what we read is already on its way, so a short pause
                # delays nothing read, and lets the next events gather into one read instead of
                # a wake-up each. At a higher priority than the writer, waking for every few
                # events took a quarter of the throughput of a burst and twice the CPU.
                time.sleep(COALESCE_S)
        for watch in self.watches.values():
            self.deactivate(watch)


def tune_gc() -> None:
    """Make the cyclic garbage collector rare: the event path allocates, but never cycles.

    With the default thresholds a burst of events triggers a collection every 700 tuples, and
    each batch that is still alive gets traversed again and again: a third of the cost of
    parsing. Freezing moves what start-up created out of the collector's sight for good.
    """
    gc.freeze()
    gc.set_threshold(100_000, 20, 100)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the watcher child process."""
    parser = argparse.ArgumentParser(prog="watchd-watcher")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--log-level", default=DEFAULT_LOG_LEVEL)
    parser.add_argument("--daemon-version", help="the running daemon's version, if not ours")
    args = parser.parse_args(argv)
    # The daemon handles SIGINT/SIGTERM for the whole service and tells us to stop over the
    # channel; a terminal's Ctrl-C reaching the process group must not kill us first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from watchd.systemd import configure_logging

    configure_logging(args.log_level, priority_prefix=True)  # read by the daemon: see childlog
    # A fatal signal (a crash in the ctypes binding, say) leaves our stack in the daemon's log,
    # at error priority: our stderr is the daemon's, not a stream of our own.
    faulthandler.enable()
    if args.daemon_version not in (None, __version__):
        # The package was replaced under a running daemon: the channel between the two may
        # differ, so do not talk at all. Exit status 78: restarting us cannot help.
        log.error("the installed watchd is version %s but the running daemon is %s; restart "
                  "the service (systemctl restart watchd) to run the installed version",
                  __version__, args.daemon_version)
        return 78
    sock = socket.socket(fileno=args.fd)
    raise_priority()
    tune_gc()
    try:
        Watcher(sock).run()
    except WatchLimitError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
