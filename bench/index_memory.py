"""Bytes per tracked path of the per-watch index, and the time to scan and compare a tree.

    python -m bench.index_memory [--dirs 50000] [--files 200000] [--dir /dev/shm] [--reps 3]
    python -m bench.index_memory --event-path [--reps 41]

Builds a tree of `--dirs` directories and `--files` files (empty; on a tmpfs by default) shaped
like a source tree: directories nested up to `--depth` deep, each holding a few subdirectories
and a few files, names of realistic lengths (directories 3 to 13 characters, files a stem of 3
to 17 and a usual extension; `--name-scale` stretches both). Then:

- the index's memory: the bytes tracemalloc sees allocated by one scan (watchd.index.scan),
  divided by the paths it tracks, and how much of it is directory overhead (the per-directory
  dicts and keys) against the entries (names, records, slots);
- the time of a plain scan (best of `--reps`) and of a diff of two scans of the unchanged tree.

With --event-path, instead: the daemon's cost per event of keeping the index (see event_path).

The tree is built with a fixed seed: two runs (two layouts of the index) measure the same tree.
"""

from __future__ import annotations

import argparse
import itertools
import marshal
import os
import pathlib
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable

from watchd import channel
from watchd.diff import diff
from watchd.index import TreeIndex
from watchd.listing import Dirs, at_rest, count, thaw
from watchd.narrowed import compared
from watchd.records import Item, Recorder
from watchd.scan import scan

_EXTENSIONS = (".py", ".c", ".h", ".js", ".ts", ".txt", ".md", ".json", ".go", ".rs")
_LETTERS = "abcdefghijklmnopqrstuvwxyz_"


def _name(rng: random.Random, low: int, high: int, scale: float) -> str:
    length = max(1, round(rng.randint(low, high) * scale))
    return "".join(rng.choice(_LETTERS) for _ in range(length))


def build(root: pathlib.Path, dirs: int, files: int, depth: int, scale: float) -> None:
    """A tree of `dirs` directories (root excluded) and `files` files, as the docstring says."""
    rng = random.Random(20261127)
    made: list[tuple[pathlib.Path, int]] = [(root, 0)]
    root.mkdir(parents=True)
    frontier = [(root, 0)]
    while len(made) - 1 < dirs:
        parent, level = frontier[rng.randrange(len(frontier))]
        path = parent / _name(rng, 3, 13, scale)
        try:
            path.mkdir()
        except FileExistsError:
            continue
        made.append((path, level + 1))
        if level + 1 < depth:
            frontier.append((path, level + 1))
    every = [path for path, _ in made]
    written = 0
    while written < files:
        path = every[rng.randrange(len(every))] / (_name(rng, 3, 17, scale)
                                                   + rng.choice(_EXTENSIONS))
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        written += 1


def _traced(build: Callable[[], object]) -> tuple[object, int]:
    """What build returns, and the bytes tracemalloc sees it keep."""
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    kept = build()
    used = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    return kept, used


def _scan(root: pathlib.Path) -> Dirs:
    return scan(str(root), str(root), recursive=True, wanted=None, prune=None)


def _index(root: pathlib.Path) -> TreeIndex:
    index = TreeIndex(str(root))
    index.replace(_scan(root))
    return index


def _small_records(root: pathlib.Path) -> Dirs:
    # The dict layout with every record cut to 60 bits: what a smaller int would save.
    return {key: {name: record & (1 << 60) - 1 for name, record in children.items()}
            for key, children in _scan(root).items()}


