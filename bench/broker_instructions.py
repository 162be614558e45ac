"""The broker's cost per published event in instructions, which the machine's load does not move.

    .venv/bin/python -m bench.broker_instructions --tree /tmp/main --tree .

Each case of `bench/broker_bench.run` (a sink that joins its chunks as asyncio's transport does)
runs under cachegrind with N and 2N events, in each tree (its `watchd` put first on the path);
the difference divided by N is what one more published event costs, start-up and set-up
cancelled out. Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

# (label, subscribers, events per publish, publishes a connection stays behind, batched)
CASES = (
    ("100 batched subscribers, each behind", 100, 256, 8, True),
    ("100 batched subscribers, writable", 100, 256, 0, True),
    ("1 batched subscriber", 1, 256, 0, True),
    ("100 batched subscribers behind, 8 events per publish", 100, 8, 8, True),
    ("100 line subscribers, each behind", 100, 256, 8, False),
)

RUN = """
import bench.broker_bench as b, watchd
assert watchd.__file__.startswith({tree!r}), watchd.__file__
b.run({events}, {batch}, {subs}, "none", 0, True, {framed}, 256, b.JoinSink, {behind})
"""


def instructions(tree: Path, events: int, batch: int, subs: int, behind: int,
                 framed: bool) -> int:
    """Instructions of one run of broker_bench.run in a tree, under cachegrind."""
    code = RUN.format(tree=str(tree), events=events, batch=batch, subs=subs, framed=framed,
                      behind=behind)
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no",
                           "--cachegrind-out-file=/dev/null", sys.executable, "-c", code],
                          cwd=tree, env=env, capture_output=True, text=True, check=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    assert found is not None, done.stderr
    return int(found.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, action="append",
                        help="a checkout whose watchd to count (repeat to compare)")
    parser.add_argument("--events", type=int, default=10240, help="N")
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [Path(__file__).resolve().parent.parent])]
    n = args.events
    for label, subs, batch, behind, framed in CASES:
        counts = []
        for tree in trees:
            small = instructions(tree, n, batch, subs, behind, framed)
            large = instructions(tree, 2 * n, batch, subs, behind, framed)
            counts.append((large - small) // n)
        ratio = f" ({counts[-1] / counts[0]:.2f}x)" if len(counts) > 1 else ""
        print(f"{label:<55} " + " ".join(f"{c:>9,}" for c in counts) + ratio, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
