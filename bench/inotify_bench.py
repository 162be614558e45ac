"""Benchmark of watchd's inotify layer against a minimal raw reader and `inotifywait -m -r`.

Three measurements, every candidate in the same run, alternating, medians of the repetitions:

  burst   a C generator creates N files (open O_CREAT, write 1 byte, close) then unlinks them,
          under the "standard mask" (CREATE MODIFY ATTRIB CLOSE_WRITE DELETE MOVED_FROM
          MOVED_TO DELETE_SELF MOVE_SELF): 4 events per file. Rate = workload events /
          (last receipt - generator start), so a reader that falls behind shows it; lag = last
          receipt - generator end; lost = 4N - events received.
  drain   a burst of 4,000 files while the reader is stopped (SIGSTOP), 16,000 events that fit
          the default queue (16,384), then SIGCONT: events / (last receipt - SIGCONT), the
          reader's own capacity in the batches it meets once it falls behind, which the burst
          (bound by the generator) cannot show. Median of 3 drains per repetition.
  setup   a recursive watch on a 3-level tree of D directories: time from the start of the
          watching code to "all watches established", VmHWM of the watching process, watches.

Candidates (each in its own process):
  raw          ctypes inotify_init1 + select.epoll + 64 KiB os.read + struct parsing, path join
  binding      watchd.inotify.InotifyFd: wait_readable + read_events (FIONREAD, one read, parse)
  tree         watchd.inotify.tree.Tree over an InotifyFd (the daemon's watcher path)
  compat       watchd.inotify.adapters.Inotify(...).event_gen()
  compat-tree  watchd.inotify.adapters.InotifyTree(...).event_gen()
  inotifywait  inotifywait -m [-r] --format '%e %w%f', read over a pipe

Run as root on Linux:  .venv/bin/python bench/inotify_bench.py [--quick] [--reps 3]
It mounts a tmpfs at /tmp/benchfs-inotify (or reuses /tmp/benchfs), compiles the shared
generator (/work/shared/bench/gen/gen.c, override with --gen-src) to /tmp, runs itself, the
generator and the candidates at nice -10 (ahead of other load on the machine), and raises
fs.inotify.max_user_watches during the set-ups (restored after).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import os
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x4000, 0x8000, 0x40000000
IN_ONLYDIR, IN_DONT_FOLLOW = 0x01000000, 0x02000000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
STD_MASK = (IN_CREATE | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM
            | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF)
STD_EVENTS = "create,modify,attrib,close_write,delete,moved_from,moved_to,delete_self,move_self"
SENTINEL = "__end__"
SENTINEL_B = SENTINEL.encode()
EVENTS_PER_FILE = 4
PROC_QUEUE = "/proc/sys/fs/inotify/max_queued_events"
PROC_WATCHES = "/proc/sys/fs/inotify/max_user_watches"
# Watches of a closed instance are freed by the kernel a little later, and other programs of
# the same user hold some: the default limit (~190k here) would cut the third set-up short.
SETUP_WATCH_LIMIT = 1 << 20

BURST_CANDIDATES = ["raw", "binding", "tree", "compat", "compat-tree", "inotifywait"]
SETUP_CANDIDATES = ["raw", "tree", "compat-tree", "inotifywait"]

now_ns = time.monotonic_ns


# ------------------------------------------------------------------------------- /proc helpers

def vm_hwm_kb(pid: int | str = "self") -> int | None:
    """Peak resident set size of a process (VmHWM) in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def watch_count(pid: int | str = "self") -> int:
    """Number of inotify watches the process holds, from /proc/<pid>/fdinfo."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    n += sum(1 for line in f if line.startswith("inotify wd:"))
    return n


# ------------------------------------------------------------------------ consumer side (child)

class Tally:
    """Counts workload events per read batch and when the last of them arrived."""

    def __init__(self) -> None:
        self.n = 0
        self.overflow = 0
        self.batches = 0
        self.t_first = 0
        self.t_last = 0
        self.done = False
        self.setup_s: float | None = None  # measured by the candidate itself (inotifywait)
        self.watcher_pid: int | None = None  # the process holding the watches, if not this one

    def batch(self, n_before: int) -> None:
        if self.n != n_before:
            t = now_ns()
            self.batches += 1
            if not self.t_first:
                self.t_first = t
            self.t_last = t


def _raw_libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    return libc


def consume_raw(root: str, recursive: bool, ready: Callable[[], None], tally: Tally) -> None:
    """The minimal reader: ctypes + epoll + 64 KiB reads + struct."""
    libc = _raw_libc()
    fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    paths: dict[int, str] = {}
    mask = STD_MASK | IN_ONLYDIR | IN_DONT_FOLLOW
    stack = [root]
    while stack:
        path = stack.pop()
        wd = libc.inotify_add_watch(fd, os.fsencode(path), mask)
        if wd < 0:
            continue
        paths[wd] = path
        if recursive:
            with contextlib.suppress(OSError), os.scandir(path) as it:
                stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
    ep = select.epoll()
    ep.register(fd, select.EPOLLIN)
    ready()
    hdr = struct.Struct("iIII").unpack_from
    while not tally.done:
        if not ep.poll(1.0):
            continue
        before = tally.n
        while True:
            try:
                buf = os.read(fd, 65536)
            except BlockingIOError:
                break
            off, end = 0, len(buf)
            while off < end:
                wd, m, _cookie, ln = hdr(buf, off)
                name = buf[off + 16: off + 16 + ln].rstrip(b"\0")
                off += 16 + ln
                if m & (IN_IGNORED | IN_Q_OVERFLOW):
                    if m & IN_Q_OVERFLOW:
                        tally.overflow += 1
                    continue
                if name == SENTINEL_B:
                    tally.done = True
                    continue
                _ev = (m, paths.get(wd, "?") + "/" + name.decode("utf-8", "surrogateescape"))
                tally.n += 1
        tally.batch(before)
    os.close(fd)


def consume_binding(root: str, recursive: bool, ready: Callable[[], None], tally: Tally) -> None:
    """watchd.inotify.InotifyFd: FIONREAD-sized read, parse_events, then the same path join."""
    from watchd.inotify import InotifyFd

    fsdecode = os.fsdecode
    with InotifyFd() as ino:
        paths = {ino.add_watch(root, STD_MASK | IN_ONLYDIR | IN_DONT_FOLLOW): root}
        ready()
        while not tally.done:
            if not ino.wait_readable(1.0):
                continue
            before = tally.n
            for wd, m, _cookie, _length, name in ino.read_events():
                if m & (IN_IGNORED | IN_Q_OVERFLOW):
                    if m & IN_Q_OVERFLOW:
                        tally.overflow += 1
                    continue
                if name == SENTINEL_B:
                    tally.done = True
                    continue
                _ev = (m, paths.get(wd, "?") + "/" + fsdecode(name))
                tally.n += 1
            tally.batch(before)


def consume_tree(root: str, recursive: bool, ready: Callable[[], None], tally: Tally) -> None:
    """watchd.inotify.tree.Tree over an InotifyFd, as the daemon's watcher runs it."""
    from watchd.inotify import InotifyFd
    from watchd.inotify.tree import Tree

    with InotifyFd() as ino:
        tree = Tree(ino, root, STD_MASK, recursive=recursive)
        tree.start()
        ready()
        while not tally.done:
            if not ino.wait_readable(1.0):
                continue
            before = tally.n
            for ev in tree.handle(ino.read_events()):
                if ev.mask & IN_Q_OVERFLOW:
                    tally.overflow += 1
                    continue
                if ev.name == SENTINEL_B:
                    tally.done = True
                    continue
                tally.n += 1
            tally.batch(before)
        tree.close()


