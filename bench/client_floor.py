#!/usr/bin/env python3
"""What the peer harness's watchd client can take when the server costs nothing.

A stand-in server speaks just enough of protocol v1 for the shared harness's client (hello,
subscribe, subscribed) and then writes ready-made event lines, as watchd formats them, as fast
as the sockets take them: `lines` per subscriber, then a sentinel. The harness's own consumer
(`consumer.py` with the `watchd` adapter) reads them; the figure is the time from its first to
its last receipt. That is a floor for any server measured through that client: W5 with 100
subscribers moves 3,000,000 lines (create, modify and close_write for each of 10,000 files).

    .venv/bin/python -m bench.client_floor --subs 100 --lines 30000
    .venv/bin/python -m bench.client_floor --subs 100 --lines 10000 --creates --batch 256 \
        --only kind,path      # frames whose events hold only these members

`--only` is no protocol of watchd's: it measures what a subscription asking for fewer members
would cost the same client.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import selectors
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

from bench.client_cost import without
from watchd.events import KIND_BITS, Kind
from watchd.protocol import EventEncoder, event_prefix, frame_head, frames

KINDS = (Kind.CREATE, Kind.MODIFY, Kind.CLOSE_WRITE)
HEAD = event_prefix("s1")  # an event line is its subscription's head and the shared tail


def event_lines(root: str, count: int, batch: int = 0, creates: bool = False,
                only: str = "") -> bytes:
    """count events for subscription s1 as watchd writes them: three kinds per file (or, with
    `creates`, a create per file, W5's subscription), as lines or, with `batch`, in frames of
    that many events (with `only`, holding only those members, named with commas)."""
    encoder = EventEncoder()
    now = time.time()
    kinds = (Kind.CREATE,) if creates else KINDS
    tails = [encoder.tail(seq, now, "bench", kinds[seq % len(kinds)].value,
                          f"{root}/f{seq // len(kinds):07}", KIND_BITS[kinds[seq % len(kinds)]],
                          0, None)
             for seq in range(count)]
    tails.append(encoder.tail(count, now, "bench", "create", f"{root}/__sentinel__0",
                              KIND_BITS[Kind.CREATE], 0, None))
    if batch:
        framed = b"".join(frames(frame_head("s1"), tails, batch))
        return without(framed, ["+" + only]) if only else framed
    return b"".join(HEAD + tail for tail in tails)


def serve_one(conn: socket.socket, payload: bytes) -> None:
    with conn:
        conn.sendall(json.dumps({"type": "hello", "protocol": 1, "server": "watchd",
                                 "version": "floor", "pid": os.getpid(), "instance": "floor",
                                 "seq": 0}).encode() + b"\n")
        request = json.loads(conn.makefile("rb").readline())
        conn.sendall(json.dumps({"type": "subscribed", "id": request.get("id"),
                                 "subscription": "s1", "seq": 0}).encode() + b"\n")
        conn.sendall(payload)
        sel = selectors.DefaultSelector()
        sel.register(conn, selectors.EVENT_READ)
        sel.select()  # until the client closes


def serve(config: str, lines: int, batch: int, creates: bool, only: str) -> int:
    """The stand-in server: WATCHD_CMD for the harness's watchd adapter."""
    with open(config, "rb") as f:
        cfg = tomllib.load(f)
    payload = event_lines(cfg["watch"][0]["path"], lines, batch, creates, only)
    server = socket.socket(socket.AF_UNIX)
    server.bind(cfg["daemon"]["socket"])
    server.listen(1024)
    notify = os.environ.get("NOTIFY_SOCKET")
    if notify:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", notify)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve_one, args=(conn, payload), daemon=True).start()


def measure(harness: Path, subs: int, lines: int, batch: int = 0, creates: bool = False,
            only: str = "") -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="wd-floor."))
    out = work / "events.pkl"
    cmd = (f"{shlex.quote(sys.executable)} -m bench.client_floor --serve {{config}} "
           f"--lines {lines} --batch {batch}" + (" --creates" if creates else "")
           + (f" --only {shlex.quote(only)}" if only else ""))
    env = dict(os.environ, WATCHD_CMD=cmd, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    spec = f"watchd:subs={subs}" + (",batch=1" if batch else "")
    result = subprocess.run([sys.executable, str(harness / "consumer.py"), "--peer",
                             spec, "--root", str(work / "run"), "--out",
                             str(out)], env=env, capture_output=True, text=True, timeout=600,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"consumer failed: {result.stderr}")
    with out.open("rb") as f:
        events = pickle.load(f)["events"]  # our own consumer's file
    times = [t for t, _, path, _ in events if "__sentinel__" not in path]
    span = (max(times) - min(times)) / 1e9
    return {"lines": len(times), "span_s": span, "us_per_line": span / len(times) * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subs", type=int, default=100)
    parser.add_argument("--lines", type=int, default=30000, help="event lines per subscriber")
    parser.add_argument("--harness", type=Path,
                        default=Path(__file__).resolve().parent.parent.parent / "shared" / "bench")
    parser.add_argument("--batch", type=int, default=0,
                        help="frames of this many events instead of event lines")
    parser.add_argument("--creates", action="store_true",
                        help="a create per file (W5's events=create) instead of three kinds")
    parser.add_argument("--only", default="",
                        help="with --batch: events of only these members (kind,path)")
    parser.add_argument("--serve", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only and not args.batch:
        parser.error("--only needs --batch")
    if args.serve:
        return serve(args.serve, args.lines, args.batch, args.creates, args.only)
    r = measure(args.harness, args.subs, args.lines, args.batch, args.creates, args.only)
    form = f"frames of {args.batch}" if args.batch else "lines"
    form += f" of {args.only} only" if args.only else ""
    print(f"the harness's client took {r['span_s']:.2f} s from its first to its last receipt of "
          f"{r['lines']:,} ready-made events ({form}) on {args.subs} connection(s): "
          f"{r['us_per_line']:.2f} µs an event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
