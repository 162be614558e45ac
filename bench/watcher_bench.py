#!/usr/bin/env python3
"""The watcher process's own costs, in one run, so that the ratios mean something.

1. The per-event path (read, parse, tree, extract, marshal) on a real inotify burst: with the
   collector's default thresholds, with the watcher's tuned ones, and with those and plain
   tuples from the parser (read_raw) instead of RawEvents (read_events); alternating.
2. Draining a backlog of frames to a daemon that reads 64 KiB at a time: one bytearray cut
   from the front after every write (the earlier design) against whole frames in a deque
   written with sendmsg (the watcher's design).

    .venv/bin/python -m bench.watcher_bench [--fs /tmp/benchfs]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import marshal
import operator
import os
import shutil
import socket
import statistics
import threading
import time
from collections import deque
from pathlib import Path

from watchd.events import DEFAULT_KINDS, kinds_mask
from watchd.inotify import InotifyFd
from watchd.inotify.tree import Tree

ITEM = operator.itemgetter(0, 1, 2, 3)
FILES = 3500  # 4 events each: 14,000, inside the default kernel queue of 16,384


def event_path_ns(root: Path, *, plain: bool) -> float:
    """Nanoseconds of watcher CPU per event for one burst."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for i in range(100):
        (root / f"d{i}").mkdir()
    with InotifyFd() as ino:
        tree = Tree(ino, str(root), kinds_mask(DEFAULT_KINDS), synthetic=True)
        tree.start()
        for i in range(FILES):
            p = root / f"d{i % 100}" / f"f{i}"
            p.write_bytes(b"x")
            p.unlink()
        start = time.process_time_ns()
        events = 0
        read = ino.read_raw if plain else ino.read_events
        while raw := read():
            items = list(map(ITEM, tree.handle(raw)))
            marshal.dumps(("ev", "w", 1.0, items))
            events += len(raw)
        return (time.process_time_ns() - start) / events


def drain_s(strategy: str, frames: list[bytes]) -> float:
    """Seconds to write every frame to a peer that reads 64 KiB at a time."""
    ours, theirs = socket.socketpair()
    total = sum(map(len, frames))

    def reader() -> None:
        got = 0
        while got < total:
            got += len(theirs.recv(65536))

    thread = threading.Thread(target=reader)
    start = time.perf_counter()
    thread.start()
    if strategy == "bytearray":
        buf = bytearray(b"".join(frames))
        while buf:
            sent = ours.send(memoryview(buf)[: 1 << 20])
            del buf[:sent]
    else:
        out = deque(frames)
        while out:
            sent = ours.sendmsg(list(itertools.islice(out, 64)))
            while sent and sent >= len(out[0]):
                sent -= len(out.popleft())
            if sent:
                out[0] = out[0][sent:]
    thread.join()
    took = time.perf_counter() - start
    ours.close()
    theirs.close()
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fs", type=Path, default=Path("/tmp/benchfs"))
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    root = args.fs / f"watcher-bench-{os.getpid()}"
    default, tuned, plain = [], [], []
    try:
        for _ in range(args.reps):
            gc.set_threshold(700, 10, 10)
            default.append(event_path_ns(root, plain=False))
            gc.freeze()
            gc.set_threshold(100_000, 20, 100)
            tuned.append(event_path_ns(root, plain=False))
            plain.append(event_path_ns(root, plain=True))
            gc.unfreeze()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    d, t, p = (statistics.median(x) for x in (default, tuned, plain))
    print(f"event path, ns/event (median of {args.reps}): default gc {d:.0f}; tuned gc {t:.0f} "
          f"({t / d:.2f}x); tuned gc and plain tuples {p:.0f} ({p / d:.2f}x, {p / t:.2f}x of "
          "tuned alone)")
    frames = [os.urandom(40_000) for _ in range(500)]  # 20 MB: a backlog after a pause
    old = [drain_s("bytearray", frames) for _ in range(3)]
    new = [drain_s("deque", frames) for _ in range(3)]
    print(f"drain a 20 MB backlog, s (median of 3): bytearray {statistics.median(old):.3f}, "
          f"deque+sendmsg {statistics.median(new):.3f}, "
          f"ratio {statistics.median(new) / statistics.median(old):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