def _consume_gen(gen: Iterator[Any], tally: Tally) -> None:
    before = tally.n
    for e in gen:
        if e is None:  # the end of one read
            tally.batch(before)
            if tally.done:
                return
            before = tally.n
            continue
        if e[0].mask & IN_Q_OVERFLOW:
            tally.overflow += 1
        elif e[3] == SENTINEL:
            tally.done = True
        else:
            tally.n += 1


def consume_compat(root: str, recursive: bool, ready: Callable[[], None], tally: Tally) -> None:
    """The compatible API: Inotify.event_gen with yield_nones marking each read."""
    from watchd.inotify.adapters import Inotify

    with Inotify() as i:
        i.add_watch(root, STD_MASK)
        ready()
        _consume_gen(i.event_gen(terminal_events=()), tally)


def consume_compat_tree(root: str, recursive: bool, ready: Callable[[], None],
                        tally: Tally) -> None:
    """The compatible API: InotifyTree.event_gen."""
    from watchd.inotify.adapters import InotifyTree

    with InotifyTree(root, STD_MASK) as t:
        ready()
        _consume_gen(t.event_gen(terminal_events=()), tally)


def consume_inotifywait(root: str, recursive: bool, ready: Callable[[], None],
                        tally: Tally) -> None:
    """inotifywait as a child; the lines it writes are parsed here."""
    cmd = ["inotifywait", "-m", "-e", STD_EVENTS, "--format", "%e %w%f"]
    if recursive:
        cmd.insert(2, "-r")
    t0 = now_ns()
    proc = subprocess.Popen([*cmd, root], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            bufsize=0)
    assert proc.stderr is not None
    assert proc.stdout is not None
    try:
        while True:
            line = proc.stderr.readline()
            if not line:
                raise RuntimeError(f"inotifywait exited with {proc.wait()}")
            if b"Watches established" in line:
                break
        tally.setup_s = (now_ns() - t0) / 1e9
        tally.watcher_pid = proc.pid
        ready()
        _read_lines(proc.stdout.fileno(), tally)
    finally:
        proc.terminate()
        proc.wait()


