"""Exact recovery on a large tree: set-up time with and without an index, and resync time.

    python -m bench.resync_scale [--dirs 50000] [--files 200000] [--reps 3] [--dir /dev/shm]
                                 [--resyncs 1] [--against SRC] [--tree PATH]
    python -m bench.resync_scale --burst 20000 [--reps 5] [--during]
    python -m bench.resync_scale --scan --reps 0 [--resyncs 3] [--against SRC] [--tree PATH]

Builds a tree of `dirs` directories (in two levels) holding `files` files, then:

- set-up: starts the daemon on it with `resync = true` and with `resync = false`, alternating
  in one run, and times each from the start of the process until every watch is active (its
  events are served), and, with resync, until the index holds the whole tree (it is filled
  in parts after that: see watchd.fill); prints the medians and their ratios;
- resync: with `resync = true`, freezes the watcher (SIGSTOP), makes more changes than the
  kernel queue holds (files created and written, files deleted), thaws it, and times the
  overflow notice and the `resynced` notice from the thaw; prints the daemon's own
  `duration_ms`, the changes found, and the time per 100,000 tracked paths.

--against SRC runs another source tree of watchd (say main's, checked out in SRC) in turns with
this one, both in one run, for `--resyncs` resyncs each, and prints the ratios (this / SRC).
--tree PATH keeps the tree there (built once, reused by later runs).

--scan, instead: the CPU time of the scan alone (bench.scan_cpu, getrusage in the process that
scans), entering every directory and entering only those a tree watches (Tree.watches_dir
asked per directory, as after a loss); with --against, both checkouts in turns.

--burst N, instead: the steady-state event path with and without the index, in turns: a W1
burst (N files created, written and closed, then deleted) in an empty watched directory, read
by one client; prints each side's events per second (first write to last event) and the ratio.
With --during, the burst (N files created, written and closed) runs on the large tree right
after the thaw of a resync, and the client counts the files it learnt of, by kernel or
synthetic events, by the time every resync it was promised is over.
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
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fidelity import watcher_of

# This checkout: the watchd a run times unless told another (--against).
HERE = str(Path(__file__).resolve().parents[1])


def launch(work: Path, source: str | None) -> dict[str, Any]:
    """subprocess arguments (env, cwd) under which `python -m watchd` imports the watchd of
    source (this checkout's for None). The process starts in work, outside any checkout:
    `-m` puts the current directory before PYTHONPATH, and a run started in this checkout
    would time this watchd on both sides."""
    return {"env": dict(os.environ, PYTHONPATH=source or HERE), "cwd": work}


def imported_from(work: Path, source: str | None) -> str:
    """Where the watchd a daemon started for source is imported from (as start runs it)."""
    return subprocess.run([sys.executable, "-c", "import watchd; print(watchd.__file__)"],
                          **launch(work, source), capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


@dataclass(frozen=True)
class Started:
    proc: subprocess.Popen[bytes]
    sock: str
    seconds: float  # until every watch is active: the daemon serves its events
    indexed: float  # until the index holds the whole tree (with resync; else = seconds)
    tracked: int


def build(root: Path, dirs: int, files: int) -> int:
    """The tree; returns how many paths it holds below root."""
    top = max(1, int(dirs ** 0.5))
    made = 0
    names: list[Path] = []
    for i in range(dirs):
        parent = root / f"group-{i % top:04}"
        if i < top:
            parent.mkdir(parents=True)
            names.append(parent)
            made += 1
            continue
        sub = parent / f"directory-{i:06}"
        sub.mkdir()
        names.append(sub)
        made += 1
    for j in range(files):
        (names[j % len(names)] / f"document-{j:07}.txt").write_bytes(b"x")
        made += 1
    return made


def status(sock: str) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError), socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b'{"op":"status"}\n')
        reply: dict[str, Any] = json.loads(f.readline())
        return reply
    return None


def start(work: Path, root: Path, *, resync: bool, paths: int, timeout: float,
          source: str | None = None) -> Started:
    sock = str(work / "w.sock")
    cfg = work / "w.toml"
    cfg.write_text(f'[daemon]\nsocket = "{sock}"\nlog_level = "warning"\n'
                   f'[[watch]]\nname = "big"\npath = "{root}"\n'
                   f'resync = {"true" if resync else "false"}\n')
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "watchd", "--config", str(cfg)],
                            **launch(work, source))
    deadline = t0 + timeout
    active: float | None = None
    while time.monotonic() < deadline and proc.poll() is None:
        st = status(sock)
        if st is not None:
            watch = st["watches"][0]
            tracked = int(watch.get("tracked", 0))
            if active is None and watch["state"] == "active":
                active = time.monotonic() - t0
            if active is not None and (not resync or tracked >= paths):
                return Started(proc, sock, active, time.monotonic() - t0, tracked)
        time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"the daemon did not get ready within {timeout} s (resync={resync})")


def stop(started: Started) -> None:
    started.proc.terminate()
    started.proc.wait(30)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(started.sock)


def subscribe(sock: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.makefile("rb").readline()
    s.sendall(b'{"op":"subscribe","id":1}\n')
    return s


def overflow_frozen(started: Started, spot: Path, changes: int) -> float:
    """Freeze the daemon's watcher, make `changes` files in spot (more than the kernel queue
    holds), let it go on; returns when it was let go (monotonic)."""
    watcher = watcher_of(started.proc.pid)
    assert watcher is not None
    os.kill(watcher, signal.SIGSTOP)
    for i in range(changes):
        (spot / f"new-{i:06}").write_bytes(b"y")
    thawed = time.monotonic()
    os.kill(watcher, signal.SIGCONT)
    return thawed


def resync_once(work: Path, root: Path, paths: int, changes: int,
                source: str | None = None) -> dict[str, float]:
    started = start(work, root, resync=True, paths=paths, timeout=600, source=source)
    sub = subscribe(started.sock)
    reader = sub.makefile("rb")
    assert b"subscribed" in reader.readline()
    # The directory first, watched before the watcher freezes: what is made in it then fills
    # the kernel's queue (made in a new directory, it would be found by a walk instead).
    spot = root / "changes"
    spot.mkdir()
    while str(spot).encode() not in reader.readline():
        pass
    thawed = overflow_frozen(started, spot, changes)
    overflow_s = resynced_s = -1.0
    report: dict[str, float] = {}
    sub.settimeout(600)
    synthetic = 0
    while resynced_s < 0:
        msg = json.loads(reader.readline())
        if msg.get("synthetic"):
            synthetic += 1
        elif msg["type"] != "event":
            print(f"  notice: {msg}")
        if msg["type"] == "overflow" and overflow_s < 0:
            overflow_s = time.monotonic() - thawed
            if not msg.get("resync"):
                raise SystemExit(f"overflow without resync: {msg}")
        elif msg["type"] == "resynced":
            resynced_s = time.monotonic() - thawed
            report = {"changes": msg["changes"], "duration_ms": msg["duration_ms"]}
    sub.close()
    st = status(started.sock)
    assert st is not None
    tracked = int(st["watches"][0]["tracked"])
    stop(started)
    shutil.rmtree(spot)
    return {**report, "overflow_s": overflow_s, "resynced_s": resynced_s,
            "synthetic": synthetic, "tracked": tracked}


def report(r: dict[str, float], changes: int, label: str = "") -> float:
    """Print one resync's figures; returns its seconds per 100,000 tracked paths."""
    per = r["duration_ms"] / 1000 / (r["tracked"] / 100_000)
    print(f"{label}resync after {changes} creations, {int(r['tracked'])} paths after it: "
          f"overflow notice {r['overflow_s'] * 1000:.0f} ms after the thaw, resynced "
          f"{r['resynced_s']:.2f} s after it; {int(r['changes'])} changes, "
          f"{int(r['synthetic'])} synthetic events; daemon's duration_ms "
          f"{r['duration_ms']:.0f} ({per:.2f} s per 100,000 paths)", flush=True)
    return per


