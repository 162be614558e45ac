#!/usr/bin/env python3
"""Drain: the daemon is frozen while a burst is queued, then resumed; how fast does it empty?

The daemon is stopped with SIGSTOP while files are created under its watch (the watcher keeps
reading the kernel queue into its own buffer), then continued; the rate is the burst's events
over the time from SIGCONT to the last of them at the client. Two clients: one that counts
lines without decoding them (what the daemon can deliver) and one that decodes every line with
json.loads the way the shared peer harness does (what such a client sees). Alternating them in
one run shows how much of the drain is the client's parser.

    .venv/bin/python -m bench.drain --files 5000 --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import statistics
import sys
import time
from pathlib import Path

from bench.daemon import running, subscribe

KINDS_PER_FILE = 3  # create, modify, close_write: the default kinds for a file written once


def read_counting(s: socket.socket, want: int, deadline: float) -> float:
    """Receive until `want` event lines arrived; returns the time of the last receipt."""
    ep = select.epoll()
    ep.register(s.fileno(), select.EPOLLIN)
    got, last, carry = 0, 0.0, b""
    while got < want and time.monotonic() < deadline:
        for _ in ep.poll(1.0):
            while True:
                try:
                    chunk = carry + s.recv(1 << 18)
                except BlockingIOError:
                    break
                cut = chunk.rfind(b"\n") + 1  # whole lines only: a token may span two reads
                got += chunk.count(b'"type":"event"', 0, cut)
                carry = chunk[cut:]
            last = time.monotonic()
    ep.close()
    return last if got >= want else float("nan")


def read_decoding(s: socket.socket, want: int, deadline: float) -> float:
    """As read_counting, but every line goes through json.loads like the peer harness's client."""
    ep = select.epoll()
    ep.register(s.fileno(), select.EPOLLIN)
    got, last, buf = 0, 0.0, b""
    out: list[tuple[float, object, object]] = []
    while got < want and time.monotonic() < deadline:
        for _ in ep.poll(1.0):
            while True:
                try:
                    chunk = s.recv(1 << 18)
                except BlockingIOError:
                    break
                buf += chunk
            last = time.monotonic()
            lines = buf.split(b"\n")
            buf = lines.pop()
            for line in lines:
                m = json.loads(line)
                if m.get("type") == "event":
                    out.append((last, m.get("kind"), m.get("path")))
                    got += 1
    ep.close()
    return last if got >= want else float("nan")


def run(files: int, fs: Path, decode: bool) -> float:
    with running(fs, "bench", "DRAIN_PROFILE") as daemon:
        proc, root = daemon.proc, daemon.root
        s = subscribe(daemon.socket)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            for i in range(files):
                fd = os.open(root / f"f{i:07}", os.O_CREAT | os.O_WRONLY, 0o644)
                os.write(fd, b"x")
                os.close(fd)
            time.sleep(0.3)  # the watcher reads the whole burst into its buffer meanwhile
        finally:
            t_cont = time.monotonic()
            os.kill(proc.pid, signal.SIGCONT)
        reader = read_decoding if decode else read_counting
        last = reader(s, files * KINDS_PER_FILE, time.monotonic() + 60)
        s.close()
        return files * KINDS_PER_FILE / (last - t_cont)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--fs", type=Path, default=Path("/tmp/benchfs"),
                        help="where the watched tree goes (a tmpfs)")
    args = parser.parse_args()
    args.fs.mkdir(parents=True, exist_ok=True)
    rates: dict[str, list[float]] = {"counting": [], "decoding": []}
    for _ in range(args.reps):
        for name, values in rates.items():
            values.append(run(args.files, args.fs, decode=name == "decoding"))
    print(f"| client | events | drain ev/s (median of {args.reps}) | min | max |")
    print("|---|---|---|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {args.files * KINDS_PER_FILE} | {statistics.median(values):,.0f} | "
              f"{min(values):,.0f} | {max(values):,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