def _read_lines(fd: int, tally: Tally) -> None:
    ep = select.epoll()
    ep.register(fd, select.EPOLLIN)
    partial = b""
    while not tally.done:
        if not ep.poll(1.0):
            continue
        buf = os.read(fd, 65536)
        if not buf:
            break
        before = tally.n
        lines = (partial + buf).split(b"\n")
        partial = lines.pop()
        for line in lines:
            if line.endswith(SENTINEL_B):
                tally.done = True
            elif line.startswith(b"Q_OVERFLOW"):
                tally.overflow += 1
            else:
                _ev = line.decode("utf-8", "surrogateescape").partition(" ")
                tally.n += 1
        tally.batch(before)


# Each candidate imports its layer only when it runs, so that its VmHWM holds what it uses.
LAYERS: dict[str, tuple[str, ...]] = {
    "binding": ("watchd.inotify",),
    "tree": ("watchd.inotify", "watchd.inotify.tree"),
    "compat": ("watchd.inotify.adapters",),
    "compat-tree": ("watchd.inotify.adapters",),
}
CONSUMERS: dict[str, Callable[[str, bool, Callable[[], None], Tally], None]] = {
    "raw": consume_raw,
    "binding": consume_binding,
    "tree": consume_tree,
    "compat": consume_compat,
    "compat-tree": consume_compat_tree,
    "inotifywait": consume_inotifywait,
}


def child_main(cand: str, mode: str, root: str) -> None:
    """Run one candidate in this process; talk to the parent with JSON lines on stdout."""
    tally = Tally()
    recursive = mode == "setup" or cand in ("tree", "compat-tree", "inotifywait")
    for module in LAYERS.get(cand, ()):
        importlib.import_module(module)  # before the clock starts: set-up is not import time
    t0 = now_ns()

    def ready() -> None:
        setup_s = tally.setup_s or (now_ns() - t0) / 1e9
        pid = tally.watcher_pid or os.getpid()
        info = {"setup_s": setup_s, "hwm_kb": vm_hwm_kb(pid), "watches": watch_count(pid),
                "pid": pid}
        print("READY " + json.dumps(info), flush=True)
        if mode == "setup":
            tally.done = True
            raise _Stop

    try:
        CONSUMERS[cand](root, recursive, ready, tally)
    except _Stop:
        return
    print("RESULT " + json.dumps({"n": tally.n, "overflow": tally.overflow,
                                  "t_first": tally.t_first, "t_last": tally.t_last,
                                  "batches": tally.batches}), flush=True)


class _Stop(Exception):
    pass


# ------------------------------------------------------------------------- parent (orchestrator)

