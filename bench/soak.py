#!/usr/bin/env python3
"""Soak test: many clients, file churn, reloads and watcher kills, for a configurable time.

Clients: fast ones that read everything, slow ones that read in rare gulps (and so get
`dropped` notices), and reconnecting ones that hang up now and then and come back with
`since`. Meanwhile files are created, written and deleted continuously, the daemon gets a
SIGHUP every few seconds and its watcher process a SIGKILL every minute.

Every client's stream is checked: each seq from its subscription on is either delivered or
inside a `dropped` range (or, after a reconnection, replayed); a seq that is neither is an event
lost without notice, and must never happen. The daemon's memory and open fds are sampled to
show they stay flat.

    .venv/bin/python bench/soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stream:
    """One client's view: what it was sent and what it was told it missed."""

    kind: str  # fast | slow | reconnect
    path: str
    sock: socket.socket | None = None
    buf: bytes = b""
    instance: str = ""
    start_seq: int = 0  # seqs after this are owed to us
    seen: set[int] = field(default_factory=set)
    dropped: int = 0
    overflows: int = 0
    expired: int = 0
    next_pause: float = 0.0
    last_seq: int = 0
    end_seen: float | None = None  # when the end marker's event arrived (monotonic)

    def connect(self, since: int | None) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30)
        s.connect(self.path)
        self.sock, self.buf = s, b""
        hello = json.loads(self.line())
        request: dict[str, object] = {"op": "subscribe", "id": 1}
        if since is not None:
            request.update(since=since, instance=hello["instance"])
        s.sendall(json.dumps(request).encode() + b"\n")
        reply = json.loads(self.line())
        if reply["type"] == "error" and reply["code"] == "since_expired":
            # Told, not silent: the gap is announced; start over from now.
            self.expired += 1
            s.sendall(b'{"op":"subscribe","id":2}\n')
            reply = json.loads(self.line())
            self.start_seq, self.seen = reply["seq"], set()
        elif since is None:
            self.start_seq = reply["seq"]
        s.setblocking(False)
        self.instance = hello["instance"]

    def line(self) -> bytes:
        """One line during the handshake (blocking); what follows stays in buf."""
        assert self.sock is not None
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("watchd closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def handle(self, line: bytes) -> None:
        msg = json.loads(line)
        t = msg["type"]
        if t == "event":
            if self.end_seen is None and msg["path"].endswith("/soak-end"):
                self.end_seen = time.monotonic()
            self.seen.add(msg["seq"])
            self.last_seq = max(self.last_seq, msg["seq"])
        elif t == "dropped":
            self.dropped += msg["count"]
            self.seen.update(range(msg["first_seq"], msg["last_seq"] + 1))
            self.last_seq = max(self.last_seq, msg["last_seq"])
        elif t == "overflow":
            self.overflows += 1

    def lost(self, final_seq: int) -> int:
        return sum(1 for s in range(self.start_seq + 1, final_seq + 1) if s not in self.seen)


def churn(root: Path, stop: threading.Event, counter: list[int]) -> None:
    rng = random.Random(7)
    live: list[Path] = []
    i = 0
    while not stop.is_set():
        i += 1
        d = root / f"d{rng.randrange(20)}"
        d.mkdir(exist_ok=True)
        p = d / f"f{i}"
        p.write_bytes(b"x")
        live.append(p)
        if len(live) > 500:
            with contextlib.suppress(FileNotFoundError):
                live.pop(rng.randrange(len(live))).unlink()
        counter[0] += 1
        if i % 200 == 0:
            time.sleep(0.01)  # keep the churn steady rather than a flat-out burst


def sample(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, open fds) of the daemon and its children together."""
    rss, fds = 0, 0
    pids = [pid]
    with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{pid}/children") as f:
        pids += [int(x) for x in f.read().split()]
    for p in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            fds += len(os.listdir(f"/proc/{p}/fd"))
    return rss, fds


def watcher_pid(sock_path: str) -> int | None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b'{"op":"status"}\n')
        return json.loads(f.readline())["watcher"]["pid"]  # type: ignore[no-any-return]


def final_seq(sock_path: str) -> int:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b'{"op":"status"}\n')
        return int(json.loads(f.readline())["seq"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--fast", type=int, default=8)
    parser.add_argument("--slow", type=int, default=4)
    parser.add_argument("--reconnect", type=int, default=8)
    parser.add_argument("--hup-every", type=float, default=3.0)
    parser.add_argument("--kill-every", type=float, default=60.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="wd-soak.", dir="/tmp"))
    root = work / "tree"
    root.mkdir()
    sock_path = str(work / "w.sock")
    cfg = work / "w.toml"
    cfg.write_text(f'[daemon]\nsocket = "{sock_path}"\nclient_queue = 2000\n'
                   f'replay_buffer = 200000\nlog_level = "warning"\n'
                   f'[[watch]]\nname = "t"\npath = "{root}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "watchd", "--config", str(cfg)],
                            stderr=open(work / "log", "wb"))  # noqa: SIM115
    from bench.fidelity import wait_ready

    if not wait_ready(sock_path, proc):
        print("watchd did not start", file=sys.stderr)
        return 1
    rng = random.Random(3)
    streams = ([Stream("fast", sock_path) for _ in range(args.fast)]
               + [Stream("slow", sock_path) for _ in range(args.slow)]
               + [Stream("reconnect", sock_path) for _ in range(args.reconnect)])
    sel = selectors.DefaultSelector()
    for s in streams:
        s.connect(None)
        assert s.sock is not None
        if s.kind != "slow":
            sel.register(s.sock, selectors.EVENT_READ, s)
        s.next_pause = time.monotonic() + rng.uniform(1, 5)
    stop = threading.Event()
    created = [0]
    writer = threading.Thread(target=churn, args=(root, stop, created), daemon=True)
    writer.start()

    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    next_hup, next_kill, next_sample = t0 + args.hup_every, t0 + args.kill_every, t0
    samples: list[tuple[float, int, int]] = []
    hups = kills = reconnects = 0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_hup:
            proc.send_signal(signal.SIGHUP)
            hups += 1
            next_hup = now + args.hup_every
        if now >= next_kill:
            pid = watcher_pid(sock_path)
            if pid:
                os.kill(pid, signal.SIGKILL)
                kills += 1
            next_kill = now + args.kill_every
        if now >= next_sample:
            rss, fds = sample(proc.pid)
            samples.append((now - t0, rss, fds))
            next_sample = now + max(1.0, args.minutes * 60 / 20)
        for s in streams:
            if now < s.next_pause or s.sock is None:
                continue
            if s.kind == "slow":  # one big gulp of whatever is buffered, then idle again
                drain(s)
                s.next_pause = now + rng.uniform(2, 6)
            elif s.kind == "reconnect":
                drain(s)
                sel.unregister(s.sock)
                s.sock.close()
                s.connect(s.last_seq if s.last_seq else None)
                sel.register(s.sock, selectors.EVENT_READ, s)
                reconnects += 1
                s.next_pause = now + rng.uniform(2, 8)
        for key, _ in sel.select(0.05):
            drain(key.data)

    stop.set()
    writer.join()
    marker = root / "soak-end"
    marker.touch()
    marked = time.monotonic()
    deadline = marked + 60
    fast = [s for s in streams if s.kind == "fast"]
    # The lag: how long after the churn stopped a fast client learns of the last change. A
    # stream throttled to its slowest reader looks complete at the end, but late.
    while time.monotonic() < deadline and not all(s.end_seen for s in fast):
        for s in fast:
            drain(s)
        time.sleep(0.01)
    final = final_seq(sock_path)
    while time.monotonic() < deadline and not all(s.last_seq >= final or s.sock is None
                                                  for s in streams):
        for s in streams:
            drain(s)
        time.sleep(0.05)
    rss, fds = sample(proc.pid)
    samples.append((time.monotonic() - t0, rss, fds))
    proc.terminate()
    proc.wait(10)

    delivered = sum(len(s.seen) for s in streams) - sum(s.dropped for s in streams)
    dropped = sum(s.dropped for s in streams)
    lost = sum(s.lost(final) for s in streams)
    print(f"soak: {args.minutes:g} min, {len(streams)} clients ({args.fast} fast, "
          f"{args.slow} slow, {args.reconnect} reconnecting), {created[0]} files written, "
          f"{hups} SIGHUPs, {kills} watcher kills, {reconnects} reconnections")
    print(f"events published {final}, delivered {delivered}, reported dropped {dropped}, "
          f"overflow notices {sum(s.overflows for s in streams)}, since_expired "
          f"{sum(s.expired for s in streams)}, lost without notice {lost}")
    lags = [s.end_seen - marked for s in fast if s.end_seen is not None]
    print(f"events published per file written {final / max(1, created[0]):.2f}; the end marker "
          f"reached the fast clients after {max(lags, default=float('nan')):.3f} s (max), "
          f"{len(fast) - len(lags)} never")
    print("t (s)   RSS (MiB)   fds")
    for t, r, f in samples:
        print(f"{t:6.0f}   {r / 1024:9.1f}   {f:3d}")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if lost else 0


def drain(s: Stream) -> None:
    if s.sock is None:
        return
    while True:
        try:
            chunk = s.sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        s.buf += chunk
    *lines, s.buf = s.buf.split(b"\n")
    for line in lines:
        s.handle(line)


if __name__ == "__main__":
    sys.exit(main())
