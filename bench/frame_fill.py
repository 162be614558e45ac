#!/usr/bin/env python3
"""How full batched frames are in the peer harness's W5, read by the harness's own client.

The shared harness's watchd adapter (`peers/watchd.py`) subscribes N connections with
`"batch": true` and `events=create`, 10,000 files are created with its generator, and its own
`read_batch` reads them, as in W5. Its `json` module is wrapped to count the frames it decodes,
so the client is the harness's and the daemon is untouched. Printed per subscriber count:
frames, events per frame (mean), how often the client woke (epoll returned) and how many
connections it read in all, the time from the generator's start to the last event, and the CPU
time of the client, of the daemon and of its watcher (medians of the repetitions). With
`--lines` each tree also runs with event lines (no "batch"), alternated with its frames.

    .venv/bin/python -m bench.frame_fill --subs 1 10 100 --reps 3
    .venv/bin/python -m bench.frame_fill --tree /tmp/base --tree . --subs 10   # two trees
    .venv/bin/python -m bench.frame_fill --subs 1 --lines --reps 9             # frames vs lines
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

HARNESS = Path(__file__).resolve().parent.parent.parent / "shared" / "bench"
SENTINEL = "__sentinel__"


class CountingJson:
    """Stands in for the adapter's `json` module: counts the frames (and events) it decodes."""

    def __init__(self) -> None:
        self.frames = 0
        self.events = 0

    def loads(self, line: bytes) -> Any:
        message = json.loads(line)
        kind = message.get("type")
        if kind == "events":
            self.frames += 1
            self.events += len(message["events"])
        elif kind == "event":  # a line is a frame of one, for the counts
            self.frames += 1
            self.events += 1
        return message

    def dumps(self, value: Any) -> str:
        return json.dumps(value)


class CountingPoll:
    """Stands in for the adapter's epoll object: counts the client's wakeups and the
    connections found readable in them."""

    def __init__(self, ep: Any) -> None:
        self.ep = ep
        self.wakeups = 0
        self.ready = 0

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        ready: list[tuple[int, int]] = self.ep.poll(timeout)
        if ready:
            self.wakeups += 1
            self.ready += len(ready)
        return ready

    def close(self) -> None:
        self.ep.close()


def adapter_module(harness: Path) -> ModuleType:
    sys.path.insert(0, str(harness))
    return importlib.import_module("peers.watchd")


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gen_binary(harness: Path) -> str:
    for out in (harness, Path(os.environ.get("TMPDIR", "/tmp")) / "watchd-bench"):
        gen = out / "build" / "gen"
        if gen.exists():
            return str(gen)
    raise SystemExit(f"no generator: run {harness}/run.sh once (it builds build/gen)")


def running(pid: int | None) -> bool:
    """Whether process pid (the generator, reading beside it) has not exited yet; works in a
    forked reader too, which cannot wait for it."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def read_all(peer: Any, root: Path, subs: list[int], t0: int,
             gen_pid: int | None = None) -> tuple[int, dict[int, int]]:
    """Reads until each of subs saw a sentinel (created as the harness does, after the
    generator, retried): the time of the last workload event, and each subscriber's events.
    gen_pid: a generator still running, read beside (the sentinels wait for its end)."""
    seen = dict.fromkeys(subs, 0)
    done: set[int] = set()
    last = t0
    deadline = time.monotonic() + 120
    sentinel_at = time.monotonic() + 0.5
    while len(done) < len(subs) and time.monotonic() < deadline:
        if running(gen_pid):
            sentinel_at = time.monotonic() + 0.5
        elif time.monotonic() > sentinel_at:  # as the harness: after the generator, retried
            (root / f"{SENTINEL}{os.getpid()}.{int(sentinel_at * 1000)}").touch()
            sentinel_at = time.monotonic() + 3
        for t, kind, path, sub in peer.read_batch(0.2):
            if SENTINEL in path:
                done.add(sub)
            elif kind in ("create", "modify"):
                seen[sub] += 1
                last = max(last, t)
    return last, seen


def one(module: ModuleType, tree: Path, subs: int, files: int, fs: Path, gen: str,
        batch: bool = True) -> dict[str, float]:
    counter = CountingJson()
    module.json = counter  # type: ignore[attr-defined]
    os.environ["WATCHD_CMD"] = f"{tree / '.venv' / 'bin' / 'watchd'} --config {{config}}"
    root = fs / f"fill-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    opts = {"subs": str(subs), "events": "create"}
    if batch:
        opts["batch"] = "1"
    peer = module.Adapter(opts)
    peer.start(str(root))
    try:
        counter.frames = counter.events = 0
        poll = peer.ep = CountingPoll(peer.ep)
        daemon, *watcher = peer.pids()
        daemon_cpu0, watcher_cpu0 = cpu_s(daemon), sum(cpu_s(pid) for pid in watcher)
        client_cpu0 = time.process_time()
        t0 = time.monotonic_ns()
        subprocess.run([gen, "create", str(root), str(files)], check=True, capture_output=True)
        gen_s = (time.monotonic_ns() - t0) / 1e9
        last, seen = read_all(peer, root, list(range(subs)), t0)
        return {"gen_s": gen_s, "after_gen_s": (last - t0) / 1e9 - gen_s,
                "client_cpu_s": time.process_time() - client_cpu0,
                "daemon_cpu_s": cpu_s(daemon) - daemon_cpu0,
                "watcher_cpu_s": sum(cpu_s(pid) for pid in watcher) - watcher_cpu0,
                "wakeups": poll.wakeups, "reads": poll.ready,
                "frames": counter.frames, "events": counter.events,
                "per_frame": counter.events / max(1, counter.frames),
                "total_s": (last - t0) / 1e9,
                "complete": sum(min(n, files) for n in seen.values()) / (subs * files)}
    finally:
        peer.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subs", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tree", type=Path, action="append",
                        help="a checkout with a .venv (repeat to alternate); default this one")
    parser.add_argument("--harness", type=Path, default=HARNESS)
    parser.add_argument("--fs", type=Path, default=Path("/tmp/benchfs"))
    parser.add_argument("--lines", action="store_true",
                        help="each tree with event lines as well, alternated with its frames")
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [Path(__file__).resolve().parent.parent])]
    module = adapter_module(args.harness)
    gen = gen_binary(args.harness)
    modes = [True, False] if args.lines else [True]
    results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    for rep in range(args.reps):
        for subs in args.subs:
            runs = [(tree, batch) for tree in trees for batch in modes]
            for tree, batch in runs if rep % 2 == 0 else runs[::-1]:
                r = one(module, tree, subs, args.files, args.fs, gen, batch)
                mode = "frames" if batch else "lines"
                results.setdefault((str(tree), mode, subs), []).append(r)
                print(f"rep {rep} {tree} {mode} subs={subs}: {r}", file=sys.stderr, flush=True)
    print("| tree | delivery | subscribers | frames | events per frame | client wakeups "
          "| connections read | total s | client CPU s | daemon CPU s | watcher CPU s "
          "| complete (min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (tree, mode, subs), rs in results.items():
        def median(key: str, rs: list[dict[str, float]] = rs) -> float:
            return statistics.median(r[key] for r in rs)
        print(f"| {tree} | {mode} | {subs} | {median('frames'):,.0f} | "
              f"{median('per_frame'):.1f} | {median('wakeups'):,.0f} | {median('reads'):,.0f} | "
              f"{median('total_s'):.3f} | {median('client_cpu_s'):.2f} | "
              f"{median('daemon_cpu_s'):.2f} | {median('watcher_cpu_s'):.2f} | "
              f"{100 * min(r['complete'] for r in rs):.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