class Child:
    """One candidate process, started and waited for through its stdout lines."""

    def __init__(self, cand: str, mode: str, root: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", cand, mode, root],
            stdout=subprocess.PIPE, text=True, bufsize=1,
        )

    def line(self, prefix: str, timeout: float = 120.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ep = select.epoll()
        ep.register(self.proc.stdout.fileno(), select.EPOLLIN)
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not ep.poll(left):
                    raise TimeoutError(f"no {prefix} line from {self.proc.args!r} in {timeout} s")
                text = self.proc.stdout.readline()
                if not text:
                    raise RuntimeError(f"{self.proc.args!r} exited with {self.proc.wait()}")
                if text.startswith(prefix + " "):
                    return dict(json.loads(text[len(prefix) + 1:]))
        finally:
            ep.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def sysctl(path: str, value: int | None) -> Iterator[None]:
    """Set an inotify limit inside the block, restored after (None: leave it alone)."""
    if value is None:
        yield
        return
    with open(path) as f:
        old = f.read().strip()
    with open(path, "w") as f:
        f.write(str(value))
    try:
        yield
    finally:
        with open(path, "w") as f:
            f.write(old)


def queue_limit(value: int | None) -> contextlib.AbstractContextManager[None]:
    """Raise max_queued_events for instances created inside the block (restored after)."""
    return sysctl(PROC_QUEUE, value)


def run_gen(gen: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([gen, *args], check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out))


def touch_sentinel(root: str) -> None:
    os.close(os.open(os.path.join(root, SENTINEL), os.O_CREAT | os.O_WRONLY, 0o644))


def one_burst(cand: str, gen: str, fs: str, n: int, drain: bool) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="burst-", dir=fs)
    try:
        # A drain larger than the default queue needs a longer one (read at inotify_init).
        bigger = drain and EVENTS_PER_FILE * n + 16 > 16384
        with queue_limit(EVENTS_PER_FILE * n + 4096 if bigger else None):
            child = Child(cand, "burst", root)
            info = child.line("READY")
        try:
            stopped = info["pid"]
            if drain:
                os.kill(stopped, signal.SIGSTOP)
            g = run_gen(gen, "burst", root, str(n))
            t_cont = now_ns()
            if drain:
                os.kill(stopped, signal.SIGCONT)
            touch_sentinel(root)
            res = child.line("RESULT")
        finally:
            if drain:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(info["pid"], signal.SIGCONT)
            child.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    expected = EVENTS_PER_FILE * n
    start = t_cont if drain else g["t_start"]
    span = max(res["t_last"] - start, 1) / 1e9
    return {"rate": res["n"] / span, "lost": expected - res["n"], "overflow": res["overflow"],
            "gen_s": (g["t_end"] - g["t_start"]) / 1e9, "batches": res["batches"],
            "lag_ms": (res["t_last"] - g["t_end"]) / 1e6}


def one_setup(cand: str, tree_root: str) -> dict[str, Any]:
    child = Child(cand, "setup", tree_root)
    try:
        info = child.line("READY")
    finally:
        child.close()
    return {"setup_s": info["setup_s"], "hwm_mb": info["hwm_kb"] / 1024,
            "watches": info["watches"]}


def rotate(items: list[str], k: int) -> list[str]:
    k %= len(items)
    return items[k:] + items[:k]


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def fmt_ratio(value: float, ref: float) -> str:
    return f"{value / ref:.2f}" if ref else "-"


def table(burst: dict[str, list[dict[str, Any]]], drain: dict[str, list[dict[str, Any]]],
          setup: dict[str, list[dict[str, Any]]], n: int, dirs: int) -> str:
    rows = [
        f"| candidate | burst ev/s (n={n:,}) | vs raw | lost (of {EVENTS_PER_FILE * n:,}) "
        f"| runs with loss | lag ms | drain ev/s | vs raw | setup s ({dirs:,} dirs) | vs raw "
        "| vs inotifywait | VmHWM MB | watches |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    raw_b = median_of(burst["raw"], "rate") if burst.get("raw") else 0.0
    raw_d = median_of(drain["raw"], "rate") if drain.get("raw") else 0.0
    raw_s = median_of(setup["raw"], "setup_s") if setup.get("raw") else 0.0
    iw_s = median_of(setup["inotifywait"], "setup_s") if setup.get("inotifywait") else 0.0
    for cand in BURST_CANDIDATES:
        b, d, s = burst.get(cand), drain.get(cand), setup.get(cand)
        cells = [cand]
        if b:
            rate = median_of(b, "rate")
            overflow_runs = sum(1 for r in b if r["overflow"] or r["lost"])
            cells += [f"{rate:,.0f}", fmt_ratio(rate, raw_b),
                      f"{median_of(b, 'lost'):,.0f}", f"{overflow_runs}/{len(b)}",
                      f"{median_of(b, 'lag_ms'):.1f}"]
        else:
            cells += ["-"] * 5
        if d:
            rate = median_of(d, "rate")
            cells += [f"{rate:,.0f}", fmt_ratio(rate, raw_d)]
        else:
            cells += ["-"] * 2
        if s:
            secs = median_of(s, "setup_s")
            cells += [f"{secs:.3f}", fmt_ratio(secs, raw_s), fmt_ratio(secs, iw_s),
                      f"{median_of(s, 'hwm_mb'):.1f}", f"{median_of(s, 'watches'):,.0f}"]
        else:
            cells += ["-"] * 5
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def ensure_fs(explicit: str | None) -> str:
    if explicit:
        return explicit
    if os.path.ismount("/tmp/benchfs"):
        return "/tmp/benchfs"
    fs = "/tmp/benchfs-inotify"
    os.makedirs(fs, exist_ok=True)
    if not os.path.ismount(fs):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g,nr_inodes=2000000", "tmpfs", fs],
                       check=True)
    return fs


