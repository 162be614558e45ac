"""What the tests share: waiting with a deadline, predicates over protocol messages, the real
daemon as a subprocess and a raw client over its real socket."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from watchd.client import AsyncFollower, Follower
from watchd.inotify import InotifyFd, RawEvent

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT = 10.0
NOBODY = 65534  # uid and gid of the unprivileged user some tests run a process as

T = TypeVar("T")
Message = dict[str, Any]
Predicate = Callable[[Message], bool]


def wait_for(predicate: Callable[[], T | None], timeout: float = DEFAULT_TIMEOUT,
             what: str = "condition", interval: float = 0.01) -> T:
    """Poll until predicate() is truthy and return that value; at the deadline, fail the test
    naming `what` was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def take(follower: Follower, count: int, timeout: float = 20.0) -> list[Message]:
    """The next count messages of a follower, each waited for with a deadline."""
    got = []
    for _ in range(count):
        message = follower.get(timeout=timeout)
        assert message is not None, f"only {got} within {timeout} s"
        got.append(message)
    return got


async def take_one(follower: AsyncFollower, timeout: float = 20.0) -> Message:
    """The next message of an asyncio follower, waited for with a deadline."""
    message = await follower.get(timeout=timeout)
    assert message is not None, f"nothing within {timeout} s"
    return message


def is_event(path: str | Path, kind: str | None = None) -> Predicate:
    """Matches the event on path (of that kind, if given)."""
    def pred(m: Message) -> bool:
        return (m.get("type") == "event" and m["path"] == str(path)
                and (kind is None or m["kind"] == kind))
    return pred


def is_type(*types: str) -> Predicate:
    """Matches a message of one of these types ("overflow", "watch_lost", ...)."""
    return lambda m: m.get("type") in types


def read_until(ino: InotifyFd, want: Callable[[list[RawEvent]], bool],
               timeout: float = DEFAULT_TIMEOUT) -> list[RawEvent]:
    """Read an inotify fd until want(every event read so far) holds; fail at the deadline."""
    got: list[RawEvent] = []
    deadline = time.monotonic() + timeout
    while not want(got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout} s; read {got!r}")
        if ino.wait_readable(left):
            got.extend(ino.read_events())
    return got


