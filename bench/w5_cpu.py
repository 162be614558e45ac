#!/usr/bin/env python3
"""Where the CPU goes in the peer harness's W5, per process: watchd beside watchman.

The shared harness's own adapters (`peers/watchd.py` batched with `events=create`, and
`peers/watchman.py`) subscribe N connections, its generator creates 10,000 files, and the
adapter's `read_batch` reads them in this process, as the harness's consumer does. The CPU
seconds (utime + stime from /proc) of each process are taken from the generator's start to the
last subscriber's sentinel: the server (watchd's daemon, or watchman), watchd's watcher child,
the client (this process, while it reads), and the generator. On a 2-core machine the client
and the server processes share two cores: whatever the server burns beyond one core is taken
from the client, and a client busy all the time is the limit.

    .venv/bin/python -m bench.w5_cpu --subs 100 --reps 3
    .venv/bin/python -m bench.w5_cpu --subs 100 --no-resync     # also watchd with resync = false
    .venv/bin/python -m bench.w5_cpu --tree /tmp/base --tree .  # two watchd trees alternated

`--no-resync` adds a watchd run whose watch has `resync = false` (no index, so the watcher
makes no lstat per path): a measurement of what the index costs on this workload. `--procs 1 2`
runs the client as one process and as two that share the connections (forked after the
subscribes, each reading its share), as separate clients would; `--gc on off` with and without
Python's cyclic garbage collector in the client; `--parser json orjson` with the adapters'
own `json.loads` and with a compiled parser in its place (both peers' clients alike; orjson is in
the `bench` extra: `.venv/bin/pip install -e '.[bench]'`), which shows how much of each peer's
time is its client's decoding; `--fields kind+path` with the adapter's subscribe asking for
those members only (watchd's "fields", as the watchman adapter names its own); `--beside yes`
with the client reading while the generator runs, as the harness's consumer does (by default
it reads after, which keeps the generator's time apart). Notices the client got (`overflow`,
`dropped`, ...) are counted, and the daemon's log of such a run is kept in /tmp.

Anything else on the machine that lowers `fs.inotify.max_queued_events` meanwhile overflows
the kernel queue in these runs: run it under `flock /tmp/watchd-suite.lock`.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import resource
import select
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.frame_fill import HARNESS, cpu_s, gen_binary, read_all


@dataclass(frozen=True)
class Client:
    """How the harness's client is run: in how many processes, with Python's cyclic GC or not."""

    procs: int = 1
    gc: bool = True
    parser: str = "json"  # what decodes the lines: the stdlib's json, or orjson
    fields: str = ""  # watchd's subscription asks for these event members only (a+b); "": all
    beside: bool = False  # reads while the generator runs, as the harness's consumer does

    def label(self) -> str:
        return "".join(
            (
                f", {self.procs} client processes" if self.procs > 1 else "",
                "" if self.gc else ", client gc off",
                "" if self.parser == "json" else f", client parser {self.parser}",
                f", fields {self.fields}" if self.fields else "",
                ", read beside the generator" if self.beside else "",
            )
        )


@dataclass(frozen=True)
class Run:
    """One variant measured in every repetition."""

    name: str
    module: ModuleType
    opts: dict[str, str]
    client: Client
    tree: Path | None = None  # watchd's checkout
    resync: bool = True  # the watch's resync (watchd)


FIELDS = (
    "total_s",
    "server_cpu_s",
    "watcher_cpu_s",
    "client_cpu_s",
    "gen_cpu_s",
    "complete",
    "overflow",
)


def adapter(harness: Path, name: str) -> ModuleType:
    if str(harness) not in sys.path:
        sys.path.insert(0, str(harness))
    return importlib.import_module(f"peers.{name}")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Notices:
    """Stands in for the adapter's `json` module: counts the notices it decodes by type (the
    adapter keeps no `dropped` notice; a subscriber short of events shows why here)."""

    def __init__(self, parser: str = "json", fields: str = "") -> None:
        self.seen: dict[str, int] = {}
        self._loads = importlib.import_module(parser).loads
        self._fields = fields.split("+") if fields else None

    def loads(self, line: bytes) -> Any:
        message = self._loads(line)
        kind = message.get("type") if isinstance(message, dict) else None
        if kind in ("dropped", "overflow", "watch_lost", "resynced"):
            self.seen[kind] = self.seen.get(kind, 0) + 1
        return message

    def dumps(self, value: Any) -> str:
        """The adapter's requests; its subscribe with "fields" added where asked for (the
        adapter's request is otherwise sent as it is)."""
        if self._fields is not None and isinstance(value, dict) and value.get("op") == "subscribe":
            value = {**value, "fields": self._fields}
        return json.dumps(value)


