#!/usr/bin/env python3
"""Durable state: what it costs on the event path, and how long a restart with it takes.

Three daemons on the same workloads, alternating in every repetition: without durable state
(`off`), with its state directory on a tmpfs (`shm`, /dev/shm) and on the disk (`disk`,
/var/tmp). Reported as ratios to `off`, medians over the repetitions:

* burst: a W1-like burst of file creations (each a create and a close_write event) read by
  one client; events/s from the first write to the last event;
* latency: one file at a time, the time from its creation to its event at the client (p50
  and p99 over the samples);
* publish: the broker's publish alone (a null sink, one subscriber), with the journal
  recording into a state directory or not; events per CPU second, batches of 1 and of 64;
* restart: a tree of --dirs directories; start to READY=1 without state, and the restart to
  READY=1 of a durable daemon stopped with SIGTERM (its journal and index loaded, its first
  scan compared with the stored index).

    .venv/bin/python -m bench.durable --files 6000 --reps 5 --dirs 50000
"""

from __future__ import annotations

import argparse
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

MODES = {"off": None, "shm": "/dev/shm", "disk": "/var/tmp"}


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: str
    started: float
    ready: float


def config(work: Path, root: Path, state: Path | None) -> Path:
    cfg = work / "w.toml"
    line = f'state_directory = "{state}"\n' if state is not None else 'state_directory = ""\n'
    cfg.write_text(f'[daemon]\nsocket = "{work / "w.sock"}"\nlog_level = "warning"\n{line}'
                   f'[[watch]]\nname = "b"\npath = "{root}"\n')
    return cfg


def start(work: Path, cfg: Path, timeout: float = 300) -> Daemon:
    """Start the daemon and wait for its READY=1."""
    notify_path = str(work / "n.sock")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(notify_path)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(timeout)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "watchd", "--config", str(cfg)], env=env)
    try:
        while b"READY=1" not in notify.recv(4096).split(b"\n"):
            pass
    finally:
        notify.close()
    return Daemon(proc, str(work / "w.sock"), started, time.monotonic())


def stop(d: Daemon) -> None:
    d.proc.send_signal(signal.SIGTERM)
    d.proc.wait(60)


def subscribe(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b'{"op":"subscribe","id":1}\n')
    assert b'"subscribed"' in f.readline()
    f.close()
    return s


@contextlib.contextmanager
def place(mode: str, fs: Path) -> Iterator[tuple[Path, Path, Path | None]]:
    """A work directory, a watched directory on fs, and a state directory for the mode."""
    work = Path(tempfile.mkdtemp(prefix="wd-dur.", dir="/tmp"))
    root = Path(tempfile.mkdtemp(prefix=f"wd-dur-{mode}.", dir=fs))
    base = MODES[mode]
    state = Path(tempfile.mkdtemp(prefix="wd-state.", dir=base)) if base else None
    try:
        yield work, root, state
    finally:
        for path in (work, root, state):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)


def burst(mode: str, fs: Path, files: int) -> float | None:
    """Events/s of a burst, first write to last event at the client; None when the kernel's
    queue overflowed (a loaded machine): that repetition does not count."""
    with place(mode, fs) as (work, root, state):
        d = start(work, config(work, root, state))
        try:
            took = timed_burst(d.socket, root, files)
        finally:
            stop(d)
        if took is None:
            print(f"  {mode}: events lost (an overflow): not counted", file=sys.stderr)
            return None
        return 2 * files / took


def timed_burst(socket_path: str, root: Path, files: int) -> float | None:
    """Seconds from the first of `files` creations in root to the last of their events (a
    create and a close_write each) at a new subscriber; None when it was told of a loss."""
    s = subscribe(socket_path)
    s.settimeout(120)
    want = 2 * files
    t0 = time.monotonic()
    for i in range(files):
        with open(root / f"f{i:06}", "wb"):
            pass
    got = 0
    carry = b""
    try:
        while got < want:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise RuntimeError("the daemon closed the connection")
            # Whole lines only: a pattern cut by a read would be missed.
            data = carry + chunk
            cut = data.rfind(b"\n") + 1
            chunk, carry = data[:cut], data[cut:]
            got += chunk.count(b'"type":"event"')
            if b'"type":"overflow"' in chunk or b'"type":"dropped"' in chunk:
                return None
        return time.monotonic() - t0
    finally:
        s.close()


