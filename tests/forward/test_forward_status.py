"""The forwarders in `status` and in `watchctl status`, and a reload applied by difference."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon, config, wait_for, watch
from tests.nats_server import NatsServer, nats_server
from watchd.watchctl import format_status

pytest.importorskip("nats")


def test_watchctl_status_shows_each_forwarder() -> None:
    status = {"watches": [], "forwarders": [
        {"name": "central", "type": "nats", "connected": True, "server": "nats://n1:4222",
         "last_acked_seq": 1830, "lag": 0, "last_error": None},
        {"name": "backup", "type": "nats", "connected": False, "server": None,
         "last_acked_seq": None, "lag": 12,
         "last_error": "cannot reach the NATS server: [Errno 111] Connection refused"},
    ]}
    lines = format_status(status, {})
    at = lines.index("forwarders: 2")
    assert lines[at + 1:] == [
        "  central  nats  connected to nats://n1:4222, acknowledged up to seq 1830, lag 0 events",
        "  backup   nats  not connected, acknowledged up to seq None, lag 12 events",
        "           last error: cannot reach the NATS server: [Errno 111] Connection refused",
    ]


def test_no_forwarders_no_lines() -> None:
    assert not any("forwarders" in line for line in format_status({"forwarders": []}, {}))


@pytest.fixture
def nats(workdir: str) -> Iterator[NatsServer]:
    with nats_server(workdir) as server:
        yield server


def forward(name: str, url: str, **keys: str) -> str:
    extra = "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    return (f'[[forward]]\nname = "{name}"\ntype = "nats"\nurl = "{url}"\n'
            f"create_stream = true\n{extra}")


def forward_pids(daemon: Daemon) -> set[int]:
    """The daemon's forwarder children."""
    assert daemon.proc is not None
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if ppid == daemon.proc.pid and b"watchd.forward" in cmdline:
            found.add(int(entry))
    return found


def by_name(daemon: Daemon) -> dict[str, dict[str, object]]:
    return {f["name"]: f for f in daemon.status()["forwarders"]}


def test_a_reload_applies_forwarders_by_difference(
        start_daemon: Callable[..., Daemon], watched: Path, nats: NatsServer) -> None:
    base = config(watches=watch("up", watched))
    daemon = start_daemon(base + forward("a", nats.url) + forward("b", nats.url))
    wait_for(lambda: all(f["connected"] for f in by_name(daemon).values()), 20.0,
             "both connected")
    before = wait_for(lambda: len(p := forward_pids(daemon)) == 2 and p, 10.0, "2 children")
    # a unchanged, b changed, c new
    daemon.reload(base + forward("a", nats.url) + forward("b", nats.url, stream="OTHER",
                                                                    subject="o.{host}.{watch}")
                  + forward("c", nats.url))
    wait_for(lambda: set(by_name(daemon)) == {"a", "b", "c"} and all(
        f["connected"] for f in by_name(daemon).values()), 20.0,
        f"a, b and c connected: {by_name(daemon)}")
    # The new b made its stream before it reported connected (the old b, still stopping, is
    # not reported connected: its stream is the old one). Its log line may come a moment
    # after its status; it must be awaited before b is removed, which can stop a b that is
    # making its stream before it says so.
    daemon.wait_log("created stream OTHER", timeout=30.0)
    # a keeps its process; b's is replaced (the old one may still be stopping for a moment)
    after = wait_for(lambda: len(p := forward_pids(daemon)) == 3 and len(p & before) == 1 and p,
                     10.0, "a's process, and new ones for b and c")
    daemon.reload(base + forward("a", nats.url))
    wait_for(lambda: forward_pids(daemon) == before & after, 10.0, "only a left")
    assert set(by_name(daemon)) == {"a"}


def test_another_user_is_not_shown_the_forwarders(
        start_daemon: Callable[..., Daemon], watched: Path, nats: NatsServer,
        workdir: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the status of another user")
    from tests.harness import Line

    os.chmod(workdir, 0o755)
    daemon = start_daemon(config(daemon_extra='socket_mode = "0666"', watches=watch(
        "up", watched)) + forward("a", nats.url))
    assert by_name(daemon)["a"]["name"] == "a"
    pid = os.fork()
    if pid == 0:  # as nobody: the limited view
        try:
            os.setgid(65534)
            os.setuid(65534)
            line = Line(daemon.socket)
            line.recv()
            reply = line.request({"op": "status"})
            os._exit(0 if reply["view"] == "limited" and reply["forwarders"] == [] else 1)
        except BaseException:
            os._exit(2)
    _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == 0
