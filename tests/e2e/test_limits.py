"""Connection slots, started lines and file descriptors: what one user may hold."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import NOBODY, REPO, config, python_for_nobody, run_watchd, wait_for, watch

pytestmark = pytest.mark.timeout(60)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")

# Runs as another user: opens N connections, prints the first line each gets, then holds them
# until stdin closes.
HOLDER = r"""
import socket, sys
path, n = sys.argv[1], int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    print(s.makefile("rb").readline().decode().strip(), flush=True)
    held.append(s)
sys.stdin.read()
"""


class Holder:
    """A process of another user holding connections."""

    def __init__(self, socket_path: str, uid: int, count: int) -> None:
        self.proc = subprocess.Popen(
            [python_for_nobody(), "-c", HOLDER, socket_path, str(count)],
            user=uid, group=uid, extra_groups=[], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, cwd="/")
        assert self.proc.stdout is not None
        self.first = [json.loads(self.proc.stdout.readline()) for _ in range(count)]

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(10)
        self.proc.stdout.close()


@as_root
def test_one_user_cannot_take_every_slot_and_root_always_gets_in(start_daemon, watched: Path,
                                                                 workdir: str) -> None:
    os.chmod(workdir, 0o755)
    d = start_daemon(config(daemon_extra='socket_mode = "0666"\nmax_clients = 3\n'
                                         "max_clients_per_user = 2",
                            watches=watch("w", watched)))
    holders = [Holder(d.socket, NOBODY, 3)]
    try:
        first = holders[0].first
        assert [m["type"] for m in first] == ["hello", "hello", "error"]
        assert first[2]["code"] == "too_many_clients"
        assert "daemon.max_clients_per_user" in first[2]["message"]
        holders.append(Holder(d.socket, NOBODY - 1, 1))  # the third slot
        assert holders[1].first[0]["type"] == "hello"
        holders.append(Holder(d.socket, NOBODY - 2, 1))
        refused = holders[2].first[0]
        assert refused["code"] == "too_many_clients"
        assert "daemon.max_clients" in refused["message"]
        # Every slot is taken by others: root still gets in.
        root = d.connect()
        assert root.request({"op": "ping"})["type"] == "pong"
    finally:
        for holder in holders:
            holder.close()


def test_a_started_line_must_be_finished_in_time(start_watching) -> None:
    d = start_watching("request_timeout = 0.5")
    idle = d.connect()
    slow = d.connect()
    start = time.monotonic()
    slow.send(b'{"op":')
    reply = slow.recv(timeout=10)
    assert reply["code"] == "request_timeout", reply
    assert "daemon.request_timeout" in reply["message"]
    assert time.monotonic() - start >= 0.5
    with pytest.raises(EOFError):
        slow.recv(timeout=10)
    # A connection that sends nothing has started no line: it stays.
    wait_for(lambda: time.monotonic() - start > 1.0, what="a second to pass")
    assert idle.request({"op": "ping"})["type"] == "pong"
    # A line finished in pieces within the deadline is served.
    idle.send(b'{"op":')
    idle.send(b'"ping"}\n')
    assert idle.recv()["type"] == "pong"


def _lowered_nofile(limit: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def test_check_refuses_max_clients_past_the_fd_limit(workdir: str) -> None:
    path = Path(workdir) / "watchd.toml"
    path.write_text(config(socket_line=f'socket = "{workdir}/w.sock"',
                           daemon_extra="max_clients = 1024"))
    result = run_watchd("--check", "--config", str(path), cwd=REPO,
                        preexec_fn=_lowered_nofile(500))
    assert result.returncode == 78, result
    assert "daemon.max_clients" in result.stderr
    assert "RLIMIT_NOFILE 500" in result.stderr
    ok = run_watchd("--check", "--config", str(path), cwd=REPO,
                    preexec_fn=_lowered_nofile(2000))
    assert ok.returncode == 0, ok.stderr


def open_files_limit(pid: int) -> tuple[int, int]:
    return resource.prlimit(pid, resource.RLIMIT_NOFILE)


def test_the_soft_fd_limit_is_raised_to_the_hard_one(start_watching) -> None:
    d = start_watching(shell_prefix="ulimit -Sn 1200")
    assert d.proc is not None
    soft, hard = open_files_limit(d.proc.pid)
    assert soft == hard > 1200


@as_root
def test_out_of_descriptors_is_logged_once_and_serving_resumes(start_watching) -> None:
    d = start_watching("max_clients = 10")
    assert d.proc is not None
    pid = d.proc.pid
    original = open_files_limit(pid)
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 2, original[1]))
    served = [d.connect() for _ in range(2)]
    waiting = [d.line() for _ in range(5)]  # queued in the backlog: accept fails
    d.wait_log("cannot accept new connections")
    # asyncio tries accept up to a hundred times in the callback that logged it (each failure
    # reported): a reply on a served connection comes after that callback is done.
    assert served[0].request({"op": "ping"})["type"] == "pong"
    log = d.log_text()
    assert log.count("cannot accept new connections") == 1, log[-3000:]
    assert "Traceback" not in log
    for line in served:
        line.close()
    resource.prlimit(pid, resource.RLIMIT_NOFILE, original)
    for line in waiting:
        assert line.recv(timeout=10)["type"] == "hello"
    assert "accepting connections again" in d.log_text()