def own_share(peer: Any, k: int, procs: int) -> list[int]:
    """Leaves the adapter reading only the subscribers i with i % procs == k."""
    mine = [i for i in range(len(peer.socks)) if i % procs == k]
    ep = select.epoll()
    for i in mine:
        ep.register(peer.socks[i].fileno(), select.EPOLLIN)
    peer.ep = ep
    return mine


def read_split(peer: Any, root: Path, procs: int, t0: int,
               gen_pid: int | None = None) -> tuple[int, dict[int, int], float]:
    """The reading shared by `procs` processes (this one and procs - 1 forked), each with its
    own share of the connections, as separate clients would be: the last event's time, the
    events each subscriber saw, and the CPU time of all the readers."""
    cpu0 = time.process_time()
    pipes = []
    for k in range(1, procs):
        rfd, wfd = os.pipe()
        if os.fork() == 0:  # a reader of its own share; never stops the peer
            os.close(rfd)
            cpu0 = time.process_time()
            last, seen = read_all(peer, root, own_share(peer, k, procs), t0, gen_pid)
            notices = getattr(sys.modules[type(peer).__module__], "json", None)
            counts = notices.seen if isinstance(notices, Notices) else {}
            os.write(wfd, json.dumps([last, seen, time.process_time() - cpu0, counts]).encode())
            os._exit(0)
        os.close(wfd)
        pipes.append(rfd)
    last, seen = read_all(peer, root, own_share(peer, 0, procs), t0, gen_pid)
    cpu = time.process_time() - cpu0
    for rfd in pipes:
        with os.fdopen(rfd, "rb") as f:
            their_last, their_seen, their_cpu, their_notices = json.loads(f.read())
        os.wait()
        last = max(last, their_last)
        seen.update({int(i): n for i, n in their_seen.items()})
        cpu += their_cpu
        notices = getattr(sys.modules[type(peer).__module__], "json", None)
        if isinstance(notices, Notices):
            for kind, n in their_notices.items():
                notices.seen[kind] = notices.seen.get(kind, 0) + n
    return last, seen, cpu


def one(
    module: ModuleType,
    opts: dict[str, str],
    subs: int,
    files: int,
    fs: Path,
    gen: str,
    client: Client,
) -> dict[str, float]:
    root = fs / f"w5cpu-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    notices = Notices(client.parser, client.fields if module.__name__.endswith("watchd") else "")
    module.json = notices  # type: ignore[attr-defined]
    peer = module.Adapter(dict(opts, subs=str(subs)))
    peer.start(str(root))
    notices.seen.clear()
    try:
        server, *watcher = peer.pids() if hasattr(peer, "pids") else [peer.watcher_pid()]
        server0, watcher0 = cpu_s(server), sum(cpu_s(pid) for pid in watcher)
        gen0 = children_cpu_s()
        if not client.gc:
            gc.disable()
        t0 = time.monotonic_ns()
        argv = [gen, "create", str(root), str(files)]
        if client.beside:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            last, seen, client_cpu = read_split(peer, root, client.procs, t0, proc.pid)
            if proc.wait() != 0:
                raise RuntimeError(f"the generator exited with {proc.returncode}")
            gen_cpu = children_cpu_s() - gen0
        else:
            subprocess.run(argv, check=True, capture_output=True)
            gen_cpu = children_cpu_s() - gen0
            last, seen, client_cpu = read_split(peer, root, client.procs, t0)
        complete = sum(min(n, files) for n in seen.values()) / (subs * files)
        if notices.seen or complete < 1:
            keep_log(peer, notices, seen)
        return {
            "total_s": (last - t0) / 1e9,
            "server_cpu_s": cpu_s(server) - server0,
            "watcher_cpu_s": sum(cpu_s(pid) for pid in watcher) - watcher0,
            "client_cpu_s": client_cpu,
            "gen_cpu_s": gen_cpu,
            "complete": complete,
            "overflow": float(bool(peer.overflow) or "overflow" in notices.seen),
        }
    finally:
        gc.enable()
        peer.stop()
        shutil.rmtree(root, ignore_errors=True)