def ensure_gen(src: str) -> str:
    out = "/tmp/inotify-bench-gen"
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        subprocess.run(["gcc", "-O2", "-Wall", "-o", out, src], check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--files", type=int, default=100_000, help="files in the burst")
    ap.add_argument("--drain-files", type=int, default=4_000, help="files in the drain burst")
    ap.add_argument("--dirs", type=int, default=50_000, help="directories for the set-up")
    ap.add_argument("--quick", action="store_true", help="10k files, 5k dirs, 1 rep")
    ap.add_argument("--fs", help="a tmpfs to work in (default /tmp/benchfs or a new one)")
    ap.add_argument("--gen-src", default="/work/shared/bench/gen/gen.c")
    ap.add_argument("--only", help="comma-separated measurements: burst,drain,setup")
    ap.add_argument("--candidates", help="comma-separated subset of the candidates")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.files, args.dirs = 1, 10_000, 5_000
    if shutil.which("inotifywait") is None:
        sys.exit("inotifywait not found: apt-get install -y inotify-tools")
    with contextlib.suppress(OSError):
        # Ahead of other load on the machine; the same for every candidate and the generator.
        os.nice(-10)
    only = set((args.only or "burst,drain,setup").split(","))
    chosen = args.candidates.split(",") if args.candidates else BURST_CANDIDATES
    burst_cands = [c for c in BURST_CANDIDATES if c in chosen]
    setup_cands = [c for c in SETUP_CANDIDATES if c in chosen]
    fs = ensure_fs(args.fs)
    gen = ensure_gen(args.gen_src)
    burst: dict[str, list[dict[str, Any]]] = {c: [] for c in BURST_CANDIDATES}
    drain: dict[str, list[dict[str, Any]]] = {c: [] for c in BURST_CANDIDATES}
    setup: dict[str, list[dict[str, Any]]] = {c: [] for c in SETUP_CANDIDATES}
    tree_root = tempfile.mkdtemp(prefix="tree-", dir=fs)
    try:
        if "setup" in only and setup_cands:
            run_gen(gen, "tree", tree_root, str(args.dirs))
        for rep in range(args.reps):
            if "burst" in only:
                for cand in rotate(burst_cands, rep):
                    r = one_burst(cand, gen, fs, args.files, drain=False)
                    burst[cand].append(r)
                    print(f"rep {rep + 1} burst {cand}: {r}", file=sys.stderr)
            if "drain" in only:
                for cand in rotate(burst_cands, rep):
                    runs = [one_burst(cand, gen, fs, args.drain_files, drain=True)
                            for _ in range(3)]
                    r = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
                    drain[cand].append(r)
                    print(f"rep {rep + 1} drain {cand}: {r}", file=sys.stderr)
            if "setup" in only:
                for cand in rotate(setup_cands, rep):
                    with sysctl(PROC_WATCHES, SETUP_WATCH_LIMIT):
                        r = one_setup(cand, tree_root)
                    if r["watches"] != args.dirs + 1:
                        sys.exit(f"{cand} holds {r['watches']} watches, not {args.dirs + 1}")
                    setup[cand].append(r)
                    print(f"rep {rep + 1} setup {cand}: {r}", file=sys.stderr)
    finally:
        shutil.rmtree(tree_root, ignore_errors=True)
    print(f"medians of {args.reps}; burst n={args.files:,} files, drain n={args.drain_files:,} "
          f"files, setup {args.dirs:,} dirs; tmpfs {fs}; Python {sys.version.split()[0]}; "
          f"kernel {os.uname().release}\n")
    print(table(burst, drain, setup, args.files, args.dirs))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child_main(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
