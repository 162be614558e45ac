"""The daemon's lifecycle: start-up, signals, reload, watcher supervision, shutdown.

Order of start-up: the socket is bound (or taken from systemd), the watcher is started and
given the configuration, and READY=1 goes out only once the watcher reports every watch
established, so a client that connects right after READY sees every later change.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import resource
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from watchd import __version__, channel, flow, protocol
from watchd.broker import Broker, Connection, Peer
from watchd.config import (
    RESERVED_CLIENTS,
    Config,
    ConfigDiff,
    WatchConfig,
    diff_config,
    load_config,
)
from watchd.errors import ConfigError
from watchd.events import kinds_mask
from watchd.inotify import read_limits
from watchd.inotify.errors import effective_watch_limit
from watchd.resync import Resyncer
from watchd.server import ClientProtocol, TurnBudget, bind_socket, raise_fd_limit, trusted
from watchd.supervisor import BACKOFF_S, STABLE_AFTER_S, WatcherProcess
from watchd.systemd import Notifier, watchdog_interval
from watchd.watcher import tune_gc

log = logging.getLogger("watchd")

TICK_S = 1.0  # supervision, watchdog and STATUS= cadence
STALL_RECHECK_S = 0.05  # while held back: how often to look at the levels again
HEARTBEAT_FRESH_S = 3.0  # a watcher silent for longer stops the systemd watchdog pings
EXTEND_TIMEOUT_USEC = 30_000_000  # asked for while a scan is still running
PROGRESS_INTERVAL_S = 1.0  # at most this often a STATUS= line of a long scan
SHUTDOWN_GRACE_S = 2.0  # for clients to read what was buffered for them at a stop
RELOAD_WAIT_S = 30.0  # how long a reload waits for the watcher before READY=1 all the same
# What accept fails with when the process or the system is out of descriptors or memory.
ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Daemon.restart_notice_at while no replacement has been given its configuration yet: no
# APPLIED (of a dead watcher, drained before its exit is handled) reaches it.
NOT_YET_SENT = sys.maxsize


@dataclass(slots=True)
class WatchState:
    """What the daemon knows of one watch, from the watcher's reports."""

    config: WatchConfig
    state: str = "pending"
    directories: int = 0
    unwatched: int = 0
    limit_message: str | None = None
    limit: str | None = None  # the limit that leaves directories unwatched, as last announced


@dataclass(slots=True)
class Counters:
    reloads: int = 0
    watcher_restarts: int = 0
    crashes_in_a_row: int = 0
    last_reload_error: str | None = None
    restart_needed: tuple[str, ...] = ()
    started: float = field(default_factory=time.monotonic)


def watch_spec(watch: WatchConfig) -> tuple[Any, ...]:
    """The watch as the watcher process receives it (see watchd.watcher.Spec)."""
    return (watch.name, watch.path, watch.recursive, kinds_mask(watch.events),
            tuple(watch.include), tuple(watch.exclude), watch.real_path)


