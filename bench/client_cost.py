#!/usr/bin/env python3
"""What the peer harness's own client spends per event, counted in instructions.

The shared harness's adapters (`peers/watchd.py`, `peers/watchman.py`) read W5's stream from a
real socket with their own `read_batch`; here each is fed ready-made bytes through a socketpair
(watchd's frames as the daemon encodes them, or watchman's subscription PDUs of W5's file
entries) and the process runs under `valgrind --tool=cachegrind` twice, with and without the
reading. The difference per event is the client's cost in instructions: unlike CPU time on this
shared machine, it does not move with the load, so two encodings compare exactly.

    .venv/bin/python -m bench.client_cost                      # both decimals of `time`, watchman
    .venv/bin/python -m bench.client_cost --frames 64 150 256  # frame sizes
    .venv/bin/python -m bench.client_cost --seconds             # CPU time, json.loads apart
    .venv/bin/python -m bench.client_cost --members             # what each member costs

`--seconds` times the same reading in-process instead (CPU seconds, best of --rounds), and
`json.loads` of the same lines alone: what a client of this kind spends per event at the least,
whatever the daemon does.

`--members` counts the frames of 150 with one member of the event object left out at a time,
then with only `kind` and `path` (a client's cost for each member the contract puts in an
event; frames re-encoded compactly from the daemon's own), beside watchman's PDUs.
"""

from __future__ import annotations

import argparse
import json
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchd.protocol import event_lines
from watchd.protocol.event_lines import EventEncoder, frame_head, frames

HARNESS = Path(__file__).resolve().parent.parent.parent / "shared" / "bench"
ROOT = "/tmp/benchfs/run"  # where the harness's W5 tree lives: paths of the same length
T0 = 1764300000.1234567


def watchd_bytes(events: int, frame: int, decimals: int) -> bytes:
    """W5's create events for subscription s1 in frames of `frame`, times with `decimals`."""
    setattr(event_lines, "TIME_DECIMALS", decimals)  # noqa: B010 -- a Final, changed for a test
    encoder = EventEncoder()
    tails = [encoder.tail(seq, T0 + (seq // 50) * 0.000731, "bench", "create",
                          f"{ROOT}/f{seq:07}", 0x100, 0, None) for seq in range(1, events + 1)]
    return b"".join(frames(frame_head("s1"), tails, frame))


def without(data: bytes, drop: list[str]) -> bytes:
    """Frames with the members in drop left out of every event ("+kind,path": all but these)."""
    keep = drop[0][1:].split(",") if drop and drop[0].startswith("+") else None
    lines = []
    for line in data.splitlines():
        frame = json.loads(line)
        for event in frame["events"]:
            for member in [m for m in event if (m not in keep if keep else m in drop)]:
                del event[member]
        lines.append(json.dumps(frame, separators=(",", ":")).encode() + b"\n")
    return b"".join(lines)


def watchman_bytes(events: int, frame: int) -> bytes:
    """W5's file entries in subscription PDUs of `frame` files, as watchman 4.9 sends them."""
    pdus = []
    for start in range(0, events, frame):
        files = [{"name": f"f{n:07}", "exists": True, "new": True, "type": "f"}
                 for n in range(start, min(events, start + frame))]
        pdus.append(json.dumps({
            "version": "4.9.0", "clock": "c:1764300000:1234:1:5678", "files": files,
            "root": ROOT, "subscription": "bench0", "unilateral": True,
            "is_fresh_instance": False, "since": "c:1764300000:1234:1:5600",
        }, separators=(",", ":")).encode() + b"\n")
    return b"".join(pdus)


def adapter(peer: str, sock: socket.socket) -> Any:
    """The harness's adapter for `peer`, reading `sock` as its one subscriber connection."""
    sys.path.insert(0, str(HARNESS))
    module = __import__(f"peers.{peer}", fromlist=["Adapter"])
    reader = module.Adapter({})
    reader.socks, reader.bufs = [sock], [b""]
    reader.fd2i = {sock.fileno(): 0}
    reader.ep = select.epoll()
    reader.ep.register(sock.fileno(), select.EPOLLIN)
    reader.resync_client = False
    reader.prefix, reader.warnings, reader.fresh = ROOT, [], 0  # watchman's parse state
    return reader


def one(peer: str, events: int, frame: int, decimals: int, read: bool,
        drop: list[str] | None = None) -> float:
    """Build the bytes; with `read`, have the adapter read them as the harness's consumer does."""
    data = (watchman_bytes(events, frame) if peer == "watchman"
            else watchd_bytes(events, frame, decimals))
    if drop:
        data = without(data, drop)
    if not read:
        return len(data) / events
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    reader = adapter(peer, ours)
    writer = threading.Thread(target=theirs.sendall, args=(data,))
    writer.start()
    seen = 0
    while seen < events:
        batch = reader.read_batch(1.0)
        seen += len(batch)
        for ev in batch:  # the consumer's own look at each event
            if "__sentinel__" in ev[2]:
                break
    writer.join()
    return len(data) / events


def best_cpu_s(action: Callable[[], object], rounds: int) -> float:
    """The least CPU time of `rounds` runs of action (the load only ever adds to it)."""
    times = []
    for _ in range(rounds):
        start = time.process_time()
        action()
        times.append(time.process_time() - start)
    return min(times)


def seconds(peer: str, events: int, frame: int, decimals: int, rounds: int) -> tuple[float, float]:
    """Microseconds per event: json.loads of the lines alone, and the adapter's whole read."""
    data = (watchman_bytes(events, frame) if peer == "watchman"
            else watchd_bytes(events, frame, decimals))
    lines = data.splitlines()
    loads = best_cpu_s(lambda: [json.loads(line) for line in lines], rounds)
    read = best_cpu_s(lambda: one(peer, events, frame, decimals, True), rounds)
    build = best_cpu_s(lambda: one(peer, events, frame, decimals, False), rounds)
    return 1e6 * loads / events, 1e6 * max(0.0, read - build) / events


def instructions(argv: list[str]) -> int:
    done = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no",
                           "--cachegrind-out-file=/dev/null", sys.executable, "-m",
                           "bench.client_cost", *argv], capture_output=True, text=True,
                          check=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    assert found is not None, done.stderr
    return int(found.group(1).replace(",", ""))