def latency(mode: str, fs: Path, samples: int) -> tuple[float, float]:
    """(p50, p99) in ms of one creation at a time."""
    with place(mode, fs) as (work, root, state):
        d = start(work, config(work, root, state))
        try:
            return one_at_a_time(d.socket, root, samples)
        finally:
            stop(d)


def one_at_a_time(socket_path: str, root: Path, samples: int) -> tuple[float, float]:
    """(p50, p99) in ms from a creation in root to its close_write at a new subscriber."""
    s = subscribe(socket_path)
    s.settimeout(10)
    f = s.makefile("rb")
    took = []
    for i in range(samples):
        t0 = time.monotonic()
        os.close(os.open(root / f"l{i}", os.O_CREAT | os.O_WRONLY, 0o600))
        while True:
            line = f.readline()
            if b'"kind":"close_write"' in line and f"l{i}".encode() in line:
                break
        took.append((time.monotonic() - t0) * 1000)
        time.sleep(0.002)
    f.close()
    s.close()
    q = statistics.quantiles(took, n=100)
    return q[49], q[98]


def publish(mode: str, batch: int, n_events: int) -> float:
    """Events per CPU second of Broker.publish_reads with (or without) the journal."""
    from bench.broker_bench import NullSink, Watch
    from watchd.broker import Broker, Peer
    from watchd.events import KIND_BITS, Kind
    from watchd.journal import Journal
    from watchd.protocol import Subscribe

    base = MODES[mode]
    state = Path(tempfile.mkdtemp(prefix="wd-pub.", dir=base)) if base else None
    try:
        broker = Broker(instance="bench", client_queue=10_000, replay_buffer=65_536,
                        max_subscriptions=64)
        broker.set_watches([Watch("w")])
        broker.subscribe(broker.connect(NullSink(), Peer(uid=0, gid=0, groups=frozenset(),
                                                         pid=1)), Subscribe())
        rec = None
        if state is not None:
            rec = Journal(str(state), max_bytes=64 << 20, retain=lambda: 65_536,
                          on_error=lambda what, e: None, on_rotate=lambda: None)
            rec.open(0)
            broker.history.recorder = rec
        mask = KIND_BITS[Kind.CLOSE_WRITE]
        items: list[tuple[int, int, str, str | None]] = [
            (mask, 0, f"/srv/data/dir{n % 97}/file{n}.csv", None) for n in range(n_events)]
        start = time.process_time()
        for i in range(0, n_events, batch):
            broker.publish_reads("w", [(1700000000.0 + i, items[i : i + batch])])
        took = time.process_time() - start
        if rec is not None:
            rec.close()
        return n_events / took
    finally:
        if state is not None:
            shutil.rmtree(state, ignore_errors=True)


def make_tree(root: Path, dirs: int) -> None:
    per = max(int(dirs ** 0.5), 1)
    made = 0
    for i in range(per):
        top = root / f"d{i}"
        top.mkdir()
        made += 1
        for j in range(per):
            if made >= dirs:
                break
            (top / f"s{j}").mkdir()
            (top / f"s{j}" / "f").write_bytes(b"")
            made += 1


def restart(mode: str, fs: Path, dirs: int) -> tuple[float, float]:
    """(first start to READY, restart to READY) in seconds on a tree of `dirs` directories."""
    with place(mode, fs) as (work, root, state):
        make_tree(root, dirs)
        cfg = config(work, root, state)
        d = start(work, cfg)
        first = d.ready - d.started
        stop(d)
        (root / "while-down").mkdir()  # one change for the start-up comparison to find
        d = start(work, cfg)
        again = d.ready - d.started
        if state is not None:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(d.socket)
                f = s.makefile("rb")
                f.readline()
                s.sendall(b'{"op":"status"}\n')
                status = json.loads(f.readline())
                assert status["restored_from"] is not None, status
                tracked = sum(w["tracked"] for w in status["watches"])
                index = status["state_bytes"] - status["journal_bytes"]
                print(f"  {mode}: state {status['state_bytes']} bytes, index files {index} "
                      f"bytes for {tracked} paths ({index / max(tracked, 1):.1f} bytes/path)",
                      file=sys.stderr)
        stop(d)
        return first, again


