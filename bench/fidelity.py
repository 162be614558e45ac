#!/usr/bin/env python3
"""Model-based fidelity check: rebuild a watched tree from watchd's events alone.

Applies a long random sequence of file-system operations to a watched tree while a client is
subscribed, keeps a model of the tree built only from the events it receives, and at every
pause compares the model with the real tree. Every difference is a bug unless an `overflow`
notice without `"resync": true` (or a `dropped`) came first: then the model is re-read from
disk and the difference is counted as announced. After an `overflow` with `"resync": true`
the model is not re-read: the events up to `resynced` must make it exact.

With --faults (root: it lowers fs.inotify.max_queued_events while the daemon starts), losses
are made at random points: the watcher is SIGSTOPped for a few operations (its kernel queue
overflows; with --flood, always), or SIGKILLed (it is replaced).

With --restart-every, the daemon runs with a state directory and is stopped (SIGTERM) or
killed with its watcher (SIGKILL), in turn, at random points between operations; a few
operations are made while it is down, and it is started again. The subscriber follows it
with Client.follow (resuming with since and instance), and no seq may come twice.

    .venv/bin/python -m bench.fidelity --ops 10000 --seed 1
    flock /tmp/watchd-suite.lock .venv/bin/python -m bench.fidelity --ops 10000 --seed 1 \
        --faults --flood 30 --restart-every 1000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench.sysctl import CannotSet, lowered
from watchd.client import Backoff, Client

NON_UTF8 = [b"caf\xe9", b"\xff\xfename", b"ok-\x80"]


@dataclass
class Model:
    """The tree as the events describe it: relative path (bytes) -> is_dir."""

    root: bytes
    entries: dict[bytes, bool] = field(default_factory=dict)
    moved: dict[int, dict[bytes, bool]] = field(default_factory=dict)  # cookie -> moved subtree

    def rel(self, path: str) -> bytes:
        raw = os.fsencode(path)
        assert raw.startswith(self.root + b"/"), raw
        return raw[len(self.root) + 1:]

    def subtree(self, rel: bytes) -> dict[bytes, bool]:
        prefix = rel + b"/"
        return {p: d for p, d in self.entries.items() if p == rel or p.startswith(prefix)}

    def remove(self, rel: bytes) -> dict[bytes, bool]:
        gone = self.subtree(rel)
        for p in gone:
            del self.entries[p]
        return gone

    def apply(self, event: dict[str, object]) -> None:
        kind = event["kind"]
        path = str(event["path"])
        if os.fsencode(path) == self.root:
            return
        rel = self.rel(path)
        if kind == "create":
            self.entries[rel] = bool(event["is_dir"])
        elif kind == "delete":
            self.remove(rel)
        elif kind == "moved_from":
            self.moved[int(event["cookie"])] = self.remove(rel)  # type: ignore[call-overload]
        elif kind == "moved_to":
            old = self.moved.pop(int(event["cookie"]), None)  # type: ignore[call-overload]
            self.remove(rel)  # a rename over an existing entry replaces it
            if old and "src_path" in event:
                src = self.rel(str(event["src_path"]))
                for p, d in old.items():
                    self.entries[rel + p[len(src):]] = d
            else:
                self.entries[rel] = bool(event["is_dir"])

    def reset_from_disk(self) -> None:
        self.entries = snapshot(self.root)
        self.moved.clear()


def snapshot(root: bytes) -> dict[bytes, bool]:
    out: dict[bytes, bool] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        base = dirpath[len(root) + 1:]
        for name in dirnames:
            out[os.path.join(base, name) if base else name] = True
        for name in filenames:
            out[os.path.join(base, name) if base else name] = False
    return out


class Ops:
    """Random operations on the watched tree (and an outside area for moves in and out)."""

    def __init__(self, root: bytes, outside: bytes, rng: random.Random) -> None:
        self.root, self.outside, self.rng = root, outside, rng
        self.counter = 0
        self.did: tuple[object, ...] = ()  # the last operation and its paths, for --trace

    def name(self) -> bytes:
        self.counter += 1
        if self.rng.random() < 0.05:
            return self.rng.choice(NON_UTF8) + b"%d" % self.counter
        return b"n%d" % self.counter

    def dirs(self) -> list[bytes]:
        out = [self.root]
        for dirpath, dirnames, _ in os.walk(self.root):
            out += [os.path.join(dirpath, d) for d in dirnames]
        return out

    def files(self) -> list[bytes]:
        out = []
        for dirpath, _, filenames in os.walk(self.root):
            out += [os.path.join(dirpath, f) for f in filenames]
        return out

    def run_one(self) -> str:
        rng = self.rng
        op = rng.choice(["create", "create", "write", "chmod", "rename", "mkdir", "mkdir",
                         "rmdir", "rmtree", "movedir", "move_in", "move_out", "mkdir_p",
                         "unlink"])
        dirs = self.dirs()
        files = self.files()
        here = rng.choice(dirs)
        self.did = (op, here)
        try:
            if op == "create":
                with open(os.path.join(here, self.name()), "wb") as f:
                    f.write(b"x")
            elif op == "write" and files:
                with open(rng.choice(files), "ab") as f:
                    f.write(b"y")
            elif op == "chmod" and files:
                os.chmod(rng.choice(files), rng.choice([0o600, 0o644]))
            elif op == "rename" and files:
                src, dst = rng.choice(files), os.path.join(rng.choice(dirs), self.name())
                self.did = (op, src, dst)
                os.rename(src, dst)
            elif op == "unlink" and files:
                os.unlink(rng.choice(files))
            elif op == "mkdir":
                os.mkdir(os.path.join(here, self.name()))
            elif op == "mkdir_p":
                deep = os.path.join(here, *[self.name() for _ in range(rng.randint(2, 5))])
                self.did = (op, deep)
                os.makedirs(deep)
                with open(os.path.join(deep, b"leaf"), "wb"):
                    pass
            elif op == "rmdir" and len(dirs) > 1:
                empty = [d for d in dirs[1:] if not os.listdir(d)]
                if empty:
                    os.rmdir(rng.choice(empty))
            elif op == "rmtree" and len(dirs) > 1 and rng.random() < 0.3:
                shutil.rmtree(rng.choice(dirs[1:]))
            elif op == "movedir" and len(dirs) > 1:
                src = rng.choice(dirs[1:])
                dst_parent = rng.choice(dirs)
                if not (dst_parent + b"/").startswith(src + b"/"):
                    dst = os.path.join(dst_parent, self.name())
                    self.did = (op, src, dst)
                    os.rename(src, dst)
            elif op == "move_in":
                staged = os.path.join(self.outside, self.name())
                os.makedirs(os.path.join(staged, b"inner"))
                for i in range(rng.randint(0, 4)):
                    with open(os.path.join(staged, b"inner", b"f%d" % i), "wb"):
                        pass
                dst = os.path.join(here, self.name())
                self.did = (op, staged, dst)
                os.rename(staged, dst)
            elif op == "move_out" and len(dirs) > 1 and rng.random() < 0.5:
                src, dst = rng.choice(dirs[1:]), os.path.join(self.outside, self.name())
                self.did = (op, src, dst)
                os.rename(src, dst)
        except FileNotFoundError:
            pass  # a race with our own earlier choice (e.g. a dir removed by an rmtree)
        return op


class Subscriber:
    """A `Client.follow` subscription: it follows the daemon through its restarts, resuming
    with since and instance, and checks that no seq comes twice."""

    def __init__(self, sock_path: str, trace: IO[str] | None = None) -> None:
        self.trace = trace  # every message received is written there, as received
        self.follower = Client.follow(socket_path=sock_path, timeout=30,
                                      backoff=Backoff(initial=0.02, maximum=0.3))
        self.follower.start()
        self.resyncs = 0  # overflow notices with "resync": true
        self.pending = 0  # of those, not yet followed by "resynced"
        self.reasons: dict[str, int] = {}  # overflow notices by reason
        self.last_seq = 0
        self.repeats: list[int] = []  # event seqs received again, or out of order

    def close(self) -> None:
        self.follower.close()

    def until_marker(self, model: Model, marker: str, timeout: float = 60) -> int:
        """Apply events to the model until the marker's create, and until every resync
        announced is over; returns the notices that call for a rescan (losses not resynced)."""
        overflows = 0
        seen = False
        while True:
            msg = self.follower.get(timeout)
            if msg is None:
                waiting = [] if seen else [f"the create of {marker}"]
                waiting += [f"{self.pending} resynced notices owed"] if self.pending else []
                raise TimeoutError(f"no message within {timeout} s, waiting for "
                                   f"{' and '.join(waiting)} (last seq {self.last_seq})")
            if self.trace is not None:
                self.trace.write(json.dumps(msg) + "\n")
            if msg["type"] == "event":
                if msg["seq"] <= self.last_seq:
                    self.repeats.append(msg["seq"])
                self.last_seq = msg["seq"]
                model.apply(msg)
                seen = seen or (msg["kind"] == "create" and msg["path"] == marker)
            elif msg["type"] == "overflow" and msg.get("resync") is True:
                self.reasons[msg["reason"]] = self.reasons.get(msg["reason"], 0) + 1
                self.resyncs += 1
                self.pending += 1
            elif msg["type"] == "resynced":
                self.pending = max(0, self.pending - 1)
            elif msg["type"] in ("overflow", "dropped"):
                overflows += 1
                self.pending = 0  # a rescan is due: what a resync would have said is moot
            if seen and not self.pending:
                return overflows


@dataclass
class Result:
    ops: int
    pauses: int
    differences: int  # unannounced: bugs
    announced: int  # after an overflow/dropped notice
    details: list[str]
    resyncs: int = 0  # overflow notices with "resync": true
    stops: int = 0  # faults made: watcher stopped
    kills: int = 0  # faults made: watcher killed
    overflows: int = 0  # of the resyncs: after the kernel's queue overflowed
    restarts: int = 0  # of the resyncs: after the watcher was replaced
    resumed: int = 0  # of the resyncs: after the daemon resumed from its state
    daemon_stops: int = 0  # faults made: daemon stopped (SIGTERM) and started again
    daemon_kills: int = 0  # faults made: daemon and watcher killed (SIGKILL), started again
    repeats: list[int] = field(default_factory=list)  # event seqs the follower yielded again


@dataclass
class Faults:
    """Losses made at random points (see the module): stop or kill the watcher process."""

    watcher_pid: Callable[[], int | None]
    rng: random.Random
    every: int = 50  # operations between stops, on average
    # Operations between kills: each replacement that dies young waits longer to start (the
    # crash-loop backoff), so kills are spaced out.
    kill_every: int = 1500
    # A file in the tree that is changed this many times (3 kernel events each) before a stopped
    # watcher is continued, so that each stop overflows a queue of up to 3 * flood events
    # whatever the operations made (0: none).
    flood_file: Path | None = None
    flood: int = 0
    stopped: int | None = None  # pid of the watcher while it is stopped
    since_kill: int = 0
    resume_after: int = 0  # operations left before it is continued
    stops: int = 0
    kills: int = 0

    def step(self) -> None:
        """Called after each operation."""
        self.since_kill += 1
        if self.stopped is not None:
            self.resume_after -= 1
            if self.resume_after <= 0:
                self.resume()
            return
        if self.rng.randrange(self.every):
            return
        pid = self.watcher_pid()
        if pid is None:
            return  # being replaced
        with contextlib.suppress(ProcessLookupError):
            if self.since_kill >= self.kill_every:
                os.kill(pid, signal.SIGKILL)
                self.kills += 1
                self.since_kill = 0
            else:
                os.kill(pid, signal.SIGSTOP)
                self.stopped, self.resume_after = pid, self.rng.randint(5, 40)
                self.stops += 1

    def resume(self) -> None:
        if self.stopped is not None:
            if self.flood_file is not None:
                for _ in range(self.flood):
                    # modify, close_write, attrib: no two alike in a row, so never merged.
                    # Made again if an operation took it away.
                    with self.flood_file.open("ab") as f:
                        f.write(b"z")
                    os.utime(self.flood_file)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.stopped, signal.SIGCONT)
            self.stopped = None


@dataclass
class Restarts:
    """Daemon restarts at random points between operations (the subscriber is not caught up):
    stopped with SIGTERM or killed with SIGKILL (its watcher too, as a crash would), in turn;
    a few operations are made while it is down; then it is started again on the same state
    directory, so that it resumes its instance, and the subscriber follows it."""

    stop: Callable[[signal.Signals], None]  # stop the daemon with this signal, wait for its end
    start: Callable[[], None]  # start it again; returns once its watches are active
    rng: random.Random
    every: int = 1000  # operations between restarts, on average
    down_ops: int = 20  # at most this many operations while it is down
    next_at: int = 0
    done: int = 0
    terms: int = 0
    kills: int = 0

    def __post_init__(self) -> None:
        self.plan()

    def plan(self) -> None:
        self.next_at = self.done + self.rng.randint(max(1, self.every // 2), self.every * 3 // 2)

    def step(self, before_stop: Callable[[signal.Signals], None],
             ops_while_down: Callable[[int], None]) -> None:
        """Called after each operation: restart the daemon if it is time."""
        self.done += 1
        if self.done < self.next_at:
            return
        kill = self.terms > self.kills  # in turn, SIGTERM first
        sig = signal.SIGKILL if kill else signal.SIGTERM
        before_stop(sig)
        self.stop(sig)
        if kill:
            self.kills += 1
        else:
            self.terms += 1
        ops_while_down(self.rng.randint(0, self.down_ops))
        self.start()
        self.plan()


def watcher_of(daemon_pid: int) -> int | None:
    """The daemon's watcher process (its child), or None while there is none."""
    try:
        tasks = os.listdir(f"/proc/{daemon_pid}/task")
    except OSError:
        return None  # the daemon is down (being restarted)
    for task in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{daemon_pid}/task/{task}/children") as f:
            children = f.read().split()
            if children:
                return int(children[0])
    return None


