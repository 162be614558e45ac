"""Starting, talking to and replacing the watcher process, from the daemon's event loop.

`WatcherProcess` is one running child and its channel; `Supervisor` keeps one running, replaces
it when it dies or hangs, and decides (`RestartPolicy`) how long to wait before each start and
when the subscribers are told to rescan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from watchd import __version__, channel, childlog
from watchd.spawn import spawn

log = logging.getLogger("watchd.supervisor")
# Replacing the watcher is the service's own news: logged as the daemon, where operators look.
daemon_log = logging.getLogger("watchd")

# Delays before each further restart while the watcher keeps dying young. A watcher that ran
# for STABLE_AFTER_S resets the count: one crash a day must not be treated like a crash loop.
BACKOFF_S = (0.0, 0.25, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_AFTER_S = 30.0
STOP_GRACE_S = 3.0
HEARTBEAT_FRESH_S = 3.0  # a watcher silent for longer stops the systemd watchdog pings
RECV_SIZE = 64 * 1024


class WatcherProcess:
    """One running watcher child: its process, its channel and its exit notification."""

    def __init__(self, loop: asyncio.AbstractEventLoop, log_level: str,
                 on_events: Callable[[str, list[channel.Read], list[channel.Records]], None],
                 on_message: Callable[[channel.Notice], None],
                 on_exit: Callable[[WatcherProcess], None]) -> None:
        self.loop = loop
        self.on_events = on_events  # an Events message, as its fields (see _dispatch)
        self.on_message = on_message  # every other message
        self.on_exit = on_exit
        self.started = time.monotonic()
        self.last_heard = self.started
        self.reader = channel.FrameReader()
        # Messages read but not yet handed on: a pause takes effect between two of them.
        self.backlog: deque[tuple[Any, ...]] = deque()
        # Work the daemon queued ahead of the backlog (a resync's synthetic events, in steps):
        # it goes out before what the child sends next, paced by the same pauses.
        self.deferred: deque[Callable[[], None]] = deque()
        self.exited = False
        self.reading_paused = False
        self.merge_max = channel.MERGE_MAX  # events per message handed on (see next_message)
        self.at_eof = False
        self.writer = False
        self._exit_event = asyncio.Event()
        self.outbuf = bytearray()  # control frames the socket did not take yet
        child = spawn("watchd.watcher", "--log-level", log_level, "--daemon-version",
                      __version__)
        self.proc, self.sock, self.output = child.proc, child.sock, child.output
        self.pid = self.proc.pid
        self.output_lines = childlog.LineSplitter()
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except OSError:
            self.proc.kill()
            self.proc.wait()
            self.sock.close()
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            raise
        loop.add_reader(self.sock.fileno(), self._readable)
        loop.add_reader(self.output, self._read_output)
        loop.add_reader(self.pidfd, self._died)

    def pause_reading(self) -> None:
        """Stop taking batches; the child keeps draining the kernel into its own buffer."""
        if not self.exited and not self.reading_paused:
            self.reading_paused = True
            if not self.at_eof:
                self.loop.remove_reader(self.sock.fileno())

    def resume_reading(self) -> None:
        if not self.exited and self.reading_paused:
            self.reading_paused = False
            if self.at_eof:
                return
            # Its silence while we did not listen says nothing about its health.
            self.last_heard = time.monotonic()
            self.loop.add_reader(self.sock.fileno(), self._readable)
            if self.backlog or self.deferred:
                self.loop.call_soon(self._dispatch)

    def defer(self, steps: Iterable[Callable[[], None]]) -> None:
        """Run steps before the next messages of the child, one per message slot: a pause
        (the hold-back rule) takes effect between two of them as between two messages."""
        self.deferred.extend(steps)
        if not self.reading_paused:
            self.loop.call_soon(self._dispatch)

    def send(self, message: channel.ToWatcher) -> None:
        """Send a control message, never blocking the loop on a child that does not read.

        Lost silently if the child is already gone: it is replaced, and its successor gets the
        configuration anew.
        """
        if self.exited:
            return
        pending = bool(self.outbuf)
        self.outbuf += channel.frame(message)
        if not pending:
            self._write()

    def _write(self) -> None:
        try:
            sent = self.sock.send(self.outbuf)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.outbuf.clear()  # the child is gone; its exit is on its way
            sent = 0
        del self.outbuf[:sent]
        if self.outbuf and not self.writer:
            self.loop.add_writer(self.sock.fileno(), self._write)
            self.writer = True
        elif not self.outbuf and self.writer:
            self.loop.remove_writer(self.sock.fileno())
            self.writer = False

    def _readable(self) -> None:
        self._drain()

    def _dispatch(self, *, all_of_it: bool = False) -> None:
        """Hand on read messages, stopping as soon as the daemon pauses us (between messages)."""
        backlog, deferred = self.backlog, self.deferred
        events = channel.Tag.EVENTS.value  # compared inline: a call per message costs as much
        while (backlog or deferred) and (all_of_it or not self.reading_paused):
            if deferred:
                deferred.popleft()()
                continue
            raw = channel.next_message(backlog, self.merge_max)
            if raw[0] == events:
                # Handed on as its fields: building the record would cost more than the rest of
                # the dispatch, for a message that may hold a single event.
                self.on_events(raw[1], raw[2], raw[3])
                continue
            message = channel.from_watcher(raw)
            if message is not None:  # (a tag of no version of ours: nothing to act on)
                self.on_message(message)

    def _drain(self, *, all_of_it: bool = False) -> None:
        """Read and hand on what the child sent: one read per call, unless all_of_it.

        The reader is level-triggered, so what is left brings us back on the loop's next turn;
        between turns the loop writes to the clients. Reading a large backlog in one go would
        leave a client whose socket ran dry waiting until all of it is published.
        """
        self._dispatch(all_of_it=all_of_it)
        while all_of_it or not self.reading_paused:
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                if not self.at_eof:
                    self.at_eof = True  # nothing more will come; its exit follows
                    if not self.reading_paused:
                        self.loop.remove_reader(self.sock.fileno())
                return
            self.last_heard = time.monotonic()
            self.backlog.extend(self.reader.feed(data))
            self._dispatch(all_of_it=all_of_it)
            if not all_of_it:
                return

    def _read_output(self, *, to_the_end: bool = False) -> None:
        """Pass the child's output lines on to our log: one read per call, unless to_the_end."""
        while True:
            try:
                data = os.read(self.output, RECV_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            lines = self.output_lines.feed(data) if data else self.output_lines.finish()
            for line in lines:
                record = childlog.parse_line(line, self.pid)
                if record is not None:
                    childlog.emit(record)
            if not data:
                self.loop.remove_reader(self.output)
                assert self.proc.stdout is not None
                self.proc.stdout.close()
                return
            if not to_the_end:
                return

    def _died(self) -> None:
        # Deliver what the child sent before it died, so its last events precede the notice;
        # and what it wrote, so the reason for its end precedes the line that reports it.
        self._drain(all_of_it=True)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self._read_output(to_the_end=True)
        self.loop.remove_reader(self.pidfd)
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        if self.writer:
            self.loop.remove_writer(self.sock.fileno())
        os.close(self.pidfd)
        self.sock.close()
        self.proc.wait()
        self.exited = True
        self._exit_event.set()
        self.on_exit(self)

    def describe_exit(self) -> str:
        code = self.proc.returncode
        if code is None:
            return "is running"
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    async def stop(self) -> None:
        """Ask the child to exit, and kill it if it does not within STOP_GRACE_S."""
        if self.exited:
            return
        self.send(channel.Stop())
        try:
            await asyncio.wait_for(self._exit_event.wait(), STOP_GRACE_S)
        except TimeoutError:
            log.warning("watcher process %d did not stop in %.0f s; killing it",
                        self.pid, STOP_GRACE_S)
            self.kill()
            await self._exit_event.wait()


# RestartPolicy.notice_at while no replacement has been given its configuration yet: no
# APPLIED (of a dead watcher, drained before its exit is handled) reaches it.
NOT_YET_SENT = sys.maxsize


@dataclass(slots=True)
class RestartPolicy:
    """How long to wait before each start of a watcher, and when the restart is announced."""

    restarts: int = 0
    crashes_in_a_row: int = 0
    # A watcher died and its subscribers are owed the watcher_restart notice, due at the APPLIED
    # of this generation or a later one (see applied); None: nothing owed.
    notice_at: int | None = None

    def delay(self) -> float:
        """Seconds before the next start."""
        return BACKOFF_S[min(self.crashes_in_a_row, len(BACKOFF_S) - 1)]

    def died(self, lived_s: float) -> float:
        """A watcher exited after `lived_s`; returns the delay before its successor starts."""
        self.crashes_in_a_row = 0 if lived_s >= STABLE_AFTER_S else self.crashes_in_a_row + 1
        self.restarts += 1
        # Everything the old watcher saw has been published; what happens from now until its
        # successor's watches exist is lost. The notice is owed until then: sent now, it would
        # invite a rescan that the blind window can still make incomplete. Several deaths
        # before one replacement is established owe one notice.
        self.notice_at = NOT_YET_SENT
        return self.delay()

    def failed_to_start(self) -> float:
        """A watcher could not be started; returns the delay before the next try."""
        self.crashes_in_a_row += 1  # back off: this rarely cures itself at once
        return self.delay()

    def configured(self, generation: int) -> None:
        """A replacement was sent its configuration: an owed notice is due at its APPLIED."""
        if self.notice_at is not None:
            self.notice_at = generation

    def applied(self, generation: int) -> bool:
        """The watcher applied `generation`; True when the owed notice is to go out now.

        From that APPLIED on, every watch is established (or pending on a missing root): a
        client that rescans on the notice and then applies the events that follow misses
        nothing.
        """
        due = self.notice_at is not None and generation >= self.notice_at
        if due:
            self.notice_at = None
        return due


# Starts a watcher whose exit is to be reported to the given callback.
Spawn = Callable[[Callable[[WatcherProcess], None]], WatcherProcess]


class Supervisor:
    """Keeps one watcher running: starts it, kills it when it hangs, replaces it when it dies.

    `on_exit` runs when the current watcher is gone; `on_replaced` when a replacement has been
    started, and sends it the configuration (returning that configuration's generation).
    """

    def __init__(self, spawn: Spawn, stopping: asyncio.Event, *, on_exit: Callable[[], None],
                 on_replaced: Callable[[], int]) -> None:
        self.spawn = spawn
        self.stopping = stopping
        self.on_exit = on_exit
        self.on_replaced = on_replaced
        self.policy = RestartPolicy()
        self.watcher: WatcherProcess | None = None
        self.restart_handle: asyncio.TimerHandle | None = None

    @property
    def restarting(self) -> bool:
        """No watcher runs, and one is to be started."""
        return self.watcher is None and not self.stopping.is_set()

    def start(self) -> None:
        """Start a watcher now; when that fails, try again after a backoff."""
        self.restart_handle = None
        if self.stopping.is_set():
            return
        try:
            self.watcher = self.spawn(self.exited)
        except OSError as e:
            daemon_log.error("cannot start the watcher process: %s; retrying", e)
            self.schedule_restart(self.policy.failed_to_start())
            return
        daemon_log.debug("watcher process %d started", self.watcher.pid)

    def exited(self, watcher: WatcherProcess) -> None:
        """A watcher's process is gone (what it sent before has been handed on)."""
        if watcher is not self.watcher:
            return
        self.watcher = None
        self.on_exit()
        if self.stopping.is_set():
            return
        delay = self.policy.died(time.monotonic() - watcher.started)
        daemon_log.error("watcher process %d %s; replacing it (restart %d)",
                  watcher.pid, watcher.describe_exit(), self.policy.restarts)
        self.schedule_restart(delay)

    def schedule_restart(self, delay: float) -> None:
        if delay:
            daemon_log.warning("watcher crashed %d times in a row; next start in %.1f s",
                        self.policy.crashes_in_a_row, delay)
        self.restart_handle = asyncio.get_running_loop().call_later(delay, self.restart)

    def restart(self) -> None:
        """Start a replacement and give it the current configuration under a new generation.

        Its APPLIED also answers whoever waits on an older one, and is when the owed notice
        goes out. (A watcher that failed to start leaves the notice owed to the next one's.)
        """
        self.start()
        generation = self.on_replaced()
        if self.watcher is not None:
            self.policy.configured(generation)

    def applied(self, generation: int) -> bool:
        """The watcher applied a configuration; True when its subscribers are to be told now
        that it was restarted (watcher_restart)."""
        if not self.policy.applied(generation):
            return False
        daemon_log.info("the new watcher's watches are established; subscribers are told")
        return True

    def check(self, timeout: float) -> bool:
        """Kill a watcher that sent nothing for `timeout`; True while one runs and was heard
        from lately (HEARTBEAT_FRESH_S)."""
        watcher = self.watcher
        if watcher is None or watcher.exited:
            return False
        silent = 0.0 if watcher.reading_paused else time.monotonic() - watcher.last_heard
        if silent > timeout:
            daemon_log.error("watcher process %d sent nothing for %.1f s (daemon.watcher_timeout); "
                      "killing it", watcher.pid, silent)
            watcher.kill()
            return False
        return silent < HEARTBEAT_FRESH_S

    async def stop(self) -> None:
        """Start no other watcher, and stop the one running."""
        if self.restart_handle is not None:
            self.restart_handle.cancel()
        if self.watcher is not None:
            await self.watcher.stop()