def keep_log(peer: Any, notices: Notices, seen: dict[int, int]) -> None:
    """A run with notices or short of events: its notices, and the daemon's log kept."""
    short = {i: n for i, n in seen.items() if n < max(seen.values())}
    print(f"notices {notices.seen}, subscribers short of events {short}", file=sys.stderr)
    log = Path(getattr(peer, "dir", "/nonexistent")) / "watchd.log"
    if log.exists():
        kept = Path(f"/tmp/w5_cpu-{os.getpid()}-{time.time_ns()}.log")
        shutil.copy(log, kept)
        print(f"the daemon's log: {kept}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subs", type=int, nargs="+", default=[100])
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--tree",
        type=Path,
        action="append",
        help="a watchd checkout with a .venv (repeat to alternate); default this one",
    )
    parser.add_argument(
        "--no-resync",
        action="store_true",
        help="also each tree with the watch's resync = false (no index, no lstat)",
    )
    parser.add_argument("--no-watchman", action="store_true")
    parser.add_argument(
        "--cmd",
        help="WATCHD_CMD instead of the tree's .venv/bin/watchd, {tree} standing for the "
        "tree: e.g. the daemon under a profiler, or 'env PYTHONPATH={tree} python -m watchd "
        "--config {config}' for a tree without a venv of its own",
    )
    parser.add_argument(
        "--procs",
        type=int,
        nargs="+",
        default=[1],
        help="client processes sharing the connections (each value a variant)",
    )
    parser.add_argument(
        "--gc",
        choices=("on", "off"),
        nargs="+",
        default=["on"],
        help="the client's cyclic garbage collector (each value a variant)",
    )
    parser.add_argument(
        "--parser",
        choices=("json", "orjson"),
        nargs="+",
        default=["json"],
        help="what the client decodes lines with (each value a variant, for both peers)",
    )
    parser.add_argument(
        "--fields",
        nargs="+",
        default=[""],
        help="watchd's subscription asks for these event members only, joined by + (each "
        "value a variant; '' for all of them, as the harness's adapter asks)",
    )
    parser.add_argument(
        "--beside",
        choices=("no", "yes"),
        nargs="+",
        default=["no"],
        help="read while the generator runs, as the harness's consumer does (yes), or after it "
        "(no: the generator's time apart from the reading); each value a variant",
    )
    parser.add_argument("--harness", type=Path, default=HARNESS)
    parser.add_argument("--fs", type=Path, default=Path("/tmp/benchfs"))
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [Path(__file__).resolve().parent.parent])]
    gen = gen_binary(args.harness)
    watchd = adapter(args.harness, "watchd")
    config = watchd.CONFIG
    clients = [
        Client(procs, on == "on", parser, fields, beside == "yes")
        for procs in args.procs
        for on in args.gc
        for parser in args.parser
        for fields in args.fields
        for beside in args.beside
    ]
    runs: list[Run] = []
    if not args.no_watchman:
        runs += [
            Run("watchman", adapter(args.harness, "watchman"), {}, client)
            for client in clients
            if not client.fields  # watchman's adapter asks for its own fields
        ]
    for tree in trees:
        for resync in [True, False] if args.no_resync else [True]:
            runs += [
                Run(
                    f"watchd {tree}" + ("" if resync else " resync=false"),
                    watchd,
                    {"events": "create", "batch": "1"},
                    client,
                    tree,
                    resync,
                )
                for client in clients
            ]
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for rep in range(args.reps):
        for subs in args.subs:
            for run in runs if rep % 2 == 0 else runs[::-1]:
                if run.tree is not None:
                    os.environ["WATCHD_CMD"] = (
                        args.cmd or "{tree}/.venv/bin/watchd --config {config}"
                    ).replace("{tree}", str(run.tree))
                    watchd.CONFIG = config + ("" if run.resync else "resync = false\n")  # type: ignore[attr-defined]
                r = one(run.module, run.opts, subs, args.files, args.fs, gen, run.client)
                name = run.name + run.client.label()
                results.setdefault((name, subs), []).append(r)
                print(
                    f"rep {rep} {name} subs={subs}: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in r.items()),
                    file=sys.stderr,
                    flush=True,
                )
    print(
        "| peer | subscribers | total s | server CPU s | watcher CPU s | client CPU s "
        "| generator CPU s | complete (min) | runs with overflow |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, subs), rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in FIELDS}
        print(
            f"| {name} | {subs} | {med['total_s']:.3f} | {med['server_cpu_s']:.2f} | "
            f"{med['watcher_cpu_s']:.2f} | {med['client_cpu_s']:.2f} | {med['gen_cpu_s']:.2f} | "
            f"{100 * min(r['complete'] for r in rs):.1f}% | "
            f"{sum(r['overflow'] for r in rs):.0f}/{len(rs)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
