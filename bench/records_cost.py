#!/usr/bin/env python3
"""What the index's records cost the watcher for a burst of creates, as in the peer harness's W5.

`watchd.records.Recorder.records` is what the watcher runs for a watch with `resync` on before
it sends a read's events: one lstat per path named, and the packing of its record. Here it is
given W5's reads (create, modify and close_write of each new file, `--per-read` files a read)
for files that exist on a tmpfs, and timed in CPU seconds (the least of `--reps`), beside
`Recorder.named` alone (which paths to look at, no system call).

    .venv/bin/python -m bench.records_cost --files 10000 --reps 7
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bench.client_cost import best_cpu_s
from watchd.inotify.flags import IN_CLOSE_WRITE, IN_CREATE, IN_MODIFY
from watchd.records import Item, Recorder


def reads(root: Path, files: int, per_read: int) -> list[list[Item]]:
    """W5's reads for `files` new files under root (made here), `per_read` files each."""
    items: list[Item] = []
    for n in range(files):
        path = root / f"f{n:07}"
        path.write_bytes(b"x")
        items += [(mask, 0, str(path), None) for mask in (IN_CREATE, IN_MODIFY, IN_CLOSE_WRITE)]
    step = 3 * per_read
    return [items[start : start + step] for start in range(0, len(items), step)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--per-read", type=int, default=100)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--fs", type=Path, default=Path("/dev/shm"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="records-cost.", dir=args.fs))
    try:
        batches = reads(root, args.files, args.per_read)
        recorded = best_cpu_s(lambda: [Recorder().records(b) for b in batches], args.reps)
        named = best_cpu_s(lambda: [Recorder().named(b) for b in batches], args.reps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.files:,} files in reads of {args.per_read}: Recorder.records "
          f"{recorded * 1e3:.1f} ms CPU ({recorded / args.files * 1e6:.2f} µs a file), "
          f"of which Recorder.named {named * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
