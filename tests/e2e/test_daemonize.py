"""`watchd --daemonize` as a classic detached daemon, logging to syslog or to a file.

A datagram socket of the test's own stands in for the syslog daemon's /dev/log (the
`--syslog-socket` option points the daemon at it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import REPO, Datagrams, Line, config, run_watchd, wait_for, watch

pytestmark = pytest.mark.timeout(60)

EX_CONFIG = 78
# <facility * 8 + severity>: LOG_DAEMON (3) with LOG_ERR (3) and LOG_INFO (6).
DAEMON_ERR = "<27>"
DAEMON_INFO = "<30>"


@pytest.fixture
def syslog(workdir: str) -> Iterator[Datagrams]:
    """A datagram socket standing in for /dev/log."""
    log = Datagrams(os.path.join(workdir, "log.sock"), "utf-8")
    yield log
    log.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "INVOCATION_ID", "JOURNAL_STREAM")}
    env.update(extra)
    return env


def _write_config(workdir: str, watched: Path) -> tuple[str, str]:
    sock = os.path.join(workdir, "d.sock")
    cfg = os.path.join(workdir, "d.toml")
    with open(cfg, "w") as f:
        f.write(config(socket_line=f'socket = "{sock}"', watches=watch("w", watched)))
    return cfg, sock


@contextlib.contextmanager
def daemonized(argv: list[str], pidfile: str, env: dict[str, str]) -> Iterator[int]:
    """Start `watchd --daemonize`; yields the daemon's pid; stops it at the end."""
    result = run_watchd("--daemonize", "--pidfile", pidfile, *argv, env=env)
    assert result.returncode == 0, result.stderr
    pid = int(wait_for(lambda: Path(pidfile).exists() and Path(pidfile).read_text().strip(),
                       what="the pid file"))
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the daemon to exit")


def _connect(sock: str) -> Line:
    def connectable() -> Line | None:
        try:
            return Line(sock)
        except OSError:
            return None  # not created yet, or bound but not yet listening
    line: Line = wait_for(connectable, what="the daemon's socket")
    return line


def test_daemonized_without_log_file_serves_and_logs_to_syslog(
        workdir: str, watched: Path, syslog: Datagrams) -> None:
    cfg, sock = _write_config(workdir, watched)
    pidfile = os.path.join(workdir, "d.pid")
    argv = ["--config", cfg, "--syslog-socket", syslog.path, "--log-level", "debug"]
    with daemonized(argv, pidfile, _env()) as pid:
        with contextlib.closing(_connect(sock)) as line:
            hello = line.recv(timeout=20)
            assert hello["type"] == "hello" and hello["pid"] == pid
            reply = line.request({"op": "subscribe", "id": 1})
            assert reply["type"] == "subscribed", reply
            (watched / "hello.txt").write_text("hi")
            line.until(lambda m: m.get("type") == "event"
                       and m.get("path") == str(watched / "hello.txt"))
        ready = syslog.wait_match(r"watchd\[\d+\]: .*ready on ", timeout=20)
        assert ready.startswith(DAEMON_INFO), ready
        # The watcher's own log lines reach the same place.
        syslog.wait_match(r"watchd\.watcher", timeout=20)
        assert not [m for m in syslog.messages if "exited with status" in m]


def test_a_watcher_that_cannot_start_says_why_in_syslog(
        workdir: str, watched: Path, syslog: Datagrams) -> None:
    # A copy of the package that the test can break under the running daemon, as an upgrade
    # gone wrong would: the daemon has its modules loaded, each new watcher imports afresh.
    package = Path(workdir) / "pkg"
    shutil.copytree(REPO / "watchd", package / "watchd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    cfg, sock = _write_config(workdir, watched)
    pidfile = os.path.join(workdir, "d.pid")
    env = _env(PYTHONPATH=str(package), PYTHONDONTWRITEBYTECODE="1")
    with daemonized(["--config", cfg, "--syslog-socket", syslog.path], pidfile, env):
        with contextlib.closing(_connect(sock)) as line:
            line.recv(timeout=20)  # hello: the first watcher is running
            watcher = int(line.request({"op": "status"})["watcher"]["pid"])
        with open(package / "watchd" / "watcher.py", "a") as f:
            f.write("\ndef broken(:\n")
        os.kill(watcher, signal.SIGKILL)
        why = syslog.wait_match(r"SyntaxError", timeout=20)
        assert why.startswith(DAEMON_ERR), why
        assert "watcher" in why
        syslog.wait_match(r"exited with status 1", timeout=20)


def test_daemonize_without_syslog_or_log_file_is_refused(workdir: str, watched: Path) -> None:
    cfg, _ = _write_config(workdir, watched)
    pidfile = os.path.join(workdir, "d.pid")
    missing = os.path.join(workdir, "no-such-log.sock")
    result = run_watchd("--daemonize", "--pidfile", pidfile, "--config", cfg,
                        "--syslog-socket", missing, env=_env())
    assert result.returncode == EX_CONFIG, result.stderr
    assert missing in result.stderr and "--log-file" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(pidfile)  # refused before detaching


@pytest.mark.skipif(os.path.exists("/dev/log"), reason="needs a host without /dev/log")
def test_daemonize_refused_by_default_on_a_host_without_syslog(
        workdir: str, watched: Path) -> None:
    cfg, _ = _write_config(workdir, watched)
    pidfile = os.path.join(workdir, "d.pid")
    result = run_watchd("--daemonize", "--pidfile", pidfile, "--config", cfg, env=_env())
    assert result.returncode == EX_CONFIG, result.stderr
    assert "/dev/log" in result.stderr and "--log-file" in result.stderr, result.stderr
    assert not os.path.exists(pidfile)


def test_a_syslog_that_stops_reading_does_not_stall_clients(
        workdir: str, watched: Path, syslog: Datagrams) -> None:
    cfg, sock = _write_config(workdir, watched)
    pidfile = os.path.join(workdir, "d.pid")
    argv = ["--config", cfg, "--syslog-socket", syslog.path, "--log-level", "debug"]
    with daemonized(argv, pidfile, _env()) as pid, contextlib.closing(_connect(sock)) as line:
        line.recv(timeout=20)
        syslog.wait_match(r"ready on ", timeout=20)
        # The syslog daemon stops reading: its queue fills up (a sender of ours fills it).
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    filler.sendto(b"<30>filler", syslog.path)
            # Reloads log several lines each; the daemon still answers and applies them.
            for reloads in (1, 2, 3):
                os.kill(pid, signal.SIGHUP)
                wait_for(lambda n=reloads: line.request({"op": "status"}, timeout=5)[
                    "reloads"] == n, what=f"reload {reloads}")
            assert line.request({"op": "ping"}, timeout=5)["type"] == "pong"
        # Reading again, syslog hears that lines were lost (with the next line logged).
        syslog.poll()
        os.kill(pid, signal.SIGHUP)
        dropped = syslog.wait_match(r"\d+ log line\(s\) dropped", timeout=20)
        assert dropped.startswith("<28>"), dropped  # LOG_DAEMON, LOG_WARNING