class Daemon:
    """The main process: owns the configuration, the server, the broker and the watcher."""

    def __init__(self, config: Config, notifier: Notifier, listen: socket.socket | None,
                 log_level: str | None = None) -> None:
        self.config = config
        self.log_level_override = log_level  # --log-level wins over daemon.log_level
        self.notifier = notifier
        self.listen = listen  # a socket passed by systemd, or None to bind daemon.socket
        self.instance = secrets.token_hex(8)
        self.broker = Broker(instance=self.instance, client_queue=config.daemon.client_queue,
                             replay_buffer=config.daemon.replay_buffer,
                             max_subscriptions=config.daemon.max_subscriptions,
                             max_patterns=config.daemon.max_patterns,
                             max_paths=config.daemon.max_paths,
                             defer=lambda fn: asyncio.get_running_loop().call_soon(fn))
        self.broker.set_watches(config.watches)
        self.watches = {w.name: WatchState(w) for w in config.watches}
        # The index of each watch with resync (see watchd.resync).
        self.resync = Resyncer()
        self.resync.configure(config.watches, changed=[w.name for w in config.watches])
        self.clients: set[ClientProtocol] = set()
        self.counters = Counters()
        self.generation = 0
        self.applied_waiters: dict[int, asyncio.Future[None]] = {}
        self.watcher: WatcherProcess | None = None
        self.restart_handle: asyncio.TimerHandle | None = None
        self.stopping = asyncio.Event()
        self.owned_socket_path: str | None = None
        self.server: asyncio.AbstractServer | None = None
        self.last_status = ""
        self.watchdog_s = watchdog_interval()
        # Reading from the watcher is paused while the clock holds (see congestion_changed).
        self.flow_clock = flow.FlowClock()
        self.stall_recheck: asyncio.TimerHandle | None = None
        self.stall_spent = False  # the limit was reached; wait for a subscriber to catch up
        self.last_progress = -PROGRESS_INTERVAL_S
        self.lost: set[str] = set()  # watches whose subscribers were told watch_lost
        # fs.inotify.max_user_watches for status, with when it was read: reading /proc costs
        # more than the rest of a status reply, and anyone may ask for thousands of them.
        self.max_user_watches: tuple[float, int | None] = (-math.inf, None)
        self.accept_failing = False  # out of descriptors: logged once until an accept works
        # A watcher died and its subscribers are owed the watcher_restart notice, sent at the
        # APPLIED of this generation or a later one (see announce_restart); None: nothing owed.
        self.restart_notice_at: int | None = None

    # -- start-up ------------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit status."""
        loop = asyncio.get_running_loop()
        await self.start_server(loop)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        # Signal handlers only record; the loop acts (reload runs as a task, one at a time).
        reload_lock = asyncio.Lock()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload(reload_lock)))
        tune_gc()  # the replay buffer is long-lived; see tune_gc
        self.start_watcher(loop)
        # Supervision runs from the start: a watcher that hangs in its first scan is replaced too.
        ticker = loop.create_task(self.tick_forever())
        await self.wait_applied(self.send_config(), initial=True)
        if not self.stopping.is_set():
            assert self.server is not None
            await self.server.start_serving()
            self.notifier.ready(self.status_line())
            log.info("watchd %s ready on %s: %s", __version__, self.socket_name(),
                     self.status_line())
            await self.stopping.wait()
        ticker.cancel()
        await self.shutdown()
        return 0

    async def start_server(self, loop: asyncio.AbstractEventLoop) -> None:
        raise_fd_limit()  # each client holds a descriptor; load_config checked the hard limit
        loop.set_exception_handler(self.on_loop_exception)
        sock = self.listen
        if sock is None:
            d = self.config.daemon
            sock = bind_socket(d.socket, d.socket_mode, d.socket_group)
            self.owned_socket_path = d.socket
        sock.setblocking(False)
        # Bound (or taken over) now, served only once the watches are established: a client that
        # connects early waits in the listen queue instead of missing its first changes.
        # max_line_bytes is read per connection, so a reload applies it to later connections.
        budget = TurnBudget()  # one for every connection
        self.server = await loop.create_unix_server(
            lambda: ClientProtocol(self.broker, self, self.config.daemon.max_line_bytes,
                                   self.clients, budget), sock=sock, start_serving=False)

    def socket_name(self) -> str:
        if self.owned_socket_path is not None:
            return self.owned_socket_path
        name = self.listen.getsockname() if self.listen is not None else ""
        return f"{name} (from systemd)"

    def log_level(self) -> str:
        return self.log_level_override or self.config.daemon.log_level

    # -- the watcher ---------------------------------------------------------------------------

    def start_watcher(self, loop: asyncio.AbstractEventLoop) -> None:
        self.restart_handle = None
        if self.stopping.is_set():
            return
        try:
            self.watcher = WatcherProcess(loop, self.log_level(),
                                          self.on_watcher_message, self.on_watcher_exit)
        except OSError as e:
            log.error("cannot start the watcher process: %s; retrying", e)
            self.counters.crashes_in_a_row += 1  # back off: this rarely cures itself at once
            self.schedule_restart(loop)
            return
        self.watcher.merge_max = self.merge_limit()
        log.debug("watcher process %d started", self.watcher.pid)

    def merge_limit(self) -> int:
        """Events per merged batch: half the room a queue keeps before it counts as near full."""
        return min(channel.MERGE_MAX, self.broker.levels.headroom // 2) or 1

    def send_config(self) -> int:
        self.generation += 1
        if self.watcher is not None and not self.watcher.exited:
            specs = [watch_spec(w) for w in self.config.watches]
            budgets = self.config.directory_budgets(effective_watch_limit())
            self.watcher.send((channel.CONFIG, self.generation, specs, budgets,
                               self.resync.enabled()))
        return self.generation

    async def wait_applied(self, generation: int, *, initial: bool = False,
                           deadline: float | None = None) -> bool:
        """Wait until the watcher confirms a configuration; False at the deadline or on stop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.applied_waiters[generation] = future
        give_up = None if deadline is None else loop.time() + deadline
        while not future.done() and not self.stopping.is_set():
            if give_up is not None and loop.time() >= give_up:
                break
            done, _ = await asyncio.wait({future}, timeout=1.0)
            if not done and initial:
                # A large tree takes a while to scan: say so, and ask systemd for more time.
                self.notifier.send(f"EXTEND_TIMEOUT_USEC={EXTEND_TIMEOUT_USEC}",
                                   f"STATUS=Establishing watches: {self.directories()} directories")
        return future.done()

    def resolve_applied(self, generation: int | None = None) -> None:
        for gen in list(self.applied_waiters):
            if generation is None or gen <= generation:
                future = self.applied_waiters.pop(gen)
                if not future.done():
                    future.set_result(None)

    def on_watcher_message(self, message: tuple[Any, ...]) -> None:
        tag = message[0]
        if tag == channel.EVENTS:
            self.resync.track(message[1], message[2])
            self.broker.publish_reads(message[1], message[2])
            if self.broker.queues_filling:
                self.congestion_changed()
        elif tag == channel.HEARTBEAT:
            self.on_heartbeat(message[1])
        elif tag == channel.APPLIED:
            self.announce_restart(message[1])
            self.resolve_applied(message[1])
        elif tag == channel.OVERFLOW:
            name = message[1]
            # A scan follows when the watcher could make one (see watchd.resync).
            resync = self.resync.resyncing([name]) if len(message) > 2 and message[2] else None
            log.warning("watch %s: the kernel event queue overflowed; %s", name,
                        "resynchronizing" if resync else "subscribers are told to rescan")
            self.resync.lost(name)
            self.broker.overflow(name, "kernel_queue", resync or frozenset())
        elif tag == channel.SCAN:
            self.on_scan(message[1], message[2], message[3])
        elif tag == channel.LOST:
            _, name, path, reason = message
            state = self.watches.get(name)
            if state is not None:
                state.state, state.directories = "pending", 0
            log.warning("watch %s: %s was %s; waiting for it to come back", name, path, reason)
            self.lost.add(name)
            self.resync.lost(name)
            self.broker.watch_lost(name, path, reason)
        elif tag == channel.RESTORED:
            _, name, path = message
            state = self.watches.get(name)
            if state is not None:
                state.state = "active"
            self.resync.restored(name)
            self.restored(name, path)
        elif tag == channel.PROGRESS:
            self.on_progress(message[1], message[2])
        elif tag == channel.HELLO:
            log.debug("watcher process %d says hello", message[1])

    def on_progress(self, name: str, directories: int) -> None:
        """A long scan is under way: say how far it got, and ask systemd for more time."""
        ws = self.watches.get(name)
        if ws is not None:
            ws.directories = directories
        now = time.monotonic()
        if now - self.last_progress >= PROGRESS_INTERVAL_S:
            self.last_progress = now
            self.notifier.send(f"EXTEND_TIMEOUT_USEC={EXTEND_TIMEOUT_USEC}",
                               f"STATUS=Establishing watches: {self.directories()} directories")

    def on_scan(self, name: str, dirs: Any, scan_s: float) -> None:
        """A scan of a watch: held while a restart notice is owed, else compared at once."""
        if self.restart_notice_at is not None:
            self.resync.held.append((name, dirs, scan_s))
            return
        if dirs is None:
            # The root could not be read after all: the resync announced will not come.
            log.warning("watch %s: cannot rescan; subscribers are told to rescan", name)
            self.broker.overflow(name, "kernel_queue")
            return
        result = self.resync.scanned(name, dirs, scan_s)
        if result is not None:
            self.resync.publish(self.broker, name, result)

    def restored(self, name: str, path: str) -> None:
        self.lost.discard(name)
        log.info("watch %s: %s is watched again", name, path)
        self.broker.watch_restored(name, path)

    def on_heartbeat(self, states: dict[str, tuple[str, int, int, str | None, str | None]],
                     ) -> None:
        for name, (state, directories, unwatched, problem, limit) in states.items():
            ws = self.watches.get(name)
            if ws is None:
                continue
            if name in self.lost and state != "pending":
                # Came back while no watcher that knew it was lost was running.
                self.restored(name, ws.config.path)
            ws.state, ws.directories, ws.unwatched = state, directories, unwatched
            ws.limit_message = problem if state == "degraded" else None
            self.limit_changed(ws, limit if state == "degraded" else None)

    def limit_changed(self, ws: WatchState, limit: str | None) -> None:
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
        elif ws.state == "active":
            log.warning("watch %s: every directory is watched again; subscribers are told to "
                        "rescan", name)
            self.broker.overflow(name, "watch_limit")
        ws.limit = limit

    def on_watcher_exit(self, watcher: WatcherProcess) -> None:
        if watcher is not self.watcher:
            return
        self.watcher = None
        self.end_stall()  # its successor starts reading; the levels are looked at again then
        if self.stopping.is_set():
            return
        lived = time.monotonic() - watcher.started
        c = self.counters
        c.crashes_in_a_row = 0 if lived >= STABLE_AFTER_S else c.crashes_in_a_row + 1
        c.watcher_restarts += 1
        log.error("watcher process %d %s; replacing it (restart %d)",
                  watcher.pid, watcher.describe_exit(), c.watcher_restarts)
        # Everything the old watcher saw has been published; what happens from now until its
        # successor's watches exist is lost. The notice is owed until then (announce_restart):
        # sent now, it would invite a rescan that the blind window can still make incomplete.
        # Several deaths before one replacement is established owe one notice.
        self.restart_notice_at = NOT_YET_SENT
        self.resync.lost(None)
        for ws in self.watches.values():
            ws.state = "pending"
        self.schedule_restart(asyncio.get_running_loop())

    def announce_restart(self, generation: int) -> None:
        """Send the owed watcher_restart notice once the replacement applied its configuration.

        From that APPLIED on, every watch is established (or pending on a missing root): a
        client that rescans on the notice and then applies the events that follow misses
        nothing. The replay marker lands here too, after every event published before it.
        """
        due = self.restart_notice_at
        if due is not None and generation >= due:
            self.restart_notice_at = None
            held, self.resync.held = self.resync.held, []
            resync = self.resync.resyncing(name for name, _, _ in held)
            log.info("the new watcher's watches are established; %s",
                     "resynchronizing" if resync else "subscribers are told to rescan")
            self.broker.overflow(None, "watcher_restart", resync)
            for name, dirs, scan_s in held:
                self.on_scan(name, dirs, scan_s)

    def schedule_restart(self, loop: asyncio.AbstractEventLoop) -> None:
        delay = BACKOFF_S[min(self.counters.crashes_in_a_row, len(BACKOFF_S) - 1)]
        if delay:
            log.warning("watcher crashed %d times in a row; next start in %.1f s",
                        self.counters.crashes_in_a_row, delay)

        def restart() -> None:
            self.start_watcher(loop)
            self.congestion_changed()  # subscribers may still be behind the old one's events
            # The new watcher gets the current configuration under a new generation; its
            # APPLIED also answers whoever waits on an older one, and sends the owed notice.
            # (A watcher that failed to start leaves the notice owed to the next one's.)
            generation = self.send_config()
            if self.restart_notice_at is not None and self.watcher is not None:
                self.restart_notice_at = generation

        self.restart_handle = loop.call_later(delay, restart)

    # -- clients -------------------------------------------------------------------------------

    def may_connect(self, peer: Peer) -> str | None:
        """None to serve a new connection from peer, or why not.

        Root and the daemon's own user have RESERVED_CLIENTS slots beyond max_clients and no
        per-user cap, so that the others filling every slot never lock the administrator out.
        """
        if self.accept_failing:
            self.accept_failing = False
            log.info("accepting connections again")
        d = self.config.daemon
        if self.sees_all(peer):
            if len(self.clients) < d.max_clients + RESERVED_CLIENTS:
                return None
            return ("the daemon serves its maximum number of clients (daemon.max_clients, and "
                    "the slots kept for root); try again later")
        if len(self.clients) >= d.max_clients:
            return ("the daemon serves its maximum number of clients (daemon.max_clients); "
                    "try again later")
        mine = sum(1 for c in self.clients if c.conn is not None and c.conn.peer.uid == peer.uid)
        if mine >= d.max_clients_per_user:
            return (f"uid {peer.uid} already holds {mine} connections, the most one user may "
                    "(daemon.max_clients_per_user); close one and try again")
        return None

    def request_timeout(self) -> float:
        return self.config.daemon.request_timeout

    def on_loop_exception(self, loop: asyncio.AbstractEventLoop,
                          context: dict[str, Any]) -> None:
        """asyncio reports each failed accept (and retries a second later): one line per run
        of failures instead of a traceback for each."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in ACCEPT_RESOURCE_ERRORS:
            if not self.accept_failing:
                self.accept_failing = True
                soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                log.error("cannot accept new connections: %s (open file limit %d, %d clients); "
                          "retrying every second until resources are freed",
                          exc.strerror, soft, len(self.clients))
            return
        loop.default_exception_handler(context)

    def greet(self, conn: Connection) -> None:
        self.broker.reply(conn, protocol.hello(__version__, os.getpid(), self.instance,
                                               self.broker.last_seq))

    def handle_line(self, conn: Connection, line: bytes) -> None:
        try:
            request = protocol.decode_request(line)
            if isinstance(request, protocol.Ping):
                self.broker.reply(conn, protocol.pong(request.id))
            elif isinstance(request, protocol.Status):
                self.broker.reply(conn, protocol.status(request.id,
                                                        self.status_fields(conn.peer)))
            elif isinstance(request, protocol.Subscribe):
                self.broker.subscribe(conn, request)
                self.congestion_changed()  # a newcomer is not behind: no reason to hold back
            else:
                self.broker.unsubscribe(conn, request.subscription, request.id)
        except protocol.ProtocolError as e:
            self.broker.reply(conn, e.reply())

    def flow_time(self) -> float:
        """Now on the clock the hold-back rule judges by (see watchd.flow)."""
        return self.flow_clock.now(time.monotonic())

    def congestion_changed(self) -> None:
        """Hold the watcher back, or let it go, as the rule in watchd.flow decides.

        While held, each subscriber works through its own backlog, already encoded, and the
        watcher keeps draining the kernel queue into its own buffer: a burst larger than
        client_queue still reaches clients that read steadily, where dropping it would only
        make them ask again.
        """
        watcher = self.watcher
        if watcher is None:
            return
        now = time.monotonic()
        views = [c.view() for c in self.clients if c.subscribed]
        decision = flow.decide(views, self.broker.levels, now, self.flow_clock.now(now),
                               spent=self.stall_spent)
        self.broker.queues_filling = decision.filling
        self.stall_spent = decision.spent
        if not decision.hold:
            self.end_stall()
            return
        if not self.flow_clock.holding:
            self.flow_clock.hold(now)
            log.debug("%s: the watcher holds its batches meanwhile", decision.reason)
            watcher.pause_reading()
        if self.stall_recheck is None:
            # Not every change of the levels comes with a call (an unsubscribe, a drained queue).
            self.stall_recheck = asyncio.get_running_loop().call_later(
                STALL_RECHECK_S, self._recheck)

    def _recheck(self) -> None:
        self.stall_recheck = None
        if self.flow_clock.holding:
            self.congestion_changed()

    def end_stall(self) -> None:
        self.flow_clock.release(time.monotonic())
        if self.stall_recheck is not None:
            self.stall_recheck.cancel()
            self.stall_recheck = None
        if self.watcher is not None:
            self.watcher.resume_reading()

    # -- status --------------------------------------------------------------------------------

    def directories(self) -> int:
        return sum(ws.directories for ws in self.watches.values())

    @staticmethod
    def sees_all(peer: Peer) -> bool:
        """Root and the daemon's own user are shown everything; see docs/security.md."""
        return trusted(peer)

    def status_fields(self, peer: Peer | None = None) -> dict[str, Any]:
        """The status reply as this peer may read it (None: everything, for the operator).

        A peer other than root or the daemon's user is shown only the watches it may see, and
        totals over those watches and over its own user's connections: what the ACLs hide must
        not show through a name, a path or a count.
        """
        if peer is None or self.sees_all(peer):
            shown = list(self.watches.values())
            stats = self.broker.stats()
            reload_error = self.counters.last_reload_error
            view = "full"
        else:
            shown = [ws for ws in self.watches.values()
                     if ws.config.may_see(peer.uid, peer.gid, peer.groups)]
            stats = self.broker.stats_for(peer.uid, (ws.config.name for ws in shown))
            # The message may quote any watch of the file.
            reload_error = (None if self.counters.last_reload_error is None
                            else "the last reload was refused; the daemon's log says why")
            view = "limited"
        fields: dict[str, Any] = {
            "pid": os.getpid(),
            "instance": self.instance,
            "uptime_s": round(time.monotonic() - self.counters.started, 3),
            "seq": self.broker.last_seq,
            "config": self.config.path,
            "reloads": self.counters.reloads,
            "last_reload_error": reload_error,
            "view": view,
            "clients": stats["clients"],
            "subscriptions": stats["subscriptions"],
            "events": stats["events"],
            "dropped": stats["dropped"],
            "overflows": stats["overflows"],
            "watches": [self.watch_status(ws) for ws in shown],
            "version": __version__,
            "watcher": {
                "pid": self.watcher.pid if self.watcher is not None else None,
                "restarts": self.counters.watcher_restarts,
                "crashes_in_a_row": self.counters.crashes_in_a_row,
            },
            "inotify_watches": sum(ws.directories for ws in shown),
            "max_user_watches": self.user_watch_limit(),
            "restart_needed": list(self.counters.restart_needed),
        }
        return fields

    def user_watch_limit(self) -> int | None:
        """fs.inotify.max_user_watches, read again at most once a second."""
        now = time.monotonic()
        read_at, value = self.max_user_watches
        if now - read_at >= TICK_S:
            value = read_limits().max_user_watches
            self.max_user_watches = (now, value)
        return value

    def watch_status(self, ws: WatchState) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": ws.config.name,
            "path": ws.config.path,
            # The directory the watcher opens: path with its symbolic links resolved at load.
            "real_path": ws.config.real_path,
            "recursive": ws.config.recursive,
            "state": ws.state,
            "directories": ws.directories,
            "inotify_watches": ws.directories,
            **self.resync.status(ws.config.name),
        }
        if ws.state == "degraded":
            out["unwatched"] = ws.unwatched
            out["problem"] = ws.limit_message
        return out

    def status_line(self) -> str:
        states = [ws.state for ws in self.watches.values()]
        parts = [f"{len(states)} watches ({states.count('active')} active"]
        for name in ("degraded", "pending"):
            if states.count(name):
                parts[-1] += f", {states.count(name)} {name}"
        parts[-1] += ")"
        parts.append(f"{self.directories()} directories")
        parts.append(f"{len(self.clients)} clients")
        parts.append(f"{self.broker.events} events")
        c = self.counters
        if c.watcher_restarts:
            parts.append(f"{c.watcher_restarts} watcher restarts")
        if self.watcher is None and not self.stopping.is_set():
            parts.append("watcher restarting")
        for ws in self.watches.values():
            if ws.state == "degraded":
                # A limit (max_directories or the kernel's) or unreadable directories.
                why = ws.limit or "unreadable directories"
                parts.append(f"{ws.unwatched} directories unwatched on {ws.config.name} ({why})")
        if c.last_reload_error:
            parts.append(f"last reload failed: {c.last_reload_error}")
        return "; ".join(parts)

    async def tick_forever(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(min(TICK_S, self.watchdog_s or TICK_S))

    def tick(self) -> None:
        self.notifier.flush()  # READY=1 and the like that systemd's socket could not take yet
        now = time.monotonic()
        limit = min(flow.STALL_LIMIT_S, self.config.daemon.watcher_timeout)
        held_since = self.flow_clock.since
        if held_since is not None and now - held_since > limit:
            log.debug("the watcher was held back for %.1f s; publishing again", limit)
            self.stall_spent = True
            self.end_stall()
        watcher = self.watcher
        if watcher is not None and not watcher.exited:
            silent = 0.0 if watcher.reading_paused else now - watcher.last_heard
            if silent > self.config.daemon.watcher_timeout:
                log.error("watcher process %d sent nothing for %.1f s (daemon.watcher_timeout); "
                          "killing it", watcher.pid, silent)
                watcher.kill()
            elif self.watchdog_s is not None and silent < HEARTBEAT_FRESH_S:
                # Pinged from the loop itself and only while the watcher is alive and talking,
                # so a wedged loop or a hung watcher both get the service restarted by systemd.
                self.notifier.watchdog()
        line = self.status_line()
        if line != self.last_status and self.notifier.status(line):
            self.last_status = line

    # -- reload --------------------------------------------------------------------------------

    async def reload(self, lock: asyncio.Lock) -> None:
        async with lock:
            self.notifier.reloading()
            path = self.config.path
            log.info("reloading %s", path)
            try:
                new = load_config(path)
            except ConfigError as e:
                self.counters.last_reload_error = str(e)
                log.error("reload refused, still running the previous configuration: %s", e)
                self.notifier.ready(f"reload refused: {e}")
                return
            diff = diff_config(self.config, new)
            self.apply(new, diff)
            generation = self.send_config()
            applied = await self.wait_applied(generation, deadline=RELOAD_WAIT_S)
            if self.stopping.is_set():
                return  # STOPPING=1 is on its way; READY=1 now would contradict it
            if applied:
                log.info("reload applied: %s", self.describe_diff(diff))
                self.notifier.ready(self.status_line())
            else:
                log.warning("reload accepted, but the watcher has not confirmed it within %.0f s "
                            "(it is being restarted); it gets the new configuration when it starts",
                            RELOAD_WAIT_S)
                self.notifier.ready("reload accepted; the watcher is restarting")

    def apply(self, new: Config, diff: ConfigDiff) -> None:
        old = self.config
        if diff.restart_needed:
            log.warning("changed %s: this takes effect only after a restart of watchd",
                        ", ".join(diff.restart_needed))
        d = new.daemon
        self.config = new
        self.counters.reloads += 1
        self.counters.last_reload_error = None
        self.counters.restart_needed = diff.restart_needed
        self.broker.set_limits(client_queue=d.client_queue, replay_buffer=d.replay_buffer,
                               max_subscriptions=d.max_subscriptions,
                               max_patterns=d.max_patterns, max_paths=d.max_paths)
        if self.watcher is not None:
            self.watcher.merge_max = self.merge_limit()
        self.congestion_changed()  # the levels may have moved
        if d.log_level != old.daemon.log_level and self.log_level_override is None:
            # The watcher process takes it at its next start.
            logging.getLogger("watchd").setLevel(d.log_level.upper())
        for watch in diff.removed:
            self.lost.discard(watch.name)
            self.broker.watch_lost(watch.name, watch.path, "removed")
        current = self.watches
        # An unchanged watch keeps its state; a new or changed one starts over (the watcher's
        # heartbeat right after it applies the configuration fills it in).
        self.watches = {
            w.name: current[w.name] if w.name in current and current[w.name].config == w
            else WatchState(w)
            for w in new.watches
        }
        self.broker.set_watches(new.watches)
        # A watch the watcher establishes anew is scanned anew: its index starts over.
        self.resync.configure(new.watches, changed=[
            *(w.name for w in diff.added),
            *(w.name for o, w in diff.changed if watch_spec(o) != watch_spec(w))])

    @staticmethod
    def describe_diff(diff: ConfigDiff) -> str:
        parts = [f"{len(diff.added)} added", f"{len(diff.removed)} removed",
                 f"{len(diff.changed)} changed"]
        if diff.restart_needed:
            parts.append("needs restart: " + ", ".join(diff.restart_needed))
        return ", ".join(parts)

    # -- shutdown ------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping")
        if self.server is not None:
            self.server.close()  # stop accepting first
        if self.restart_handle is not None:
            self.restart_handle.cancel()
        self.end_stall()
        if self.watcher is not None:
            await self.watcher.stop()
        for client in list(self.clients):
            client.close()  # flushes what is buffered, then closes
        if self.owned_socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.owned_socket_path)
        # Give the clients a moment to take what was still buffered for them.
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while self.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for client in list(self.clients):
            client.abort()
        log.info("stopped")