def _best(reps: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(root: pathlib.Path, reps: int) -> None:
    dirs, as_dicts = _traced(lambda: _scan(root))
    assert isinstance(dirs, dict)
    paths = count(dirs)
    print(f"tree: {paths:,} paths in {len(dirs):,} directories")
    names = sum(sys.getsizeof(name) for children in dirs.values() for name in children)
    records = sum(sys.getsizeof(r) for children in dirs.values() for r in children.values()
                  if not -5 <= r <= 256)
    keys = sum(sys.getsizeof(key) for key in dirs)
    tables = sum(sys.getsizeof(children) for children in dirs.values()) + sys.getsizeof(dirs)
    print(f"as scanned (a dict per directory): {as_dicts / paths:.1f} bytes per path: names "
          f"{names / paths:.1f}, records {records / paths:.1f}, dict tables "
          f"{tables / paths:.1f}, directory keys {keys / paths:.1f} (sys.getsizeof)")
    del dirs
    _, small = _traced(lambda: _small_records(root))
    print(f"the same with 60-bit records: {small / paths:.1f} bytes per path")
    index, rest_bytes = _traced(lambda: _index(root))
    assert isinstance(index, TreeIndex)
    print(f"index (directories at rest): {rest_bytes / paths:.1f} bytes per path")
    fresh = _scan(root)
    scan_s = _best(reps, lambda: _scan(root))
    freeze_s = _best(reps, lambda: TreeIndex(str(root)).replace(fresh))
    thaw_s = _best(reps, index.as_dirs)
    scanned = at_rest(fresh)  # as the watcher sends it
    against_s = _best(reps, lambda: compared(index, scanned))
    old, new = compared(index, scanned)
    t0 = time.perf_counter()
    result = diff(old, new, str(root), itertools.count(1))
    diff_s = time.perf_counter() - t0
    print(f"scan {scan_s:.3f} s (watcher); at the daemon: diff {diff_s:.3f} s "
          f"({result.changes} changes) of what differs, found in {against_s:.3f} s (the scan "
          f"to rest, as the watcher sends it: {freeze_s:.3f} s; the whole index thawed "
          f"{thaw_s:.3f} s); best of {reps} but the diff")


def event_path(where: str, reps: int) -> None:
    """The daemon's cost per event of keeping the index, for a message of 256 events (128
    files created and closed in 4 directories): unmarshalling it and applying it, with the
    records the watcher sends, against the same message without an index, and against the
    daemon taking the records itself (an lstat per path, as it did before)."""
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        paths = []
        for j in range(4):
            os.mkdir(f"{tmp}/sub{j}")
            for i in range(32):
                paths.append(f"{tmp}/sub{j}/module_{i:05}.py")
                os.close(os.open(paths[-1], os.O_CREAT | os.O_WRONLY, 0o644))
        items: list[Item] = [item for p in paths for item in ((0x100, 0, p, None),
                                                                 (0x8, 0, p, None))]
        plain = channel.events_frame("w", [(1.0, items)], [None])[4:]
        recorded = channel.events_frame("w", [(1.0, items)],
                                        [Recorder().records(items)])[4:]
        fresh = scan(tmp, tmp, recursive=True, wanted=None, prune=None)
        times: dict[str, list[float]] = {"no index": [], "records from the watcher": [],
                                         "lstat in the daemon": []}
        for _ in range(reps):
            for label, frame, own in (("no index", plain, None),
                                      ("records from the watcher", recorded, False),
                                      ("lstat in the daemon", plain, True)):
                index = TreeIndex(tmp)
                index.replace(fresh)
                for key in list(index.dirs):
                    index.dirs[key] = thaw(index.dirs[key])  # a directory events keep touching
                t0 = time.perf_counter()
                message = marshal.loads(frame)
                if own is not None:
                    batch = message[2][0][1]
                    index.apply(batch, Recorder().records(batch) if own else message[3][0])
                times[label].append(time.perf_counter() - t0)
        for label, took in times.items():
            print(f"{label}: {statistics.median(took) / len(items) * 1e9:.0f} ns per event "
                  f"(median of {reps})")


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--dirs", type=int, default=50_000)
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--depth", type=int, default=8, help="deepest level of directories")
    parser.add_argument("--name-scale", type=float, default=1.0,
                        help="stretch every name's length by this factor")
    parser.add_argument("--dir", default="/dev/shm", help="where to build the tree")
    parser.add_argument("--keep", help="build the tree here once and keep it (reused if there)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--event-path", action="store_true",
                        help="measure the index's cost per event in the daemon instead")
    args = parser.parse_args()
    if args.event_path:
        event_path(args.dir, max(args.reps, 21))
        return
    if args.keep:
        root = pathlib.Path(args.keep)
        if not root.exists():
            t0 = time.perf_counter()
            build(root, args.dirs, args.files, args.depth, args.name_scale)
            print(f"built {root} in {time.perf_counter() - t0:.1f} s")
        measure(root, args.reps)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = pathlib.Path(tmp) / "tree"
        t0 = time.perf_counter()
        build(root, args.dirs, args.files, args.depth, args.name_scale)
        print(f"built {args.dirs:,} directories and {args.files:,} files in "
              f"{time.perf_counter() - t0:.1f} s under {tmp}")
        measure(root, args.reps)


if __name__ == "__main__":
    main()
