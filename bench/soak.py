#!/usr/bin/env python3
"""Soak test: many clients, file churn, reloads and watcher kills, for a configurable time.

Clients: fast ones that read everything, slow ones that read in rare gulps (and so get
`dropped` notices), and reconnecting ones that hang up now and then and come back with
`since`. The slow ones run in a process of their own (as separate programs would), so the
fast ones' lag shows whether a slow reader slows the readers of other processes; with
`--slow-beside` they share the soak's process, where the documented rule lets connections of
one process hold each other back. Meanwhile files are created, written and deleted
continuously, the daemon gets a SIGHUP every few seconds and its watcher process a SIGKILL
every minute.

At the end the churn stops and an end marker is created; the soak reads the clients until
every fast one has the marker (its event, or a `dropped` notice that covers its seq), then
until every client has reached the daemon's last seq (delivered, or inside a `dropped`
notice), each wait up to --end-wait seconds. Every
client's stream is then checked: each seq from its subscription up to the last one it was sent
is either delivered or inside a `dropped` range (or, after a reconnection, replayed); a seq that
is neither is an event lost without notice, and must never happen. A client that has not
reached the daemon's last seq when the wait ends is reported as behind, with the daemon's seq
over the last samples (still publishing, or not) and whether its connection is still open: what
it has not been sent yet is not counted as lost. The daemon's memory and open fds are sampled
to show they stay flat.

Exit status: 0 when every client was sent everything and nothing was lost, 1 when an event was
lost without notice, 2 when nothing was lost but a client was still behind at the end.

    .venv/bin/python bench/soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

# At the end: how often the daemon's seq is sampled while the soak waits for the clients (a
# status reply from a starved daemon takes a while, and no client is read meanwhile), and how
# long one may take before it counts as unanswered.
PROGRESS_EVERY_S = 5.0
STATUS_TIMEOUT_S = 10.0


@dataclass
class Stream:
    """One client's view: what it was sent and what it was told it missed."""

    kind: str  # fast | slow | reconnect
    path: str
    sock: socket.socket | None = None
    buf: bytes = b""
    instance: str = ""
    start_seq: int = 0  # seqs after this are owed to us
    seen: set[int] = field(default_factory=set)
    dropped: int = 0
    overflows: int = 0
    expired: int = 0
    next_pause: float = 0.0
    last_seq: int = 0
    end_seen: float | None = None  # when the end marker reached it (monotonic)
    end_seq: int | None = None  # the end marker's seq, if its event arrived
    end_told: bool = False  # the marker reached it inside a `dropped` notice, not as an event
    eof: bool = False  # the daemon closed the connection

    def connect(self, since: int | None) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30)
        s.connect(self.path)
        self.sock, self.buf, self.eof = s, b"", False
        hello = json.loads(self.line())
        request: dict[str, object] = {"op": "subscribe", "id": 1}
        if since is not None:
            request.update(since=since, instance=hello["instance"])
        s.sendall(json.dumps(request).encode() + b"\n")
        reply = json.loads(self.line())
        if reply["type"] == "error" and reply["code"] == "since_expired":
            # Told, not silent: the gap is announced; start over from now.
            self.expired += 1
            s.sendall(b'{"op":"subscribe","id":2}\n')
            reply = json.loads(self.line())
            self.start_seq, self.seen = reply["seq"], set()
        elif since is None:
            self.start_seq = reply["seq"]
        s.setblocking(False)
        self.instance = hello["instance"]

    def line(self) -> bytes:
        """One line during the handshake (blocking); what follows stays in buf."""
        assert self.sock is not None
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("watchd closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def handle(self, line: bytes) -> None:
        msg = json.loads(line)
        t = msg["type"]
        if t == "event":
            if self.end_seen is None and msg["path"].endswith("/soak-end"):
                self.end_seen, self.end_seq = time.monotonic(), msg["seq"]
            self.seen.add(msg["seq"])
            self.last_seq = max(self.last_seq, msg["seq"])
        elif t == "dropped":
            self.dropped += msg["count"]
            self.seen.update(range(msg["first_seq"], msg["last_seq"] + 1))
            self.last_seq = max(self.last_seq, msg["last_seq"])
        elif t == "overflow":
            self.overflows += 1

    def summary(self, final_seq: int) -> Summary:
        """What the end report needs of this stream (sent across from another process)."""
        return Summary(self.kind, len(self.seen), self.dropped, self.overflows, self.expired,
                       self.last_seq, self.lost(final_seq), self.eof)

    def lost(self, final_seq: int) -> int:
        """Seqs up to final_seq that are behind what the client was sent, yet neither delivered
        nor reported: a gap is always told before anything that comes after it, so these are
        missed for good. Seqs past last_seq are not yet delivered (see behind), not lost."""
        upto = min(final_seq, self.last_seq)
        return sum(1 for s in range(self.start_seq + 1, upto + 1) if s not in self.seen)


@dataclass(frozen=True)
class Summary:
    """A stream's counts at the end, for the report."""

    kind: str
    seen: int
    dropped: int
    overflows: int
    expired: int
    last_seq: int
    lost: int
    eof: bool


def slow_readers(sock_path: str, count: int, conn: Connection) -> None:
    """The slow clients, in a process of their own: each reads in one big gulp every 2-6 s.
    Told the final seq and a deadline, they read until each has it (or the deadline), and
    send back their summaries. In their own process they test the promise that a slow reader
    never slows the readers of other processes (connections of one process may hold each
    other back, by the documented rule)."""
    rng = random.Random(5)
    streams = [Stream("slow", sock_path) for _ in range(count)]
    for s in streams:
        s.connect(None)
        s.next_pause = time.monotonic() + rng.uniform(1, 5)
    conn.send("ready")
    while not conn.poll(0.05):
        now = time.monotonic()
        for s in streams:
            if now >= s.next_pause:
                drain(s)
                s.next_pause = now + rng.uniform(2, 6)
    final, wait_s = conn.recv()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not all(s.last_seq >= final or s.eof
                                                  for s in streams):
        for s in streams:
            drain(s)
        time.sleep(0.01)
    conn.send([s.summary(final) for s in streams])


def churn(root: Path, stop: threading.Event, counter: list[int]) -> None:
    rng = random.Random(7)
    live: list[Path] = []
    i = 0
    while not stop.is_set():
        i += 1
        d = root / f"d{rng.randrange(20)}"
        d.mkdir(exist_ok=True)
        p = d / f"f{i}"
        p.write_bytes(b"x")
        live.append(p)
        if len(live) > 500:
            with contextlib.suppress(FileNotFoundError):
                live.pop(rng.randrange(len(live))).unlink()
        counter[0] += 1
        if i % 200 == 0:
            time.sleep(0.01)  # keep the churn steady rather than a flat-out burst


def sample(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, open fds) of the daemon and its children together."""
    rss, fds = 0, 0
    pids = [pid]
    with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{pid}/children") as f:
        pids += [int(x) for x in f.read().split()]
    for p in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            fds += len(os.listdir(f"/proc/{p}/fd"))
    return rss, fds


def watcher_pid(sock_path: str) -> int | None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b'{"op":"status"}\n')
        return json.loads(f.readline())["watcher"]["pid"]  # type: ignore[no-any-return]


def final_seq(sock_path: str) -> int:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(STATUS_TIMEOUT_S)
        s.connect(sock_path)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b'{"op":"status"}\n')
        return int(json.loads(f.readline())["seq"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--fast", type=int, default=8)
    parser.add_argument("--slow", type=int, default=4)
    parser.add_argument("--reconnect", type=int, default=8)
    parser.add_argument("--hup-every", type=float, default=3.0)
    parser.add_argument("--kill-every", type=float, default=60.0)
    parser.add_argument("--end-wait", type=float, default=120.0,
                        help="seconds to wait at the end for the end marker at every fast "
                        "client, and as long again for every client to catch up")
    parser.add_argument("--slow-beside", action="store_true",
                        help="read the slow clients in the soak's own process, beside the "
                        "others (default: a process of their own, as separate programs are)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="wd-soak.", dir="/tmp"))
    root = work / "tree"
    root.mkdir()
    sock_path = str(work / "w.sock")
    cfg = work / "w.toml"
    cfg.write_text(f'[daemon]\nsocket = "{sock_path}"\nclient_queue = 2000\n'
                   f'replay_buffer = 200000\nlog_level = "warning"\n'
                   f'[[watch]]\nname = "t"\npath = "{root}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "watchd", "--config", str(cfg)],
                            stderr=open(work / "log", "wb"))  # noqa: SIM115
    from bench.fidelity import wait_ready

    if not wait_ready(sock_path, proc):
        print("watchd did not start", file=sys.stderr)
        return 1
    rng = random.Random(3)
    slow_here = args.slow if args.slow_beside else 0
    streams = ([Stream("fast", sock_path) for _ in range(args.fast)]
               + [Stream("slow", sock_path) for _ in range(slow_here)]
               + [Stream("reconnect", sock_path) for _ in range(args.reconnect)])
    # Forked before the churn thread starts: the slow readers' process holds no thread.
    slow_proc, slow_conn = start_slow_readers(sock_path, args.slow - slow_here)
    sel = selectors.DefaultSelector()
    for s in streams:
        s.connect(None)
        assert s.sock is not None
        if s.kind != "slow":
            sel.register(s.sock, selectors.EVENT_READ, s)
        s.next_pause = time.monotonic() + rng.uniform(1, 5)
    stop = threading.Event()
    created = [0]
    writer = threading.Thread(target=churn, args=(root, stop, created), daemon=True)
    writer.start()

    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    next_hup, next_kill, next_sample = t0 + args.hup_every, t0 + args.kill_every, t0
    samples: list[tuple[float, int, int]] = []
    hups = kills = reconnects = 0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_hup:
            proc.send_signal(signal.SIGHUP)
            hups += 1
            next_hup = now + args.hup_every
        if now >= next_kill:
            pid = watcher_pid(sock_path)
            if pid:
                os.kill(pid, signal.SIGKILL)
                kills += 1
            next_kill = now + args.kill_every
        if now >= next_sample:
            rss, fds = sample(proc.pid)
            samples.append((now - t0, rss, fds))
            next_sample = now + max(1.0, args.minutes * 60 / 20)
        for s in streams:
            if now < s.next_pause or s.sock is None:
                continue
            if s.kind == "slow":  # one big gulp of whatever is buffered, then idle again
                drain(s)
                s.next_pause = now + rng.uniform(2, 6)
            elif s.kind == "reconnect":
                drain(s)
                sel.unregister(s.sock)
                s.sock.close()
                s.connect(s.last_seq if s.last_seq else None)
                sel.register(s.sock, selectors.EVENT_READ, s)
                reconnects += 1
                s.next_pause = now + rng.uniform(2, 8)
        for key, _ in sel.select(0.05):
            drain(key.data)

    stop.set()
    writer.join()
    marker = root / "soak-end"
    marker.touch()
    marked = time.monotonic()
    fast = [s for s in streams if s.kind == "fast"]
    # The lag: how long after the churn stopped a fast client learns of the last change. A
    # stream throttled to its slowest reader looks complete at the end, but late. The slow
    # clients are still not read meanwhile: they must not hold the others back.
    readers = [s for s in streams if s.kind != "slow"]
    progress = Progress(sock_path)
    marker_wait = wait_until(lambda: marker_reached(fast, streams), readers, progress,
                             marked + args.end_wait)
    marker_progress = progress.describe()  # the daemon's seq as this wait ended
    # Everything published up to the marker (and whatever came after it, e.g. a resync) is
    # owed to every client; wait for each to have it, or to have been told it missed it.
    final = progress.seq() or max(s.last_seq for s in streams)
    caught_up = wait_until(lambda: all(s.last_seq >= final or s.eof for s in streams), streams,
                           progress, time.monotonic() + args.end_wait)
    final_progress = progress.describe()
    summaries = [s.summary(final) for s in streams]
    summaries += finish_slow_readers(slow_proc, slow_conn, final, args.end_wait)
    rss, fds = sample(proc.pid)
    samples.append((time.monotonic() - t0, rss, fds))
    proc.terminate()
    proc.wait(10)

    delivered = sum(s.seen for s in summaries) - sum(s.dropped for s in summaries)
    dropped = sum(s.dropped for s in summaries)
    lost = sum(s.lost for s in summaries)
    behind = [s for s in summaries if s.last_seq < final]
    print(f"soak: {args.minutes:g} min, {len(summaries)} clients ({args.fast} fast, "
          f"{args.slow} slow{' beside them' if slow_here else ' in a process of their own'}, "
          f"{args.reconnect} reconnecting), {created[0]} files written, "
          f"{hups} SIGHUPs, {kills} watcher kills, {reconnects} reconnections")
    print(f"events published {final}, delivered {delivered}, reported dropped {dropped}, "
          f"overflow notices {sum(s.overflows for s in summaries)}, since_expired "
          f"{sum(s.expired for s in summaries)}, lost without notice {lost}; clients behind at "
          f"the end {len(behind)} ({sum(final - s.last_seq for s in behind)} events not yet "
          f"received, not lost)")
    lags = [s.end_seen - marked for s in fast if s.end_seen is not None]
    print(f"events published per file written {final / max(1, created[0]):.2f}; the end marker "
          f"reached the fast clients after {max(lags, default=float('nan')):.3f} s (max; "
          f"{sum(s.end_told for s in fast)} of them told it was dropped), "
          f"{len(fast) - len(lags)} not within {args.end_wait:g} s")
    if not marker_wait:
        print(f"waited {args.end_wait:g} s for the end marker at every fast client: "
              f"{marker_progress}; "
              f"{describe_behind([s.summary(final) for s in fast if not s.end_seen], 0)}")
    if not caught_up or behind:
        print(f"waited {args.end_wait:g} s more for every client to reach seq {final} "
              f"(delivered or reported dropped): {final_progress}; "
              f"{describe_behind(behind, final)}; not counted as lost")
    print("t (s)   RSS (MiB)   fds")
    for t, r, f in samples:
        print(f"{t:6.0f}   {r / 1024:9.1f}   {f:3d}")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if lost else 2 if behind or not marker_wait else 0


class Progress:
    """The daemon's published seq, sampled while the soak waits at the end: whether it is
    still publishing (behind) or not (stuck), told apart from the clients' side."""

    def __init__(self, sock_path: str) -> None:
        self.sock_path = sock_path
        self.samples: list[tuple[float, int | None]] = []  # (monotonic, seq; None: no reply)

    def seq(self) -> int | None:
        try:
            seq: int | None = final_seq(self.sock_path)
        except (OSError, ValueError, KeyError) as e:
            print(f"soak: status failed: {e}", file=sys.stderr)
            seq = None
        self.samples.append((time.monotonic(), seq))
        return seq

    def describe(self) -> str:
        """The daemon's seq over the last samples, and whether it grew."""
        recent = [(t, q) for t, q in self.samples if q is not None]
        if not recent:
            return "the daemon did not answer status"
        # Over about 20 s: longer than a hold of the watcher (flow.HOLD_LIMIT_S), during which
        # a daemon that is merely behind publishes nothing.
        (t0, q0), (t1, q1) = recent[max(0, len(recent) - 5)], recent[-1]
        state = "still publishing" if q1 > q0 else "not publishing"
        return f"the daemon's seq {q0} -> {q1} in the last {t1 - t0:.1f} s ({state})"


def wait_until(done: Callable[[], bool], streams: list[Stream], progress: Progress,
               deadline: float) -> bool:
    """Read the streams until done() or the deadline; the daemon's seq is sampled every
    PROGRESS_EVERY_S meanwhile. Returns done()."""
    next_look = 0.0
    while not done():
        now = time.monotonic()
        if now >= deadline:
            progress.seq()
            return False
        if now >= next_look:
            progress.seq()
            next_look = now + PROGRESS_EVERY_S
        for s in streams:
            drain(s)
        time.sleep(0.01)
    return True


def marker_reached(fast: list[Stream], streams: list[Stream]) -> bool:
    """Whether every fast client has the end marker: its event, or, for one that was behind,
    a `dropped` notice that covers its seq (known once any client has the event)."""
    seq = next((s.end_seq for s in streams if s.end_seq is not None), None)
    for s in fast:
        if s.end_seen is None and seq is not None and s.last_seq >= seq:
            s.end_seen, s.end_told = time.monotonic(), True
    return all(s.end_seen is not None for s in fast)


def start_slow_readers(sock_path: str, count: int) -> tuple[BaseProcess | None,
                                                            Connection | None]:
    """The slow readers' process, connected and subscribed when this returns."""
    if not count:
        return None, None
    ours, theirs = multiprocessing.Pipe()
    proc = multiprocessing.get_context("fork").Process(
        target=slow_readers, args=(sock_path, count, theirs), daemon=True)
    proc.start()
    if not ours.poll(60) or ours.recv() != "ready":
        raise RuntimeError("the slow readers' process did not subscribe within 60 s")
    return proc, ours


def finish_slow_readers(proc: BaseProcess | None, conn: Connection | None, final: int,
                        wait_s: float) -> list[Summary]:
    """Tell the slow readers the final seq; their summaries once they have it (or gave up)."""
    if proc is None or conn is None:
        return []
    conn.send((final, wait_s))
    summaries: list[Summary] = conn.recv() if conn.poll(wait_s + 30) else []
    proc.join(5)
    if not summaries:
        raise RuntimeError("the slow readers' process did not report")
    return summaries


def describe_behind(streams: list[Summary], final: int) -> str:
    """Which clients are short of final (0: of the end marker), and by how much."""
    if not streams:
        return "no client behind"
    parts = []
    for s in streams:
        state = "connection closed" if s.eof else "connected"
        gap = f", {final - s.last_seq} events behind" if final else ""
        parts.append(f"{s.kind} at seq {s.last_seq}{gap} ({state})")
    return f"{len(streams)} behind: " + "; ".join(parts)


def drain(s: Stream) -> None:
    if s.sock is None:
        return
    while True:
        try:
            chunk = s.sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            s.eof = True
            break
        s.buf += chunk
    *lines, s.buf = s.buf.split(b"\n")
    for line in lines:
        s.handle(line)


if __name__ == "__main__":
    sys.exit(main())