MEMBERS = ("", "seq", "time", "watch", "kind", "is_dir", "mask", "cookie", "+kind,path")


def members(events: int) -> int:
    """Instructions per event of the harness's client with each member left out in turn."""
    print("| event object | bytes per event | instructions per event | ÷ all members |")
    print("|---|---|---|---|")
    full = 0.0
    for drop in (*MEMBERS, "watchman"):
        peer = "watchman" if drop == "watchman" else "watchd"
        argv = ["--events", str(events), "--drop", "" if peer == "watchman" else drop,
                "--one", peer, "150", "5"]
        base, read = (instructions([*argv, flag]) for flag in ("0", "1"))
        size = float(subprocess.run([sys.executable, "-m", "bench.client_cost", *argv, "0"],
                                    capture_output=True, text=True, check=True).stdout)
        cost = (read - base) / events
        full = full or cost
        label = {"": "all members (as sent)", "watchman": "watchman's file entry (PDUs of 150)",
                 "+kind,path": "only kind and path"}.get(drop, f"without {drop}")
        print(f"| {label} | {size:.0f} | {cost:,.0f} | {cost / full:.2f} |", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10240)
    parser.add_argument("--frames", type=int, nargs="+", default=[150],
                        help="events per frame (watchd) or files per PDU (watchman)")
    parser.add_argument("--decimals", type=int, nargs="+", default=[6, 5],
                        help="decimals of watchd's `time` (6 before, 5 now)")
    parser.add_argument("--seconds", action="store_true",
                        help="CPU time in-process instead of instructions under cachegrind")
    parser.add_argument("--rounds", type=int, default=5, help="with --seconds: best of")
    parser.add_argument("--members", action="store_true",
                        help="each member of the event object left out in turn (instructions)")
    parser.add_argument("--one", nargs=4, metavar=("PEER", "FRAME", "DECIMALS", "READ"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--drop", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    drop = [m for m in args.drop.split(",") if m] if not args.drop.startswith("+") else [args.drop]
    if args.one:
        peer, frame, decimals, read = args.one
        print(one(peer, args.events, int(frame), int(decimals), read == "1", drop))
        return 0
    if args.members:
        return members(args.events)
    cases = [("watchd", frame, decimals) for frame in args.frames for decimals in args.decimals]
    cases += [("watchman", frame, 0) for frame in args.frames]
    if args.seconds:
        print("| client | per frame or PDU | decimals of time | json.loads µs per event "
              "| the adapter's read µs per event |")
        print("|---|---|---|---|---|")
        for peer, frame, decimals in cases:
            loads, read = seconds(peer, args.events, frame, decimals, args.rounds)
            label = "-" if peer == "watchman" else str(decimals)
            print(f"| {peer} | {frame} | {label} | {loads:.2f} | {read:.2f} |", flush=True)
        return 0
    print("| client | per frame or PDU | decimals of time | instructions per event |")
    print("|---|---|---|---|")
    for peer, frame, decimals in cases:
        base, read = (instructions(["--events", str(args.events), "--one", peer, str(frame),
                                    str(decimals), flag]) for flag in ("0", "1"))
        label = "-" if peer == "watchman" else str(decimals)
        print(f"| {peer} | {frame} | {label} | {(read - base) / args.events:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
