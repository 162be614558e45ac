"""The daemon's side of forwarding: a child process per `[[forward]]`, started, restarted
with backoff when it dies, replaced when its table changes, and its status as it reports it.

The child (watchd.forward.child) gets its setup as the first line of a socketpair, and writes
a JSON status line there whenever its status changes. Its stdout and stderr go to our log as
the watcher's do (watchd.childlog).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Final

from watchd import childlog
from watchd.config.model import Config, ForwardConfig
from watchd.forward.setup import Setup
from watchd.spawn import spawn

log = logging.getLogger("watchd")

BACKOFF_S: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_AFTER_S: Final = 30.0  # a child that lived this long starts its backoff over
STOP_GRACE_S: Final = 5.0  # what is in flight is acknowledged in STOP_DRAIN_S, then exit
MAX_STATUS_LINE: Final = 64 * 1024


def forwarded_watches(forward: ForwardConfig, config: Config) -> tuple[str, ...]:
    """The names of the watches a forwarder forwards."""
    return forward.watches if forward.watches is not None else tuple(
        w.name for w in config.watches)


class ForwardProcess:
    """One running forwarder child: its process, its control socket, its last status."""

    def __init__(self, setup: Setup, log_level: str, on_exit: Callable[[ForwardProcess], None]
                 ) -> None:
        self.setup = setup
        self.on_exit = on_exit
        self.loop = asyncio.get_running_loop()
        self.started = time.monotonic()
        self.status: dict[str, Any] = {}
        self.buffer = b""
        self.exited = asyncio.Event()
        child = spawn("watchd.forward", "--log-level", log_level)
        self.proc, self.sock, self.output = child.proc, child.sock, child.output
        self.pid = self.proc.pid
        self.unsent = setup.to_json()
        self.lines = childlog.LineSplitter()
        self.loop.add_reader(self.sock.fileno(), self._read_status)
        self.loop.add_reader(self.output, self._read_output)
        self._send_setup()

    def _send_setup(self) -> None:
        """Write the setup line as the child reads it: one naming thousands of watches is
        more than the socket's buffer takes at once, and the loop must not wait for it."""
        try:
            sent = self.sock.send(self.unsent)
        except BlockingIOError:
            sent = 0
        except OSError:  # the child is gone: _read_output sees it exit
            sent = len(self.unsent)
        self.unsent = self.unsent[sent:]
        if self.unsent:
            self.loop.add_writer(self.sock.fileno(), self._send_setup)  # again: the same one
        else:
            self.loop.remove_writer(self.sock.fileno())

    def _read_status(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(self.sock.fileno())
            return
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        if len(self.buffer) > MAX_STATUS_LINE:
            self.buffer = b""
        for line in lines[-1:]:  # only the latest counts
            with contextlib.suppress(ValueError):
                status = json.loads(line)
                if isinstance(status, dict):
                    self.status = status

    def _read_output(self) -> None:
        try:
            data = os.read(self.output, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        for line in self.lines.feed(data) if data else self.lines.finish():
            record = childlog.parse_line(line, self.pid)
            if record is not None:
                childlog.emit(record)
        if not data:
            self.loop.remove_reader(self.output)
            self.loop.create_task(self._reap())

    async def _reap(self) -> None:
        while self.proc.poll() is None:  # its output closes as it exits
            await asyncio.sleep(0.01)
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_writer(self.sock.fileno())
        self.sock.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.exited.set()
        self.on_exit(self)

    def describe_exit(self) -> str:
        code = self.proc.returncode
        return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"

    async def stop(self) -> None:
        """Close the control socket (the child's cue to stop); kill it if it lingers."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        try:
            await asyncio.wait_for(self.exited.wait(), STOP_GRACE_S)
        except TimeoutError:
            log.warning("forward %s: process %d did not stop in %.0f s; killing it",
                        self.setup.config.name, self.pid, STOP_GRACE_S)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.exited.wait()


class Forwarders:
    """Every forwarder of the configuration, each kept running in a child process."""

    def __init__(self, *, socket_path: Callable[[], str], state_directory: str | None,
                 log_level: Callable[[], str]) -> None:
        self.socket_path = socket_path
        self.state_directory = state_directory
        self.log_level = log_level
        self.wanted: dict[str, Setup] = {}
        self.running: dict[str, ForwardProcess] = {}
        self.crashes: dict[str, int] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        # The last status each reported, kept across its restarts (and its position with it).
        self.last: dict[str, dict[str, Any]] = {}
        self.stopping = False

    def setups(self, config: Config) -> dict[str, Setup]:
        host = socket.gethostname()
        return {f.name: Setup(f, self.socket_path(), host, forwarded_watches(f, config),
                              self.state_directory, None) for f in config.forwards}

    def apply(self, config: Config) -> None:
        """Start, stop and replace forwarders by difference: an unchanged one keeps running."""
        new = self.setups(config)
        for name in [n for n in self.wanted if new.get(n) != self.wanted[n]]:
            self.wanted.pop(name)
            self.halt(name)
        for name, setup in new.items():
            if name not in self.wanted:
                self.wanted[name] = setup
                self.crashes.pop(name, None)
                if name not in self.running:
                    self.start(name)

    def halt(self, name: str) -> None:
        timer = self.timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        process = self.running.get(name)
        if process is not None:
            asyncio.get_running_loop().create_task(process.stop())
        else:
            self.last.pop(name, None)

    def start(self, name: str) -> None:
        self.timers.pop(name, None)
        setup = self.wanted.get(name)
        if setup is None or self.stopping or name in self.running:
            return
        last = self.last.get(name, {})
        if isinstance(last.get("instance"), str) and isinstance(last.get("last_acked_seq"), int):
            setup = Setup(setup.config, setup.socket, setup.host, setup.watches,
                          setup.state_directory, (last["instance"], last["last_acked_seq"]))
        try:
            self.running[name] = ForwardProcess(setup, self.log_level(), self.exited)
        except OSError as e:
            log.error("forward %s: cannot start its process: %s; retrying", name, e)
            self.retry(name)

    def exited(self, process: ForwardProcess) -> None:
        name = process.setup.config.name
        if self.running.get(name) is process:
            del self.running[name]
        self.last[name] = {**process.status, "connected": False, "server": None}
        if self.stopping or name not in self.wanted:
            if name not in self.wanted:
                self.last.pop(name, None)
            return
        if (self.wanted[name] != dataclasses.replace(process.setup, resume=None)
                and name not in self.running):
            self.start(name)  # replaced by a reload: its successor starts at once
            return
        if time.monotonic() - process.started >= STABLE_AFTER_S:
            self.crashes[name] = 0
        log.error("forward %s: process %d %s; restarting it", name, process.pid,
                  process.describe_exit())
        self.retry(name)

    def retry(self, name: str) -> None:
        count = self.crashes.get(name, 0)
        self.crashes[name] = count + 1
        delay = BACKOFF_S[min(count, len(BACKOFF_S) - 1)]
        self.timers[name] = asyncio.get_running_loop().call_later(delay, self.start, name)

    async def stop(self) -> None:
        """Stop every forwarder (each waits a moment for its acknowledgements)."""
        self.stopping = True
        for timer in self.timers.values():
            timer.cancel()
        await asyncio.gather(*(p.stop() for p in list(self.running.values())))

    def status(self) -> list[dict[str, Any]]:
        """`status["forwarders"]`: each forwarder as it last reported."""
        return [forward_status(setup.config, self.current(name))
                for name, setup in self.wanted.items()]

    def current(self, name: str) -> dict[str, Any]:
        process = self.running.get(name)
        if process is not None and process.status:
            if self.wanted.get(name) != dataclasses.replace(process.setup, resume=None):
                # Replaced by a reload and still stopping: its connection is not the one the
                # configuration asks for, which is not up until its successor says so.
                return {**process.status, "connected": False, "server": None}
            return process.status
        return self.last.get(name, {})

    def pids(self) -> frozenset[int]:
        """The forwarder processes running (the hold-back rule leaves their connections out)."""
        return frozenset(p.pid for p in self.running.values())


def forward_status(config: ForwardConfig, reported: dict[str, Any]) -> dict[str, Any]:
    """One forwarder in a status reply."""
    return {"name": config.name, "type": config.type,
            "connected": bool(reported.get("connected", False)),
            "server": reported.get("server"),
            "last_acked_seq": reported.get("last_acked_seq"),
            "lag": int(reported.get("lag", 0)),
            "last_error": reported.get("last_error"),
            "errors": int(reported.get("errors", 0))}