def compare_resyncs(work: Path, root: Path, paths: int, args: argparse.Namespace) -> None:
    """Resyncs of this watchd and of args.against's in turns; medians and ratios."""
    this_file, other_file = imported_from(work, None), imported_from(work, args.against)
    print(f"this: {this_file}; against: {other_file}")
    if this_file == other_file:
        raise SystemExit(f"--against {args.against} imports the same watchd as this checkout")
    per: dict[str | None, list[float]] = {None: [], args.against: []}
    wall: dict[str | None, list[float]] = {None: [], args.against: []}
    for rep in range(args.resyncs):
        order = (None, args.against) if rep % 2 == 0 else (args.against, None)
        for source in order:
            r = resync_once(work, root, paths, args.changes, source)
            per[source].append(report(r, args.changes, f"  {source or 'this'}: "))
            wall[source].append(r["resynced_s"])
    this, other = statistics.median(per[None]), statistics.median(per[args.against])
    this_wall, other_wall = statistics.median(wall[None]), statistics.median(wall[args.against])
    print(f"resync, median of {args.resyncs}: this {this:.2f} s per 100,000 paths, "
          f"{args.against} {other:.2f} (ratio {this / other:.2f}); resynced after the thaw: "
          f"this {this_wall:.2f} s, {args.against} {other_wall:.2f} s (ratio "
          f"{this_wall / other_wall:.2f})")


