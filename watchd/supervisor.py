"""Starting, talking to and replacing the watcher process, from the daemon's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from watchd import __version__, channel, childlog
from watchd.systemd import child_environment

log = logging.getLogger("watchd.supervisor")

# Delays before each further restart while the watcher keeps dying young. A watcher that ran
# for STABLE_AFTER_S resets the count: one crash a day must not be treated like a crash loop.
BACKOFF_S = (0.0, 0.25, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_AFTER_S = 30.0
STOP_GRACE_S = 3.0
RECV_SIZE = 64 * 1024


class WatcherProcess:
    """One running watcher child: its process, its channel and its exit notification."""

    def __init__(self, loop: asyncio.AbstractEventLoop, log_level: str,
                 on_message: Callable[[tuple[Any, ...]], None],
                 on_exit: Callable[[WatcherProcess], None]) -> None:
        self.loop = loop
        self.on_message = on_message
        self.on_exit = on_exit
        self.started = time.monotonic()
        self.last_heard = self.started
        self.reader = channel.FrameReader()
        # Messages read but not yet handed on: a pause takes effect between two of them.
        self.backlog: deque[tuple[Any, ...]] = deque()
        self.exited = False
        self.reading_paused = False
        self.merge_max = channel.MERGE_MAX  # events per message handed on (see next_message)
        self.at_eof = False
        self.writer = False
        self._exit_event = asyncio.Event()
        self.outbuf = bytearray()  # control frames the socket did not take yet
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # exec, not fork: the child starts clean, with none of our threads, locks or loop.
            # It gets no NOTIFY_SOCKET/WATCHDOG_*/LISTEN_*: only the main process talks to systemd.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watchd.watcher", "--fd", str(theirs.fileno()),
                 "--log-level", log_level, "--daemon-version", __version__],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                # Its output goes to our log (see childlog), not to our stderr, which may be
                # /dev/null in a detached daemon.
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env=child_environment(os.environ), close_fds=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid = self.proc.pid
        self.sock = ours
        ours.setblocking(False)
        assert self.proc.stdout is not None
        self.output = self.proc.stdout.fileno()
        self.output_lines = childlog.LineSplitter()
        os.set_blocking(self.output, False)
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except OSError:
            self.proc.kill()
            self.proc.wait()
            ours.close()
            self.proc.stdout.close()
            raise
        loop.add_reader(ours.fileno(), self._readable)
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
            if self.backlog:
                self.loop.call_soon(self._dispatch)

    def send(self, message: tuple[Any, ...]) -> None:
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
        backlog = self.backlog
        while backlog and (all_of_it or not self.reading_paused):
            self.on_message(channel.next_message(backlog, self.merge_max))

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
        self.send((channel.STOP,))
        try:
            await asyncio.wait_for(self._exit_event.wait(), STOP_GRACE_S)
        except TimeoutError:
            log.warning("watcher process %d did not stop in %.0f s; killing it",
                        self.pid, STOP_GRACE_S)
            self.kill()
            await self._exit_event.wait()
