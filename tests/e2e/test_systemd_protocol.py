"""The daemon's side of the systemd protocols, with a datagram socket standing in for systemd."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import Daemon, Line, config, run_watchd, wait_for, watch

pytestmark = pytest.mark.timeout(60)


def fields(message: str) -> list[str]:
    return message.split("\n")


def test_ready_only_after_watches_and_socket(start_watching, watched: Path) -> None:
    for i in range(200):
        (watched / f"d{i}").mkdir()
    daemon = start_watching()
    # At READY the socket accepts and every directory is watched: a file created right away in
    # the deepest directory is reported.
    line, _ = daemon.subscribe()
    (watched / "d199" / "f").touch()
    line.until(lambda m: m.get("path") == str(watched / "d199" / "f"))
    ready = next(m for m in daemon.notify.messages if "READY=1" in fields(m))
    status = [f for f in fields(ready) if f.startswith("STATUS=")]
    assert status and "201 directories" in status[0]


def test_reload_sends_reloading_with_monotonic_then_ready(start_watching) -> None:
    daemon = start_watching()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.reload()
    daemon.notify.poll()
    msgs = daemon.notify.messages
    i = next(i for i, m in enumerate(msgs) if "RELOADING=1" in fields(m))
    reloading = fields(msgs[i])
    stamp = next(f for f in reloading if f.startswith("MONOTONIC_USEC="))
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= int(stamp.split("=")[1]) <= after  # one datagram, CLOCK_MONOTONIC in µs
    assert any("READY=1" in fields(m) for m in msgs[i + 1:])


def test_refused_reload_still_ends_with_ready(start_watching) -> None:
    daemon = start_watching()
    daemon.reload("this is = = not toml")
    last = next(m for m in reversed(daemon.notify.messages) if "READY=1" in fields(m))
    assert any(f.startswith("STATUS=") and "refused" in f for f in fields(last))


def test_stopping(start_watching) -> None:
    daemon = start_watching()
    assert daemon.stop() == 0
    daemon.notify.poll()
    assert any("STOPPING=1" in fields(m) for m in daemon.notify.messages)


def test_status_is_ascii_even_for_non_latin1_paths(workdir: str, watched: Path) -> None:
    # The configuration lives under a non-Latin-1 name: the STATUS= of a refused reload names
    # that file, and so does the status line of every tick after it.
    home = Path(workdir) / "写真"
    home.mkdir()
    daemon = Daemon(str(home), config(watches=watch("w", watched)))
    try:
        daemon.start()
        daemon.reload("this is not = = toml")
        escaped = str(home).replace("写真", "\\u5199\\u771f")
        refused = daemon.notify.wait_for_text(f"reload refused: {escaped}/watchd.toml: ")
        daemon.notify.wait_for_text(f"last reload failed: {escaped}/watchd.toml: ")
        assert "READY=1" in fields(refused)
        # Each datagram is one line per field, plain ASCII (the harness decodes latin-1).
        for m in daemon.notify.messages:
            m.encode("ascii")
            assert all("=" in f for f in fields(m)), m
    finally:
        daemon.cleanup()


def test_watchdog_cadence_with_our_pid(start_watching) -> None:
    daemon = start_watching(env={"WATCHDOG_USEC": "600000"}, shell_prefix="export WATCHDOG_PID=$$")
    stamps: list[float] = []

    def collect() -> bool:
        daemon.notify.sock.setblocking(False)
        try:
            data = daemon.notify.sock.recv(65536).decode()
        except BlockingIOError:
            return False
        if "WATCHDOG=1" in fields(data):
            stamps.append(time.monotonic())
        return len(stamps) >= 6
    wait_for(collect, timeout=10, interval=0.005, what="six watchdog pings")
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) <= 0.3 + 0.1  # at least every WATCHDOG_USEC/2, with scheduling slack


def test_no_watchdog_for_another_pid(start_watching) -> None:
    daemon = start_watching(env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    daemon.reload()  # a full round trip through the loop, after several watchdog periods
    time_limit = time.monotonic() + 1.0
    wait_for(lambda: time.monotonic() > time_limit, what="a second of running")
    daemon.notify.poll()
    assert not any("WATCHDOG=1" in fields(m) for m in daemon.notify.messages)


def test_hung_watcher_stops_the_watchdog(start_watching) -> None:
    daemon = start_watching("watcher_timeout = 30", env={"WATCHDOG_USEC": "400000"},
                            shell_prefix="export WATCHDOG_PID=$$")
    os.kill(daemon.watcher_pid(), signal.SIGSTOP)
    # Once the watcher has been silent a few seconds, pings stop.
    last = {"t": time.monotonic()}

    def quiet_for_two_seconds() -> bool:
        daemon.notify.sock.setblocking(False)
        while True:
            try:
                data = daemon.notify.sock.recv(65536).decode()
            except BlockingIOError:
                break
            if "WATCHDOG=1" in fields(data):
                last["t"] = time.monotonic()
        return time.monotonic() - last["t"] > 2.0
    wait_for(quiet_for_two_seconds, timeout=15, what="watchdog pings to stop")


def test_watcher_environment_has_no_systemd_variables(start_watching) -> None:
    daemon = start_watching(env={"WATCHDOG_USEC": "5000000"},
                            shell_prefix="export WATCHDOG_PID=$$")
    with open(f"/proc/{daemon.watcher_pid()}/environ", "rb") as f:
        env = f.read().split(b"\0")
    names = {e.split(b"=")[0] for e in env}
    assert not names & {b"NOTIFY_SOCKET", b"WATCHDOG_USEC", b"WATCHDOG_PID", b"LISTEN_FDS",
                        b"LISTEN_PID", b"LISTEN_FDNAMES"}


def test_socket_activation(start_daemon, watched: Path, workdir: str) -> None:
    path = os.path.join(workdir, "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    fd = listener.fileno()
    prefix = (f"exec 3<&{fd} {fd}<&-\n"
              "export LISTEN_FDS=1 LISTEN_PID=$$ LISTEN_FDNAMES=watchd.socket")
    daemon = start_daemon(config(socket_line='socket = "/nonexistent/dir/ignored.sock"',
                                 watches=watch("w", watched)),
                          shell_prefix=prefix, pass_fds=(fd,))
    listener.close()  # only the daemon holds it now
    line = daemon.line(path)
    assert line.recv()["type"] == "hello"
    assert line.request({"op": "ping"})["type"] == "pong"
    line.close()
    assert daemon.stop() == 0
    assert os.path.exists(path)  # systemd owns the file: never unlinked by the daemon
    assert "(from systemd)" in daemon.log_text()


def test_journal_stream_logging_has_priorities(start_watching) -> None:
    daemon = start_watching(shell_prefix='export JOURNAL_STREAM='
                                         '"$(stat -L -c %d:%i /proc/self/fd/2)"')
    assert daemon.stop() == 0
    lines = [x for x in daemon.log_text().splitlines() if x.strip()]
    assert lines and all(re.match(r"<[3467]>", x) for x in lines), lines[:5]


def test_a_crashing_watchers_stack_reaches_the_journal_at_error_priority(
        start_watching) -> None:
    daemon = start_watching(shell_prefix='export JOURNAL_STREAM='
                                         '"$(stat -L -c %d:%i /proc/self/fd/2)"')
    pid = daemon.watcher_pid()
    os.kill(pid, signal.SIGSEGV)
    daemon.wait_log(f"watcher process {pid} was killed by SIGSEGV")
    lines = daemon.log_text().splitlines()
    stack = [x for x in lines if f"watcher process {pid}: " in x]
    assert any("Fatal Python error: Segmentation fault" in x for x in stack), lines[-20:]
    assert any('File "' in x and "watcher.py" in x for x in stack), stack
    assert all(x.startswith("<3>watchd.watcher: ") for x in stack), stack


@pytest.mark.parametrize("journal", [True, False])
def test_check_errors_are_at_error_priority_in_the_journal(workdir: str, journal: bool) -> None:
    # ExecReload= runs --check: its refusal must pass `journalctl -p warning`.
    cfg = os.path.join(workdir, "bad.toml")
    with open(cfg, "w") as f:
        f.write("[daemon\n")
    err = os.path.join(workdir, "stderr")
    with open(err, "wb") as stream:
        stat = os.fstat(stream.fileno())
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
        if journal:
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
        result = subprocess.run([sys.executable, "-m", "watchd", "--check", "--config", cfg],
                                env=env, stdout=subprocess.PIPE, stderr=stream, timeout=30)
    assert result.returncode == 78
    lines = Path(err).read_text().splitlines()
    assert lines and lines[0].startswith(
        ("<3>" if journal else "") + f"watchd: invalid configuration: {cfg}: "), lines
    assert all(line.startswith("<3>") for line in lines) == journal


def test_daemonize(workdir: str, watched: Path) -> None:
    sock = os.path.join(workdir, "d.sock")
    cfg = os.path.join(workdir, "d.toml")
    pidfile = os.path.join(workdir, "d.pid")
    logfile = os.path.join(workdir, "d.log")
    with open(cfg, "w") as f:
        f.write(config(socket_line=f'socket = "{sock}"', watches=watch("w", watched)))
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "INVOCATION_ID", "JOURNAL_STREAM")}
    # A stale pid file (its process gone) does not stop a start.
    with open(pidfile, "w") as f:
        f.write("999999\n")
    result = run_watchd("--daemonize", "--pidfile", pidfile, "--log-file", logfile,
                        "--config", cfg, env=env)
    assert result.returncode == 0, result.stderr
    def new_pid() -> int | None:
        try:
            text = Path(pidfile).read_text().strip()
        except FileNotFoundError:
            return None  # between the stale file's removal and the new one
        return int(text) if text and text != "999999" else None
    pid = int(wait_for(new_pid, what="the pid file"))
    try:
        def connectable() -> bool:
            try:
                with contextlib.closing(Line(sock)):
                    return True
            except OSError:
                return False  # not created yet, or bound but not yet listening
        wait_for(connectable, what="the daemon's socket")
        with contextlib.closing(Line(sock)) as line:
            assert line.recv()["pid"] == pid
        # SIGHUP reloads as in the foreground.
        os.kill(pid, signal.SIGHUP)
        def reloads() -> int:
            with contextlib.closing(Line(sock)) as probe:
                probe.recv()  # hello
                return int(probe.request({"op": "status"})["reloads"])
        wait_for(lambda: reloads() == 1, what="a reload")
        # A second start is refused while it runs.
        again = run_watchd("--daemonize", "--pidfile", pidfile, "--config", cfg, env=env)
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not os.path.exists(pidfile), what="the pid file to go")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the daemon to exit")
    assert "reload" in Path(logfile).read_text()


def test_daemonize_refused_under_systemd(workdir: str, watched: Path) -> None:
    cfg = os.path.join(workdir, "d.toml")
    with open(cfg, "w") as f:
        f.write(config(socket_line=f'socket = "{workdir}/x.sock"', watches=watch("w", watched)))
    result = run_watchd("--daemonize", "--pidfile", os.path.join(workdir, "p"), "--config", cfg,
                        env=dict(os.environ, INVOCATION_ID="abc"))
    assert result.returncode != 0 and "systemd" in result.stderr


def test_a_long_scan_reports_progress_before_ready(start_watching, watched: Path) -> None:
    for i in range(100):
        for j in range(90):
            os.makedirs(watched / f"a{i}" / f"b{j}")
    daemon = start_watching()
    msgs = daemon.notify.messages
    ready = next(i for i, m in enumerate(msgs) if "READY=1" in fields(m))
    progress = [m for m in msgs[:ready] if "STATUS=Establishing watches" in m]
    assert progress, msgs[:ready]
    assert all(f"EXTEND_TIMEOUT_USEC={30_000_000}" in fields(m) for m in progress)
    # The count is what the watcher has reported so far: on a loaded machine the first tick
    # may come before its first report (0), never more than the tree holds, never going back.
    counts = [int(m.split("Establishing watches: ")[1].split()[0]) for m in progress]
    assert counts == sorted(counts) and counts[-1] <= 9101, counts