def scan_cpu(work: Path, root: Path, source: str | None, *, entered: bool) -> dict[str, Any]:
    """One scan of root by bench.scan_cpu with source's watchd: paths, user and sys CPU s."""
    # Run by path: this checkout's bench (the other may have none), the source's watchd.
    cmd = [sys.executable, str(Path(__file__).with_name("scan_cpu.py")), str(root), "--reps", "1"]
    out = subprocess.run(cmd + (["--entered"] if entered else []), **launch(work, source),
                         capture_output=True, text=True, check=True, timeout=600).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def compare_scans(work: Path, root: Path, args: argparse.Namespace) -> None:
    """The CPU of the scan alone, entering every directory and only the watched ones (the
    tree asked per directory), for this watchd and args.against's, in turns."""
    sources: list[str | None] = [None] if args.against is None else [None, args.against]
    for source in sources:
        print(f"{source or 'this'}: {imported_from(work, source)}")
    cpu: dict[tuple[str | None, bool], list[tuple[float, float]]] = {}
    walks: dict[str | None, list[float]] = {}  # the tree's own walk before a scan
    paths = 0
    for rep in range(args.resyncs):
        for source in (sources if rep % 2 == 0 else sources[::-1]):
            for entered in ((False, True) if rep % 2 == 0 else (True, False)):
                r = scan_cpu(work, root, source, entered=entered)
                paths = r["paths"]
                cpu.setdefault((source, entered), []).append((r["user"][0], r["sys"][0]))
                if r.get("walk"):
                    walks.setdefault(source, []).extend(r["walk"])
    per = 100_000 / paths
    medians: dict[tuple[str | None, bool], float] = {}
    for (source, entered), runs in cpu.items():
        total = statistics.median(u + s for u, s in runs)
        user = statistics.median(u for u, _ in runs)
        system = statistics.median(s for _, s in runs)
        medians[source, entered] = total
        print(f"scan of {paths} paths, {source or 'this'}, "
              f"{'watched directories' if entered else 'every directory'}: median of "
              f"{len(runs)} {total:.2f} s CPU (user {user:.2f}, sys {system:.2f}); "
              f"{total * per:.2f} s per 100,000 paths", flush=True)
    for source, runs_ in walks.items():
        print(f"the tree's own walk of a resync (Tree.resync), {source or 'this'}: median of "
              f"{len(runs_)} {statistics.median(runs_):.2f} s CPU")
    if args.against is not None:
        for entered in (False, True):
            print(f"ratio this / {args.against} "
                  f"({'watched directories' if entered else 'every directory'}): "
                  f"{medians[None, entered] / medians[args.against, entered]:.2f}")


