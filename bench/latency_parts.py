#!/usr/bin/env python3
"""Where an event's latency goes, at a trickle (W2's 200 files/s): the kernel and the watcher,
then the daemon and the client.

Each file is created with the wall clock noted just before; its `create` event's `time` member
is when the watcher read it (to 10 µs), and the client notes when the line arrived. So:
create -> read is the kernel's queue and the watcher's wake-up, read -> receipt the watcher's
sending, the daemon (index, publish, write) and the client's wake-up. The daemon's own figure
for read -> first write (`watchd_event_latency_seconds`, from the metrics request) is printed
beside, per bucket.

    .venv/bin/python -m bench.latency_parts --files 1000
    .venv/bin/python -m bench.latency_parts --files 1000 --no-resync   # the watch without index
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from bench.daemon import running

RATE = 200  # files per second, as W2


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def reader(sock: socket.socket, want: int, got: dict[str, tuple[float, float]]) -> None:
    """Receipt time and the event's read time for each l_* file, until `want` of them."""
    lines = sock.makefile("rb")
    while len(got) < want:
        line = lines.readline()
        if not line:
            return
        now = time.time()
        message = json.loads(line)
        if message.get("type") == "event" and "/l_" in message["path"]:
            got[message["path"].rpartition("/")[2]] = (now, message["time"])


def latency_buckets(sock_path: str) -> list[str]:
    """The daemon's read -> first write histogram, the buckets where the count grows."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        lines = s.makefile("rb")
        lines.readline()
        s.sendall(b'{"op":"metrics","id":1}\n')
        text = json.loads(lines.readline()).get("text", "")
    out, last = [], -1.0
    for line in text.splitlines():
        if line.startswith("watchd_event_latency_seconds_bucket"):
            count = float(line.rsplit(" ", 1)[1])
            if count != last:
                out.append(line.split("{", 1)[1].split("}", 1)[0] + f" {count:.0f}")
                last = count
    return out


def run(files: int, fs: Path, resync: bool) -> None:
    extra = "" if resync else "resync = false\n"
    with running(fs, "latency", "LATENCY_PROFILE", watch_extra=extra) as daemon:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(daemon.socket)
        first = sock.makefile("rb")
        first.readline()
        sock.sendall(b'{"op":"subscribe","id":1,"events":["create"]}\n')
        assert b'"subscribed"' in first.readline()
        got: dict[str, tuple[float, float]] = {}
        thread = threading.Thread(target=reader, args=(sock, files, got), daemon=True)
        thread.start()
        created: dict[str, float] = {}
        start = time.monotonic()
        for i in range(files):
            due = start + i / RATE
            while (now := time.monotonic()) < due:
                time.sleep(min(0.001, due - now))
            name = f"l_{i}"
            created[name] = time.time()
            fd = os.open(daemon.root / name, os.O_CREAT | os.O_WRONLY)
            os.write(fd, b"x")
            os.close(fd)
        thread.join(30)
        parts = [(created[n], *got[n]) for n in created if n in got]
        total = [(recv - made) * 1e3 for made, recv, _ in parts]
        kernel = [(read - made) * 1e3 for made, _, read in parts]
        onward = [(recv - read) * 1e3 for _, recv, read in parts]
        print(f"{len(parts)} of {files} files; ms, p50 / p99 / max:")
        for label, values in (("create -> receipt", total), ("create -> watcher read", kernel),
                              ("watcher read -> receipt", onward)):
            print(f"  {label:24} {quantile(values, 0.5):.3f} / {quantile(values, 0.99):.3f}"
                  f" / {max(values):.3f}")
        print("  the daemon's read -> first write, cumulative:", ", ".join(
            latency_buckets(daemon.socket)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--fs", type=Path, default=Path("/tmp/benchfs"),
                        help="where the watched tree goes (a tmpfs)")
    parser.add_argument("--no-resync", action="store_true",
                        help="the watch with resync = false (no index, no lstat per path)")
    args = parser.parse_args()
    run(args.files, args.fs, not args.no_resync)
    return 0


if __name__ == "__main__":
    sys.exit(main())