def median_ratio(values: dict[str, list[float]], mode: str) -> str:
    if not values["off"] or not values[mode]:
        return "- (every repetition overflowed)"
    base = statistics.median(values["off"])
    mine = statistics.median(values[mode])
    return f"{mine:.4g} ({mine / base:.3f}x)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 12,000 events: under the kernel's default queue (16,384), so that a loaded machine
    # does not turn a repetition into an overflow.
    parser.add_argument("--files", type=int, default=6000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--dirs", type=int, default=50000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--fs", type=Path, default=Path("/dev/shm"),
                        help="where the watched trees go (a tmpfs)")
    parser.add_argument("--parts", default="publish,burst,restart",
                        help="which measurements, comma-separated")
    parser.add_argument("--publish-events", type=int, default=200_000)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if "publish" in parts:
        report_publish(args.reps, args.publish_events)
    if "burst" in parts:
        report_burst(args.reps, args.fs, args.files, args.samples)
    if "restart" in parts:
        report_restart(args.reps, args.fs, args.dirs)
    return 0


def report_publish(reps: int, n_events: int) -> None:
    modes = list(MODES)
    pub: dict[tuple[str, int], list[float]] = {}
    for rep in range(reps):
        for mode in modes if rep % 2 == 0 else modes[::-1]:
            for batch in (1, 64):
                pub.setdefault((mode, batch), []).append(publish(mode, batch, n_events))
    print(f"broker publish, {n_events} events, one subscriber, null sink; events "
          f"per CPU second, medians of {reps}, ratio to off\n")
    print("| state | batch 1 | batch 64 |")
    print("|---|---|---|")
    for mode in modes:
        cells = []
        for batch in (1, 64):
            mine = statistics.median(pub[mode, batch])
            cells.append(f"{mine:,.0f} ({mine / statistics.median(pub['off', batch]):.3f}x)")
        print(f"| {mode} | {' | '.join(cells)} |")
    print()


def report_burst(reps: int, fs: Path, files: int, samples: int) -> None:
    modes = list(MODES)
    rate: dict[str, list[float]] = {m: [] for m in modes}
    p50: dict[str, list[float]] = {m: [] for m in modes}
    p99: dict[str, list[float]] = {m: [] for m in modes}
    for rep in range(reps):
        order = modes if rep % 2 == 0 else modes[::-1]
        for mode in order:
            r = burst(mode, fs, files)
            if r is not None:
                rate[mode].append(r)
            a, b = latency(mode, fs, samples)
            p50[mode].append(a)
            p99[mode].append(b)
            print(f"rep {rep} {mode}: {r or 0:.0f} events/s, p50 {a:.3f} ms, "
                  f"p99 {b:.3f} ms", file=sys.stderr)
    print(f"burst of {files} files ({2 * files} events), one client; latency over {samples} "
          f"samples; medians of {reps} repetitions (events/s: of those without an overflow, "
          f"{', '.join(f'{m} {len(rate[m])}' for m in modes)}), ratio to off\n")
    print("| state | events/s | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for mode in modes:
        print(f"| {mode} | {median_ratio(rate, mode)} | {median_ratio(p50, mode)} | "
              f"{median_ratio(p99, mode)} |")
    print()


def report_restart(reps: int, fs: Path, dirs: int) -> None:
    modes = list(MODES)
    starts: dict[str, list[float]] = {m: [] for m in modes}
    restarts: dict[str, list[float]] = {m: [] for m in modes}
    for rep in range(max(1, reps // 2)):
        order = modes if rep % 2 == 0 else modes[::-1]
        for mode in order:
            first, again = restart(mode, fs, dirs)
            starts[mode].append(first)
            restarts[mode].append(again)
            print(f"rep {rep} {mode}: start {first:.2f} s, restart {again:.2f} s",
                  file=sys.stderr)
    print(f"{dirs} directories: start to READY=1, and restart to READY=1 (SIGTERM, "
          "then start again on the same state); ratio to off's restart\n")
    print("| state | first start s | restart s |")
    print("|---|---|---|")
    for mode in modes:
        print(f"| {mode} | {statistics.median(starts[mode]):.3f} | "
              f"{median_ratio(restarts, mode)} |")


if __name__ == "__main__":
    sys.exit(main())