def write_files(spot: Path, files: int, unlink: bool) -> None:
    """W1's generator: each file opened with O_CREAT, 1 byte written, closed (then deleted)."""
    for i in range(files):
        fd = os.open(spot / f"f{i:07}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"x")
        os.close(fd)
    if unlink:
        for i in range(files):
            os.unlink(spot / f"f{i:07}")


def steady_burst(work: Path, root: Path, files: int, resync: bool) -> float | None:
    """Events per second a client receives of a W1 burst, first write to last event; None
    when the kernel's queue overflowed (the run does not count)."""
    started = start(work, root, resync=resync, paths=0, timeout=120)
    writer = threading.Thread(target=write_files, args=(root, files, True))
    try:
        sub = subscribe(started.sock)
        reader = sub.makefile("rb")
        assert b"subscribed" in reader.readline()
        expected = 4 * files  # create, modify, close_write, delete
        last = str(root / f"f{files - 1:07}")
        t0 = time.monotonic()
        writer.start()
        got = 0
        sub.settimeout(120)
        while True:
            msg = json.loads(reader.readline())
            if msg["type"] == "overflow":
                return None
            if msg["type"] != "event":
                continue
            got += 1
            if msg["path"] == last and msg["kind"] == "delete":
                break
        took = time.monotonic() - t0
        if got != expected:
            print(f"  resync={resync}: {got} events of {expected}")
        sub.close()
        return got / took
    finally:
        if writer.is_alive():
            writer.join()
        stop(started)


def compare_bursts(work: Path, dir_: str, files: int, reps: int) -> None:
    """W1 with and without the index, in turns; a run with an overflow is made again (up to
    three times as many runs in all)."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    void = 0
    rep = 0
    while min(len(r) for r in rates.values()) < reps and void < 2 * reps:
        for resync in ((True, False) if rep % 2 == 0 else (False, True)):
            if len(rates[resync]) >= reps:
                continue
            root = Path(tempfile.mkdtemp(prefix="wd-burst.", dir=dir_))
            try:
                rate = steady_burst(work, root, files, resync)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            if rate is None:
                void += 1
                print(f"  resync={str(resync).lower():5} void: the kernel queue overflowed",
                      flush=True)
                continue
            rates[resync].append(rate)
            print(f"  resync={str(resync).lower():5} {rate:,.0f} events/s", flush=True)
        rep += 1
    if not rates[True] or not rates[False]:
        raise SystemExit("every run overflowed: try a smaller --burst")
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"W1 burst of {files} files, medians of {len(rates[True])} and {len(rates[False])} "
          f"({void} void): resync on {on:,.0f} events/s, off {off:,.0f}: ratio {on / off:.3f}")


def burst_during(work: Path, root: Path, paths: int, files: int, changes: int) -> None:
    """A W1 burst of creations right after the thaw of a resync: files the client learns of."""
    started = start(work, root, resync=True, paths=paths, timeout=600)
    sub = subscribe(started.sock)
    reader = sub.makefile("rb")
    assert b"subscribed" in reader.readline()
    spot, burst = root / "changes", root / "burst"
    spot.mkdir()
    burst.mkdir()
    while str(burst).encode() not in reader.readline():
        pass
    thawed = overflow_frozen(started, spot, changes)
    writer = threading.Thread(target=write_files, args=(burst, files, False))
    writer.start()
    prefix = str(burst) + "/"
    seen: set[str] = set()
    promised, synthetic, rescan = 0, 0, False
    sub.settimeout(600)
    while promised or len(seen) < files or writer.is_alive():
        msg = json.loads(reader.readline())
        if msg["type"] == "overflow":
            promised += 1 if msg.get("resync") else 0
            rescan = rescan or not msg.get("resync")
        elif msg["type"] == "resynced":
            promised -= 1
        elif msg["type"] == "event" and msg["path"].startswith(prefix):
            seen.add(msg["path"])
            synthetic += bool(msg.get("synthetic"))
    took = time.monotonic() - thawed
    sub.close()
    stop(started)
    shutil.rmtree(spot)
    shutil.rmtree(burst)
    print(f"W1 burst of {files} files during a resync: the client learnt of {len(seen)} "
          f"({100 * len(seen) / files:.1f}%), {synthetic} of them by synthetic events, "
          f"{took:.2f} s after the thaw; told to rescan: {rescan}")


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dirs", type=int, default=50_000)
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=3, help="set-up repetitions (0: none)")
    parser.add_argument("--changes", type=int, default=20_000,
                        help="files created while the watcher is frozen (default: %(default)s, "
                             "more than the default kernel queue of 16384 holds)")
    parser.add_argument("--dir", default="/dev/shm")
    parser.add_argument("--resyncs", type=int, default=1, help="resyncs timed (each)")
    parser.add_argument("--against", metavar="SRC",
                        help="another watchd source tree to time in turns with this one")
    parser.add_argument("--tree", metavar="PATH", help="keep the tree here, built once")
    parser.add_argument("--burst", type=int, metavar="N",
                        help="instead: a W1 burst of N files with and without the index")
    parser.add_argument("--during", action="store_true",
                        help="with --burst: the burst during a resync of the large tree")
    parser.add_argument("--scan", action="store_true",
                        help="instead: the CPU time of the scan alone, --resyncs times (with "
                             "--against, in turns)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wd-resync.", dir="/tmp"))
    if args.burst is not None and not args.during:
        try:
            compare_bursts(work, args.dir, args.burst, max(args.reps, 1))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    if args.tree is not None:
        root = Path(args.tree)
    else:
        root = Path(tempfile.mkdtemp(prefix="wd-resync-tree.", dir=args.dir))
    try:
        t0 = time.monotonic()
        if args.tree is None or not (root / ".complete").exists():
            shutil.rmtree(root, ignore_errors=True)
            build(root, args.dirs, args.files)
            (root / ".complete").touch()
        paths = sum(len(d) + len(f) for _, d, f in os.walk(root))
        print(f"tree: {paths} paths under {root} (ready in {time.monotonic() - t0:.1f} s)")
        times: dict[bool, list[float]] = {True: [], False: []}
        indexed: list[float] = []
        for rep in range(args.reps):
            for resync in ((True, False) if rep % 2 == 0 else (False, True)):
                started = start(work, root, resync=resync, paths=paths, timeout=600)
                times[resync].append(started.seconds)
                if resync:
                    indexed.append(started.indexed)
                stop(started)
                print(f"  set-up resync={str(resync).lower():5} active {started.seconds:.2f} s,"
                      f" indexed {started.indexed:.2f} s (tracked {started.tracked})",
                      flush=True)
        if args.reps:
            on, off = statistics.median(times[True]), statistics.median(times[False])
            full = statistics.median(indexed)
            print(f"set-up until active: resync on {on:.2f} s, off {off:.2f} s, ratio"
                  f" {on / off:.2f}; index complete {full:.2f} s ({full / off:.2f}x the set-up"
                  " without)")
        if args.scan:
            compare_scans(work, root, args)
        elif args.burst is not None:
            burst_during(work, root, paths, args.burst, args.changes)
        elif args.against is not None:
            compare_resyncs(work, root, paths, args)
        else:
            for _ in range(args.resyncs):
                report(resync_once(work, root, paths, args.changes), args.changes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.tree is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
