"""What one local user can do to the daemon's other clients: never stall them, never make it
grow past its configured bounds."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.harness import NOBODY, Daemon, Line, python_for_nobody, wait_for

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024


def rss(daemon: Daemon) -> int:
    """The daemon's resident set size in bytes."""
    assert daemon.proc is not None
    with open(f"/proc/{daemon.proc.pid}/status") as f:
        for row in f:
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def cpu_seconds(daemon: Daemon) -> float:
    """CPU time the daemon process has used (user and system)."""
    assert daemon.proc is not None
    with open(f"/proc/{daemon.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_files(daemon: Daemon, directory: Path, count: int, first: int = 0) -> None:
    """Files first..count-1, each made and closed: a create and a close_write event."""
    for i in range(first, count):
        fd = os.open(directory / f"f{i:05}", os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
        if i % 500 == 0:
            # The daemon's STATUS= lines go to our stand-in for systemd's socket: read them, as
            # systemd would, or a slow run fills its queue and the daemon's send blocks.
            daemon.notify.poll()


def overflowed(what: object) -> NoReturn:
    """Fail, naming the cause, when the kernel's inotify queue overflowed in a test that needs
    every event, instead of waiting out a deadline for a seq that a resync numbered otherwise.

    The queue's size is fs.inotify.max_queued_events when the watcher made its inotify instance.
    At the default (16384) the 5000 events of the test below fit in it even unread, so an
    overflow there means that limit was lowered by something else on the machine (it is global)
    while the daemon started."""
    queue = Path("/proc/sys/fs/inotify/max_queued_events").read_text().strip()
    raise AssertionError(f"the kernel's inotify queue overflowed (fs.inotify.max_queued_events "
                         f"is {queue} now): not every event can be delivered; {what}")


def events_held(daemon: Daemon, count: int, timeout: float) -> None:
    """Wait until the daemon has numbered `count` events; fail at once on an overflow."""
    def done() -> bool:
        daemon.notify.poll()  # see make_files
        status = daemon.status()
        if status["overflows"]:
            overflowed(status)
        return bool(status["seq"] >= count)
    wait_for(done, timeout=timeout, what=f"{count} events held")


def ping_times(daemon: Daemon, seconds: float) -> list[float]:
    """How long each ping of a fresh client took, pinging for `seconds`."""
    line = daemon.connect()
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        daemon.notify.poll()  # see make_files
        start = time.monotonic()
        reply = line.request({"op": "ping"}, timeout=30)
        times.append(time.monotonic() - start)
        assert reply["type"] == "pong", reply
    return times


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def raw_connect(daemon: Daemon) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(daemon.socket)
    # A small receive buffer: what the daemon writes for it backs up on the daemon's side.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


def test_replays_to_a_client_that_never_reads_are_bounded(start_watching, watched: Path) -> None:
    files = 25_000
    d = start_watching()
    make_files(d, watched, files)
    wait_for(lambda: d.notify.poll() or d.status()["seq"] >= 2 * files, timeout=60,
             what="every event held")
    before = rss(d)
    greedy = [raw_connect(d) for _ in range(5)]
    for sock in greedy:
        sock.sendall(b"".join(json.dumps({"op": "subscribe", "id": i, "since": 0}).encode()
                              + b"\n" for i in range(64)))
    times = ping_times(d, 2.0)
    grown = rss(d) - before
    print(f"ping p90 {quantile(times, 0.9):.4f} s, max {max(times):.4f} s; "
          f"grown {grown / MiB:.1f} MiB")
    # Without a bound: 5 x 64 replays of 50,000 lines (~14 MB each) buffered at once.
    assert grown < 64 * MiB, f"the daemon grew by {grown / MiB:.0f} MiB"
    assert quantile(times, 0.9) < 0.1, sorted(times)[-5:]
    assert max(times) < 2.0, sorted(times)[-5:]  # a loaded machine may stall anyone once
    for sock in greedy:
        sock.close()


def drain(line: Line, sids: set[str], last: int, timeout: float = 60) -> dict[str, list[Any]]:
    """Everything each subscription receives until each has accounted for seq `last`."""
    got: dict[str, list[Any]] = {sid: [] for sid in sids}
    reached: set[str] = set()
    deadline = time.monotonic() + timeout
    while reached != sids:
        msg = (line.pushed.pop(0) if line.pushed
               else line.recv(max(0.01, deadline - time.monotonic())))
        sid = msg.get("subscription")
        if sid not in got:
            continue
        if msg["type"] == "overflow":
            # Without this, the seqs a resync numbers instead would leave `last` never reached.
            overflowed(msg)
        got[sid].append(msg)
        if msg.get("seq", msg.get("last_seq")) == last:
            reached.add(sid)
    return got


def test_a_replay_read_slowly_delivers_each_event_once_in_order(start_watching,
                                                               watched: Path) -> None:
    d = start_watching("client_queue = 100")
    make_files(d, watched, 2000)
    events_held(d, 4000, timeout=30)
    line = d.connect()
    line.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sids = set()
    for i in range(4):
        line.send({"op": "subscribe", "id": i, "since": 0})
        while "subscription" not in (reply := line.recv()) or reply["type"] != "subscribed":
            line.pushed.append(reply)  # replayed events of the subscriptions before it
        sids.add(reply["subscription"])
    # Live events while the replays are under way.
    make_files(d, watched, 2500, first=2000)
    last = 5000
    got = drain(line, sids, last)
    for sid, msgs in got.items():
        seen: list[int] = []
        for msg in msgs:
            if msg["type"] == "event":
                seen.append(msg["seq"])
            elif msg["type"] == "dropped":
                seen.extend(range(msg["first_seq"], msg["last_seq"] + 1))
                again, _ = d.subscribe(since=msg["first_seq"] - 1)
                resent = again.until(lambda m, msg=msg: m.get("seq") == msg["last_seq"])
                assert [m["seq"] for m in resent if m["type"] == "event"][:msg["count"]] == \
                    list(range(msg["first_seq"], msg["last_seq"] + 1))
        assert seen == list(range(1, last + 1)), sid


def flood(daemon: Daemon, conns: int, payload: bytes) -> list[socket.socket]:
    """conns connections that each write payload (in a thread: it blocks once the daemon stops
    reading) and never read."""
    socks = [raw_connect(daemon) for _ in range(conns)]

    def send(sock: socket.socket) -> None:
        sock.settimeout(30)
        with contextlib.suppress(OSError):
            sock.sendall(payload)

    for sock in socks:
        threading.Thread(target=send, args=(sock,), daemon=True).start()
    return socks


def test_requests_from_clients_that_never_read_stall_nobody(start_watching) -> None:
    d = start_watching()
    before = rss(d)
    status = b'{"op":"status"}\n'
    socks = flood(d, 45, status * (233_000 // len(status)))
    times = ping_times(d, 2.0)
    grown = rss(d) - before
    print(f"ping p90 {quantile(times, 0.9):.4f} s, max {max(times):.4f} s; "
          f"grown {grown / MiB:.1f} MiB")
    for sock in socks:
        sock.close()
    # Without a bound: some 400 MB of status replies queued for readers that never read.
    assert grown < 64 * MiB, f"the daemon grew by {grown / MiB:.0f} MiB"
    assert quantile(times, 0.9) < 0.1, sorted(times)[-5:]
    assert max(times) < 2.0, sorted(times)[-5:]  # a loaded machine may stall anyone once


def expensive_subscriptions(line: Line, count: int, patterns: int, paths: int,
                            root: Path) -> None:
    """count subscriptions, each with its own patterns and paths, none of them matching."""
    for i in range(count):
        req: dict[str, Any] = {"op": "subscribe", "id": i}
        if patterns:
            req["glob"] = [f"*{i:02}{j:04}*x?y[ab]*z*" for j in range(patterns)]
        if paths:
            req["paths"] = [f"{root}/nowhere{i:02}/{j:04}" for j in range(paths)]
        reply = line.request(req, timeout=30)
        assert reply["type"] == "subscribed", reply


def event_latencies(d: Daemon, directory: Path, count: int) -> list[float]:
    """For `count` files made one by one: how long after the watcher read each event a
    subscriber without filters received it."""
    victim, _ = d.subscribe()
    late = []
    for i in range(count):
        (directory / f"probe{i:04}").touch()
        msg = victim.until(lambda m: m.get("type") == "event" and m["kind"] == "create")[-1]
        late.append(time.time() - msg["time"])
    return late


def test_expensive_filters_at_the_caps_slow_no_one(start_watching, watched: Path) -> None:
    d = start_watching(events=["create"])
    for _ in range(3):  # the default caps: 64 subscriptions of 64 patterns and 256 paths
        expensive_subscriptions(d.connect(), 64, 64, 256, watched)
    cpu_before = cpu_seconds(d)
    late = event_latencies(d, watched, 300)
    cpu = (cpu_seconds(d) - cpu_before) / 300
    print(f"event latency beside 3 x 64 subscriptions at the caps: "
          f"p50 {quantile(late, 0.5):.4f} s, p99 {quantile(late, 0.99):.4f} s; "
          f"daemon CPU {cpu * 1000:.2f} ms per event")
    # The target is a p99 under 10 ms (met on a quiet machine, see the figures printed); on
    # a loaded one any process may wait that long now and then. What the daemon spends on
    # each event does not depend on the load: that is held to a fifth of the target (it was
    # some 6 ms with one regex per subscription), the latency only to what a load allows.
    assert cpu < 0.002, f"{cpu * 1000:.2f} ms of CPU per event"
    assert quantile(late, 0.5) < 0.01, sorted(late)[len(late) // 2 - 2:len(late) // 2 + 3]
    assert quantile(late, 0.99) < 0.1, sorted(late)[-5:]


def test_filters_past_the_caps_are_refused(start_watching) -> None:
    d = start_watching("max_patterns = 4\nmax_paths = 2")
    line = d.connect()
    reply = line.request({"op": "subscribe", "id": 1, "glob": ["a*"] * 5})
    assert (reply["type"], reply["code"]) == ("error", "bad_request")
    assert "daemon.max_patterns" in reply["message"]
    reply = line.request({"op": "subscribe", "id": 2, "paths": ["/a", "/b", "/c"]})
    assert (reply["type"], reply["code"]) == ("error", "bad_request")
    assert "daemon.max_paths" in reply["message"]
    reply = line.request({"op": "subscribe", "id": 3, "glob": ["a*"] * 4, "paths": ["/a", "/b"]})
    assert reply["type"] == "subscribed"


# Runs as another user: floods subscribes with many patterns of its own on each of N
# connections, never reads, and holds them until stdin closes.
FLOODER = r"""
import json, socket, sys, threading
path, conns, patterns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def flood(k):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b"".join(json.dumps({"op": "subscribe", "id": i, "glob": [
        f"*{k}-{i:02}{j:04}*x?y[ab]*z*" for j in range(patterns)]}).encode() + b"\n"
        for i in range(64)))
    held.append(s)
held = []
threads = [threading.Thread(target=flood, args=(k,), daemon=True) for k in range(conns)]
for t in threads:
    t.start()
print("FLOODING", flush=True)
sys.stdin.read()
"""

# Runs as another user: pings for a while and prints how long each answer took.
PINGER = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(sys.argv[1])
f = s.makefile("rb")
f.readline()
times, end = [], time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    start = time.monotonic()
    s.sendall(b'{"op":"ping"}\n')
    assert json.loads(f.readline())["type"] == "pong"
    times.append(time.monotonic() - start)
print(json.dumps(times))
"""


def run_as(uid: int, script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([python_for_nobody(), "-c", script, *args], user=uid, group=uid,
                            extra_groups=[], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd="/")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run clients as other users")
def test_costly_subscribes_on_many_connections_stall_no_other_user(start_watching,
                                                                  workdir: str) -> None:
    os.chmod(workdir, 0o755)
    d = start_watching('socket_mode = "0666"')
    # The same pings first without the flood: on a loaded machine every answer is slower, and
    # what is asserted is that the flood adds no stall of its own on top of that.
    quiet, _ = run_as(NOBODY - 1, PINGER, d.socket, "1").communicate(timeout=60)
    usual = quantile(json.loads(quiet), 0.9)
    flooder = run_as(NOBODY, FLOODER, d.socket, "6", "64")
    assert flooder.stdout is not None and flooder.stdin is not None
    assert flooder.stdout.readline().strip() == "FLOODING"
    pinger = run_as(NOBODY - 1, PINGER, d.socket, "3")
    out, _ = pinger.communicate(timeout=60)
    times = json.loads(out)
    flooder.stdin.close()
    flooder.wait(10)
    flooder.stdout.close()
    print(f"ping p90 {quantile(times, 0.9):.4f} s (without the flood {usual:.4f} s), "
          f"max {max(times):.4f} s, {len(times)} pings")
    assert quantile(times, 0.9) < max(0.1, 4 * usual), (usual, sorted(times)[-5:])
    assert max(times) < 2.0, sorted(times)[-5:]  # a loaded machine may stall anyone once