def run(root: Path, outside: Path, sock_path: str, ops: int, pause_every: int, seed: int,
        faults: Faults | None = None, trace: IO[str] | None = None,
        restarts: Restarts | None = None) -> Result:
    """With trace, every operation and every message received is written there."""
    rng = random.Random(seed)
    broot = os.fsencode(root)
    model = Model(broot, snapshot(broot))
    sub = Subscriber(sock_path, trace)
    runner = Ops(broot, os.fsencode(outside), rng)
    differences = announced = pauses = 0
    details: list[str] = []

    def while_down(count: int) -> None:
        for _ in range(count):
            runner.run_one()
            if trace is not None:
                trace.write(f"op while down: {runner.did!r}\n")

    def before_stop(sig: signal.Signals) -> None:
        if faults is not None:
            faults.resume()  # a stopped watcher would hold a SIGTERM's shutdown up
        if trace is not None:
            trace.write(f"daemon restart: {sig.name}\n")

    try:
        for done in range(1, ops + 1):
            runner.run_one()
            if trace is not None:
                trace.write(f"op {done}: {runner.did!r}\n")
            if restarts is not None:
                restarts.step(before_stop, while_down)
            if faults is not None:
                faults.step()
                if trace is not None:
                    trace.write(f"faults: stopped {faults.stopped}, stops {faults.stops}, "
                                f"kills {faults.kills}\n")
            if done % pause_every and done != ops:
                continue
            if faults is not None:
                faults.resume()
            pauses += 1
            marker = root / f"marker-{pauses}"
            marker.touch()
            overflows = sub.until_marker(model, str(marker))
            real = snapshot(broot)
            if model.entries != real:
                if overflows:
                    announced += 1
                else:
                    differences += 1
                    missing = sorted(set(real) - set(model.entries))[:5]
                    extra = sorted(set(model.entries) - set(real))[:5]
                    details.append(f"after op {done}: missing {missing}, extra {extra}")
                model.reset_from_disk()
    finally:
        if faults is not None:
            faults.resume()
        sub.close()
    return Result(ops, pauses, differences, announced, details, sub.resyncs,
                  faults.stops if faults else 0, faults.kills if faults else 0,
                  sub.reasons.get("kernel_queue", 0), sub.reasons.get("watcher_restart", 0),
                  sub.reasons.get("daemon_restart", 0),
                  restarts.terms if restarts else 0, restarts.kills if restarts else 0,
                  sub.repeats)


