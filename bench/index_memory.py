"""Bytes per tracked path of the per-watch index, and the time to scan and compare a tree.

    python -m bench.index_memory [--dirs 200] [--files 100] [--dir /dev/shm]

Builds dirs x files empty files (names like file00042.txt), scans them into an index under
tracemalloc, and reports the bytes per path; then times a plain scan and a diff of two scans.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import tempfile
import time
import tracemalloc

from watchd.diff import diff
from watchd.index import count, scan


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--dirs", type=int, default=200)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--dir", default="/dev/shm")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = pathlib.Path(tmp) / "tree"
        for d in range(args.dirs):
            sub = root / f"d{d:05}"
            sub.mkdir(parents=True)
            for f in range(args.files):
                (sub / f"file{f:05}.txt").touch()
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        dirs = scan(str(root), str(root), recursive=True, wanted=None, prune=None)
        used = tracemalloc.get_traced_memory()[0] - start
        tracemalloc.stop()
        paths = count(dirs)
        print(f"index: {paths} paths, {used} bytes, {used / paths:.1f} bytes per path")
        t0 = time.perf_counter()
        again = scan(str(root), str(root), recursive=True, wanted=None, prune=None)
        t1 = time.perf_counter()
        result = diff(dirs, again, str(root), itertools.count(1))
        t2 = time.perf_counter()
        print(f"scan {t1 - t0:.3f} s, diff {t2 - t1:.3f} s ({result.changes} changes)")


if __name__ == "__main__":
    main()
