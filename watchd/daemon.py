"""The daemon's lifecycle: start-up, serving, reload, shutdown, and the wiring of its parts.

Order of start-up: the durable state is read (watchd.state: the instance, seqs and history of
the previous run, resumed), the socket is bound (or taken from systemd), the watcher is
started and given the configuration, and READY=1 goes out only once the watcher reports every
watch established (and, with durable state, its first scans are compared with the stored
indexes), so a client that connects right after READY sees every later change.

The parts: the broker (subscriptions and fan-out), the supervisor (the watcher process and its
restarts), the link (what the watcher is told and what it says: watchd.link), the watches'
state, the hold-back rule's glue, lost events and their resyncs (watchd.losses), the request
handler and status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time

from watchd import __version__, flow
from watchd.broker import Broker
from watchd.config.load import load_config
from watchd.config.model import Config, ConfigDiff, diff_config
from watchd.confirmations import Confirmations
from watchd.errors import ConfigError
from watchd.forward.supervise import Forwarders
from watchd.handler import RequestHandler
from watchd.holdback import HoldBack
from watchd.link import WatcherLink, watch_spec
from watchd.losses import Losses
from watchd.metrics import Metrics, MetricsBindError, MetricsServer, exposition
from watchd.restore import index_spec, open_state, resume
from watchd.resync import Resyncer
from watchd.server import ClientProtocol, Listener, TurnBudget, raise_fd_limit
from watchd.state import Snapshot, new_instance
from watchd.status import ReloadRecord, Status
from watchd.supervisor import Supervisor
from watchd.systemd import Notifier, watchdog_interval
from watchd.watcher import tune_gc
from watchd.watchstate import Watches

log = logging.getLogger("watchd")

TICK_S = 1.0  # supervision, watchdog and STATUS= cadence
SHUTDOWN_GRACE_S = 2.0  # for clients to read what was buffered for them at a stop
RELOAD_WAIT_S = 30.0  # how long a reload waits for the watcher before READY=1 all the same


class Daemon:
    """The main process: owns the configuration, and wires the server, broker and watcher."""

    def __init__(self, config: Config, notifier: Notifier, listen: socket.socket | None,
                 log_level: str | None = None) -> None:
        self.config = config
        self.log_level_override = log_level  # --log-level wins over daemon.log_level
        self.notifier = notifier
        self.listener = Listener(listen)
        d = config.daemon
        self.state, resumed = open_state(config, os.environ,
                                         retain=lambda: self.config.daemon.replay_buffer)
        self.instance = resumed.instance if resumed is not None else new_instance()
        self.broker = Broker(instance=self.instance, client_queue=d.client_queue,
                             replay_buffer=d.replay_buffer,
                             max_subscriptions=d.max_subscriptions,
                             max_patterns=d.max_patterns, max_paths=d.max_paths,
                             max_batch=d.max_batch,
                             defer=lambda fn: asyncio.get_running_loop().call_soon(fn))
        self.broker.set_watches(config.watches)
        self.watches = Watches(self.broker, config.watches)
        # The index of each watch with resync (see watchd.resync).
        self.resync = Resyncer()
        self.resync.configure(config.watches, changed=[w.name for w in config.watches])
        if self.state is not None and self.state.journal is None and resumed is None:
            self.state.start(self.instance, 0)  # a fresh start (resumed: see open_state)
        if self.state is not None and self.state.journal is not None:
            self.broker.history.recorder = self.state.journal
            self.state.on_fail = self.recording_failed
            self.state.unsettled = self.resync.unsettled
        if resumed is not None:
            resume(self.broker, self.resync, config.watches, resumed)
        self.clients: set[ClientProtocol] = set()
        self.history = ReloadRecord()
        self.stopping = asyncio.Event()
        self.confirmations = Confirmations(self.stopping)
        self.last_status = ""
        self.watchdog_s = watchdog_interval()
        # Looked up when called (from run on): the link is built last, on the parts that are
        # built on the supervisor.
        self.supervisor = Supervisor(
            lambda on_exit: self.link.spawn_watcher(on_exit), self.stopping,  # noqa: PLW0108
            on_exit=lambda: self.link.watcher_gone(),  # noqa: PLW0108
            on_replaced=lambda: self.link.watcher_replaced())  # noqa: PLW0108
        self.forwarders = Forwarders(
            socket_path=self.listener.socket_path,
            state_directory=self.state.path if self.state is not None else None,
            log_level=self.log_level)
        self.hold = HoldBack(self.broker, self.clients, lambda: self.supervisor.watcher,
                             exempt=self.forwarders.pids)
        self.losses = Losses(self.broker, self.resync, self.state, self.supervisor,
                             after_publish=self.hold.after_publish,
                             snapshots=self.index_snapshots)
        self.status = Status(instance=self.instance, config_path=config.path,
                             broker=self.broker, watches=self.watches,
                             supervisor=self.supervisor, clients=self.clients,
                             history=self.history, resync=self.resync, state=self.state,
                             forwarders=self.forwarders.status)
        self.metrics = Metrics(self.status, self.broker)
        self.metrics_http = MetricsServer(lambda: exposition(self.metrics.snapshot()))
        self.handler = RequestHandler(broker=self.broker, instance=self.instance,
                                 settings=lambda: self.config.daemon, clients=self.clients,
                                 status=self.status, hold=self.hold, durable=self.durable,
                                 metrics=self.metrics)
        self.link = WatcherLink(
            config=lambda: self.config, log_level=self.log_level, notifier=notifier,
            stopping=self.stopping, broker=self.broker, resync=self.resync,
            supervisor=self.supervisor, watches=self.watches, hold=self.hold, losses=self.losses,
            metrics=self.metrics, confirmations=self.confirmations)

    # -- durable state (watchd.state) ----------------------------------------------------------

    def durable(self) -> bool:
        return self.state is not None and self.state.durable

    def recording_failed(self) -> None:
        """The state cannot be written any more: the history stops recording (see State.fail)."""
        self.broker.history.recorder = None

    def index_snapshots(self) -> list[Snapshot]:
        """Each watch's index, to store (see watchd.state.Snapshot)."""
        specs = {w.name: index_spec(w) for w in self.config.watches}
        return [(name, specs[name], dirs, seq) for name, dirs, seq in self.resync.indexes()]

    # -- the lifecycle -------------------------------------------------------------------------

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
        self.supervisor.start()
        # Supervision runs from the start: a watcher that hangs in its first scan is replaced too.
        ticker = loop.create_task(self.tick_forever())
        syncer = loop.create_task(self.state.sync_forever()) if self.state is not None else None
        await self.confirmations.wait(self.link.send_config(),
                                      meanwhile=self.link.still_scanning)
        if not self.stopping.is_set():
            await self.listener.serve()
            self.forwarders.apply(self.config)
            self.notifier.ready(self.status.line())
            log.info("watchd %s ready on %s: %s", __version__, self.listener.socket_name(),
                     self.status.line())
            await self.stopping.wait()
        ticker.cancel()
        if syncer is not None:
            syncer.cancel()
        await self.shutdown()
        return 0

    async def start_server(self, loop: asyncio.AbstractEventLoop) -> None:
        raise_fd_limit()  # each client holds a descriptor; load_config checked the hard limit
        loop.set_exception_handler(self.handler.on_loop_exception)
        d = self.config.daemon
        # Bound (or taken over) now, served only once the watches are established: a client that
        # connects early waits in the listen queue instead of missing its first changes.
        # max_line_bytes is read per connection, so a reload applies it to later connections.
        budget = TurnBudget()  # one for every connection
        await self.listener.open(
            loop, d.socket, d.socket_mode, d.socket_group,
            lambda: ClientProtocol(self.broker, self.handler, self.config.daemon.max_line_bytes,
                                   self.clients, budget))
        await self.metrics_http.listen(self.config.daemon.metrics)

    async def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping")
        self.listener.close()  # stop accepting first
        await self.metrics_http.close()
        self.hold.release()
        await self.supervisor.stop()
        await self.forwarders.stop()  # each takes what it still reads, and its acks
        if self.state is not None:
            await self.state.close(self.broker.last_seq, self.index_snapshots())
        for client in list(self.clients):
            client.close()  # flushes what is buffered, then closes
        self.listener.remove()
        # Give the clients a moment to take what was still buffered for them.
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while self.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for client in list(self.clients):
            client.abort()
        log.info("stopped")

    def log_level(self) -> str:
        return self.log_level_override or self.config.daemon.log_level

    async def tick_forever(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(min(TICK_S, self.watchdog_s or TICK_S))

    def tick(self) -> None:
        self.notifier.flush()  # READY=1 and the like that systemd's socket could not take yet
        self.hold.expire(min(flow.HOLD_LIMIT_S, self.config.daemon.watcher_timeout))
        fresh = self.supervisor.check(self.config.daemon.watcher_timeout)
        if fresh and self.watchdog_s is not None:
            # Pinged from the loop itself and only while the watcher is alive and talking,
            # so a wedged loop or a hung watcher both get the service restarted by systemd.
            self.notifier.watchdog()
        if self.resync.racing():  # rescans after a scan race that had to wait
            self.losses.rescan_raced()
        if self.state is not None:
            self.state.tick(self.broker.last_seq, self.index_snapshots)
        line = self.status.line()
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
                # Bound before anything changes: the one part of a reload that may fail after
                # the file was read, but for memory (below).
                await self.metrics_http.listen(new.daemon.metrics)
            except (ConfigError, MetricsBindError) as e:
                self.refuse_reload(str(e) if isinstance(e, ConfigError) else f"{path}: {e}")
                return
            diff = diff_config(self.config, new)
            try:
                self.apply(new, diff)
            except MemoryError:
                # apply takes what may fail first (the replay history's memory), before it
                # changes anything: the previous configuration keeps running in full.
                with contextlib.suppress(MetricsBindError):
                    await self.metrics_http.listen(self.config.daemon.metrics)
                self.refuse_reload(f"{path}: daemon.replay_buffer: not enough memory for "
                                   f"{new.daemon.replay_buffer} events; choose a smaller history")
                return
            generation = self.link.send_config()
            applied = await self.confirmations.wait(generation, deadline=RELOAD_WAIT_S)
            if self.stopping.is_set():
                return  # STOPPING=1 is on its way; READY=1 now would contradict it
            if applied:
                log.info("reload applied: %s", diff.describe())
                self.notifier.ready(self.status.line())
            else:
                log.warning("reload accepted, but the watcher has not confirmed it within %.0f s "
                            "(it is being restarted); it gets the new configuration when it starts",
                            RELOAD_WAIT_S)
                self.notifier.ready("reload accepted; the watcher is restarting")

    def refuse_reload(self, error: str) -> None:
        self.history.last_reload_error = error
        log.error("reload refused, still running the previous configuration: %s", error)
        self.notifier.ready(f"reload refused: {error}")

    def apply(self, new: Config, diff: ConfigDiff) -> None:
        old = self.config
        if diff.restart_needed:
            log.warning("changed %s: this takes effect only after a restart of watchd",
                        ", ".join(diff.restart_needed))
        d = new.daemon
        # First, as it alone may fail (MemoryError): nothing has changed yet if it does.
        self.broker.set_limits(client_queue=d.client_queue, replay_buffer=d.replay_buffer,
                               max_subscriptions=d.max_subscriptions,
                               max_patterns=d.max_patterns, max_paths=d.max_paths,
                               max_batch=d.max_batch)
        self.config = new
        self.history.reloads += 1
        self.history.last_reload_error = None
        self.history.restart_needed = diff.restart_needed
        if self.supervisor.watcher is not None:
            self.supervisor.watcher.merge_max = self.link.merge_limit()
        self.hold.review()  # the levels may have moved
        if d.log_level != old.daemon.log_level and self.log_level_override is None:
            # The watcher process takes it at its next start.
            logging.getLogger("watchd").setLevel(d.log_level.upper())
        self.losses.reload_removed(w.name for w in diff.removed)
        self.watches.reconfigure(new.watches, diff.removed)
        self.broker.set_watches(new.watches)
        self.forwarders.apply(new)
        # A watch the watcher establishes anew is scanned anew: its index starts over.
        unfinished = self.resync.configure(new.watches, changed=[
            *(w.name for w in diff.added),
            *(w.name for o, w in diff.changed if watch_spec(o) != watch_spec(w))])
        for name in unfinished:
            self.losses.reload_cut(name)