def wait_ready(sock_path: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> bool:
    """Wait until the daemon answers and its watch is active."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError), socket.socket(socket.AF_UNIX) as s:
            s.connect(sock_path)
            f = s.makefile("rb")
            f.readline()
            s.sendall(b'{"op":"status"}\n')
            if all(w["state"] == "active" for w in json.loads(f.readline())["watches"]):
                return True
        time.sleep(0.05)
    return False


class DaemonProcess:
    """The daemon on one configuration, started again after each stop (its own session, so
    that a SIGKILL takes its watcher too)."""

    def __init__(self, cfg: Path, sock: str) -> None:
        self.cfg, self.sock = cfg, sock
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "watchd", "--config", str(self.cfg)],
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        if not wait_ready(self.sock, self.proc):
            raise RuntimeError("watchd did not start")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if sig == signal.SIGKILL:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=10000)
    parser.add_argument("--pause-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", action="store_true", help="stop and kill the watcher")
    parser.add_argument("--kill-every", type=int, default=1500,
                        help="operations between watcher kills (--faults)")
    parser.add_argument("--stop-every", type=int, default=50,
                        help="operations between watcher stops, on average (--faults)")
    parser.add_argument("--flood", type=int, default=0,
                        help="before a stopped watcher is continued, change a file of the tree "
                        "this many times (3 events each), so that each stop overflows its "
                        "queue (--faults; 0: no flood)")
    parser.add_argument("--queue", type=int, default=64,
                        help="fs.inotify.max_queued_events while the daemon starts (--faults; "
                        "0: leave it as it is)")
    parser.add_argument("--restart-every", type=int, default=0,
                        help="operations between daemon restarts (SIGTERM and SIGKILL in "
                        "turn, with a state directory), on average (0: none)")
    parser.add_argument("--trace", type=Path,
                        help="write every operation and every message received to this file")
    return parser.parse_args()


def main() -> int:
    args = arguments()
    work = Path(tempfile.mkdtemp(prefix="wd-fid.", dir="/tmp"))
    root, outside = work / "tree", work / "outside"
    root.mkdir()
    outside.mkdir()
    cfg = work / "w.toml"
    sock = str(work / "w.sock")
    state = f'state_directory = "{work / "state"}"\n' if args.restart_every else ""
    cfg.write_text(f'[daemon]\nsocket = "{sock}"\nreplay_buffer = 1000\n{state}'
                   f'[[watch]]\nname = "t"\npath = "{root}"\n')
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: sys.exit(1))  # unwinds through the cleanup below
    daemon = DaemonProcess(cfg, sock)
    with contextlib.ExitStack() as cleanup:
        # Undone last to first, however the run ends (a SIGKILL: see bench.sysctl).
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        cleanup.callback(daemon.stop)
        if args.faults and args.queue:
            # Lowered for the whole run: each replacement watcher takes the limit in force
            # when it starts. Run this under the lock the test suite takes for such changes.
            try:
                cleanup.enter_context(lowered("max_queued_events", args.queue))
            except CannotSet as e:
                print(f"{e} (--faults lowers it: run as root, or give --queue 0)",
                      file=sys.stderr)
                return 1
        try:
            daemon.start()
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
        started = time.monotonic()
        faults = (Faults(lambda: watcher_of(daemon.pid) if daemon.pid else None,
                         random.Random(args.seed + 1), every=args.stop_every,
                         kill_every=args.kill_every,
                         flood_file=root / "flood" if args.flood else None, flood=args.flood)
                  if args.faults else None)
        restarts = (Restarts(daemon.stop, daemon.start, random.Random(args.seed + 2),
                             every=args.restart_every) if args.restart_every else None)
        trace = (cleanup.enter_context(args.trace.open("w", errors="backslashreplace"))
                 if args.trace else None)
        result = run(root, outside, sock, args.ops, args.pause_every, args.seed, faults,
                     trace, restarts)
        took = time.monotonic() - started
    report(result, args.seed, took)
    return 1 if result.differences or result.repeats else 0


def report(result: Result, seed: int, took: float) -> None:
    print(f"{result.ops} operations, {result.pauses} comparisons, seed {seed}, {took:.1f} s: "
          f"{result.differences} unannounced differences, {result.announced} after a notice, "
          f"{len(result.repeats)} seqs yielded twice; "
          f"{result.resyncs} resyncs announced ({result.overflows} kernel queue overflows, "
          f"{result.restarts} watcher restarts, {result.resumed} daemon resumptions), "
          f"watcher stopped {result.stops} times, killed {result.kills} times; "
          f"daemon stopped (SIGTERM) {result.daemon_stops} times, killed (SIGKILL) "
          f"{result.daemon_kills} times")
    for line in result.details:
        print("  " + line)
    if result.repeats:
        print(f"  seqs yielded twice: {result.repeats[:10]}")


if __name__ == "__main__":
    sys.exit(main())
