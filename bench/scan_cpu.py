"""CPU time of a resync's scan alone (watchd.scan.scan_parts), in this process.

    python -m bench.scan_cpu TREE [--reps 3] [--entered]

Prints one JSON line: the paths scanned and, per repetition, the user and system CPU seconds
of one whole scan (getrusage). With --entered the scan enters only the directories a real
tree (watchd.inotify.tree.Tree, one inotify watch per directory) watches, asking the tree
(Tree.watches_dir) as the watcher does after a loss (watchd.fill.scan_whole); without, it
enters every directory. With --entered, "walk" is the CPU seconds of the tree's own walk of a
resync (Tree.resync) before each scan. bench.resync_scale --scan runs this for two checkouts
in turns.
"""

from __future__ import annotations

import argparse
import json
import resource
from collections.abc import Callable

from watchd.events import DEFAULT_KINDS, kinds_mask
from watchd.inotify import InotifyFd
from watchd.inotify.tree import Tree
from watchd.listing import AtRest
from watchd.scan import scan_parts

PART = 4096  # entries per part, as the watcher scans (watchd.fill.PART)


def scan_once(root: str, entered: Callable[..., bool] | None) -> tuple[int, float, float]:
    """One whole scan: (paths, user s, system s)."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    dirs: AtRest = {}
    for part in scan_parts(root, root, recursive=True, wanted=None, prune=None,
                           part_size=PART, entered=entered):
        dirs.update(part)
    after = resource.getrusage(resource.RUSAGE_SELF)
    paths = sum(names.count("/") + 1 for names, _ in dirs.values() if names)
    return paths, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--entered", action="store_true",
                        help="enter only the directories a tree watches (Tree.watches_dir)")
    args = parser.parse_args()
    # Called as the other checkout's scan calls it (--against): its arguments may differ.
    entered: Callable[..., bool] | None = None
    ino = None
    walks: list[float] = []
    if args.entered:
        ino = InotifyFd()
        tree = Tree(ino, args.tree, kinds_mask(DEFAULT_KINDS), recursive=True, synthetic=True,
                    real_root=args.tree, real_fs_only=True)
        tree.start()
        entered = tree.watches_dir
    runs = []
    for _ in range(args.reps):
        if ino is not None:
            # As after a loss: the tree's own walk (Tree.resync), then the scan.
            before = resource.getrusage(resource.RUSAGE_SELF)
            tree.resync()
            after = resource.getrusage(resource.RUSAGE_SELF)
            walks.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        runs.append(scan_once(args.tree, entered))
    if ino is not None:
        ino.close()
    print(json.dumps({"paths": runs[0][0], "user": [r[1] for r in runs],
                      "sys": [r[2] for r in runs], "walk": walks}))


if __name__ == "__main__":
    main()