class Datagrams:
    """A bound datagram socket that keeps every message it received (a NOTIFY_SOCKET, a
    syslog socket)."""

    def __init__(self, path: str, encoding: str = "latin-1") -> None:
        self.path = path
        self.encoding = encoding
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        """Take in what has arrived; every message so far."""
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            self.messages.append(data.decode(self.encoding, "replace"))

    def wait_for_text(self, text: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """The first message that contains text anywhere (e.g. inside a STATUS= line)."""
        def find() -> str | None:
            return next((m for m in self.poll() if text in m), None)
        return wait_for(find, timeout, f"{text!r} on {self.path}")

    def wait_match(self, pattern: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """The first message matching the regular expression pattern."""
        def find() -> str | None:
            return next((m for m in self.poll() if re.search(pattern, m)), None)
        return wait_for(find, timeout, f"{pattern!r} on {self.path}; got {self.messages[-5:]}")

    def close(self) -> None:
        self.sock.close()


class Notify(Datagrams):
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def wait(self, field: str, timeout: float = DEFAULT_TIMEOUT, after: int = 0) -> int:
        """Index of the first datagram (from `after` on) that holds the line `field`."""
        def find() -> int | None:
            self.poll()
            for i in range(after, len(self.messages)):
                if field in self.messages[i].split("\n"):
                    return i + 1  # +1 so that index 0 is truthy
            return None
        return wait_for(find, timeout, f"{field!r} on NOTIFY_SOCKET") - 1


class Line:
    """A raw protocol client: send objects, receive decoded lines, with deadlines."""

    def __init__(self, path: str | None, timeout: float = DEFAULT_TIMEOUT,
                 sock: socket.socket | None = None) -> None:
        if sock is None:
            assert path is not None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                raise
        self.sock = sock
        self.buf = b""
        self.raw: list[bytes] = []
        self.pushed: list[dict[str, Any]] = []  # events and notices that arrived before a reply
        self.hello: dict[str, Any] = {}

    @classmethod
    def adopt(cls, sock: socket.socket) -> Line:
        """A Line over a connection opened elsewhere (e.g. handed over by another process)."""
        return cls(None, sock=sock)

    def send(self, obj: Any) -> None:
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode() + b"\n"
        self.sock.sendall(data)

    def recv(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The next message; AssertionError if none arrives in time, EOFError on close."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no message within {timeout} s")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                raise AssertionError(f"no message within {timeout} s") from None
            if not chunk:
                raise EOFError("the daemon closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        self.raw.append(line)
        return json.loads(line)  # type: ignore[no-any-return]

    def request(self, obj: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Send a request and return its reply, skipping pushed messages (kept in .pushed)."""
        self.send(obj)
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg.get("type") in ("event", "overflow", "dropped", "watch_lost", "watch_restored",
                                   "watch_degraded", "resynced"):
                self.pushed.append(msg)
                continue
            return msg

    def until(self, predicate: Callable[[dict[str, Any]], bool],
              timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
        """Receive messages until one satisfies predicate; returns all received, that one last."""
        deadline = time.monotonic() + timeout
        got: list[dict[str, Any]] = []
        backlog, self.pushed = self.pushed, []
        for msg in backlog:
            got.append(msg)
            if predicate(msg):
                self.pushed = backlog[len(got):]
                return got
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout} s; received {got[-5:]}")
            msg = self.recv(left)
            got.append(msg)
            if predicate(msg):
                return got

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """The real daemon, `python -m watchd`, on a config of the test's own."""

    def __init__(self, workdir: str, config_text: str, env: dict[str, str] | None = None) -> None:
        self.dir = workdir
        self.socket = os.path.join(workdir, "w.sock")
        self.config = os.path.join(workdir, "watchd.toml")
        self.write_config(config_text)
        self.notify = Notify(os.path.join(workdir, "n.sock"))
        self.log_path = os.path.join(workdir, "watchd.log")
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[Line] = []  # every connection a test opened, closed at cleanup

    def write_config(self, text: str) -> None:
        text = text.replace("@SOCKET@", self.socket)
        with open(self.config + ".tmp", "w") as f:
            f.write(text)
        os.replace(self.config + ".tmp", self.config)

    def start(self, *, wait_ready: bool = True, args: tuple[str, ...] = (),
              shell_prefix: str | None = None, pass_fds: tuple[int, ...] = ()) -> Daemon:
        """Start it; shell_prefix is sh code run before `exec` of the daemon (an exec wrapper)."""
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.path)
        for name in ("WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
                     "JOURNAL_STREAM", "INVOCATION_ID"):
            env.pop(name, None)
        env.update(self.extra_env)
        argv = [sys.executable, "-m", "watchd", "--config", self.config, "--log-level", "debug",
                *args]
        if shell_prefix is not None:
            argv = ["bash", "-c", shell_prefix + '\nexec "$@"', "bash", *argv]
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True, pass_fds=pass_fds)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"watchd exited with {self.proc.returncode}:\n{self.log_text()}")
            self.notify.poll()
            return any("READY=1" in m.split("\n") for m in self.notify.messages)
        wait_for(ready, timeout, "READY=1")

    def log_text(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, text: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until the daemon's log holds text."""
        wait_for(lambda: text in self.log_text(), timeout, f"{text!r} in the daemon's log")

    def line(self, path: str | None = None) -> Line:
        """A raw connection (to our socket, or to path), closed at cleanup."""
        line = Line(path or self.socket)
        self.lines.append(line)
        return line

    def connect(self) -> Line:
        line = self.line()
        hello = line.recv()
        assert hello["type"] == "hello", hello
        line.hello = hello
        return line

    def subscribe(self, **filters: Any) -> tuple[Line, str]:
        line = self.connect()
        reply = line.request({"op": "subscribe", "id": 1, **filters})
        assert reply["type"] == "subscribed", reply
        return line, reply["subscription"]

    def status(self) -> dict[str, Any]:
        with contextlib.closing(Line(self.socket)) as line:
            line.recv()  # hello
            return line.request({"op": "status"})

    def watcher_pid(self) -> int:
        pid = self.status()["watcher"]["pid"]
        assert pid, "no watcher process"
        return int(pid)

    def reload(self, text: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Rewrite the config (if given), SIGHUP, and wait for the READY=1 that ends the reload."""
        if text is not None:
            self.write_config(text)
        self.notify.poll()
        mark = len(self.notify.messages)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        reloading = self.notify.wait("RELOADING=1", timeout, after=mark)
        self.notify.wait("READY=1", timeout, after=reloading)

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError("watchd did not stop within the deadline") from None
        self.log.close()
        return self.proc.returncode

    def cleanup(self) -> None:
        for line in self.lines:
            line.close()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        with contextlib.suppress(Exception):
            self.log.close()
        self.notify.close()


def run_watchd(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`python -m watchd ARGS` to its end, its output captured as text; kwargs go to
    subprocess.run (env, cwd, preexec_fn, timeout: 30 s unless given)."""
    kwargs.setdefault("timeout", 30)
    return subprocess.run([sys.executable, "-m", "watchd", *args], capture_output=True,
                          text=True, check=False, **kwargs)


@contextlib.contextmanager
def short_tmpdir() -> Iterator[str]:
    """A directory under /tmp: socket paths must stay under 108 bytes."""
    path = tempfile.mkdtemp(prefix="wd.", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def config(socket_line: str = 'socket = "@SOCKET@"', daemon_extra: str = "",
           watches: str = "") -> str:
    return f"[daemon]\n{socket_line}\n{daemon_extra}\n{watches}"


def watch(name: str, path: str | Path, **keys: Any) -> str:
    lines = ["[[watch]]", f"name = {json.dumps(name)}", f"path = {json.dumps(str(path))}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def python_for_nobody() -> str:
    """An interpreter another user may run (ours may live under root's home)."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            probe = subprocess.run([candidate, "-c", "pass"], user=NOBODY, group=NOBODY,
                                   extra_groups=[], capture_output=True, check=False, cwd="/")
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    pytest.skip("no Python interpreter that the user nobody may run")
