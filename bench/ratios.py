#!/usr/bin/env python3
"""Head/base ratios from one bench/compare.sh run: the harness's results and two soak outputs.

    python bench/ratios.py RESULTS.jsonl [--soak-base FILE --soak-head FILE]

RESULTS.jsonl holds one line per harness run and (peer, workload, params) with every repetition
(the shared peer harness's format); the two trees are the peers `watchd:tree=base` and
`watchd:tree=head` (with --frames, `watchd:batch=1` and `watchd:batch=true`). Repetitions
from several harness runs in the file are pooled; the table shows their medians. The soak
files are what `python -m bench.soak` printed.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

BASE, HEAD = "watchd:tree=base", "watchd:tree=head"
# With frames (compare.sh --frames) the peer spec carries `batch` instead: the harness splits its
# peer list at commas, so a spec holds one option, and bench/tree-cmd.sh tells the trees apart by
# the two spellings the harness's watchd adapter accepts for it.
BASE_FRAMES, HEAD_FRAMES = "watchd:batch=1", "watchd:batch=true"


@dataclass(frozen=True, slots=True)
class Metric:
    """One figure of a workload and which way is better."""

    key: str
    label: str
    higher_is_better: bool


# The figures that say whether a change kept the speed and the completeness of each workload.
METRICS: dict[str, tuple[Metric, ...]] = {
    "W1": (Metric("throughput_ev_s", "delivered ev/s", True),
           Metric("completeness_pct", "complete %", True),
           Metric("overflow", "runs with kernel overflow", False),
           Metric("total_s", "total s", False),
           Metric("watcher_cpu_s", "CPU s (both processes)", False),
           Metric("rss_mb", "peak RSS MB", False)),
    "W2": (Metric("lat_p50_ms", "latency p50 ms", False),
           Metric("lat_p99_ms", "latency p99 ms", False),
           Metric("lat_max_ms", "latency max ms", False),
           Metric("completeness_pct", "complete %", True)),
    "W5": (Metric("total_s", "s until all have all", False),
           Metric("completeness_pct", "complete %", True),
           Metric("min_sub_pct", "worst subscriber %", True)),
    "W6": (Metric("drain_ev_s", "drain ev/s", True),
           Metric("first_after_cont_ms", "first event after resume ms", False),
           Metric("completeness_pct", "files %", True)),
}

# What bench/soak.py prints, as (label, pattern, higher is better).
SOAK = (
    ("files written", r"(\d+) files written", True),
    ("events published", r"events published (\d+)", True),
    ("events delivered", r"delivered (\d+)", True),
    ("reported dropped", r"reported dropped (\d+)", False),
    ("overflow notices", r"overflow notices (\d+)", False),
    ("lost without notice (must be 0)", r"lost without notice (\d+)", False),
)


def ratio(base: object, head: object) -> str:
    """head/base as text; booleans' k/n counts and missing figures are shown, not divided."""
    if isinstance(base, bool) or isinstance(head, bool):
        return "-"
    if isinstance(base, int | float) and isinstance(head, int | float):
        if base == 0:
            return "=" if head == 0 else "-"
        return f"{head / base:.2f}"
    return "-"


def fmt(value: object) -> str:
    """A figure as the harness's table would show it."""
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def pooled_runs(results: Path) -> dict[tuple[str, str, str], list[dict[str, object]]]:
    """Every repetition of each (peer, workload, params), over all the harness runs in the file."""
    pooled: dict[tuple[str, str, str], list[dict[str, object]]] = {}
    for line in results.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            key = (r["peer"], r["workload"], json.dumps(r["params"], sort_keys=True))
            pooled.setdefault(key, []).extend(r["runs"])
    return pooled


def median(runs: list[dict[str, object]], key: str) -> object:
    """The median of a figure over the runs; for a yes/no figure, how many runs said yes."""
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return None
    if all(isinstance(v, bool) for v in values):
        return f"{sum(1 for v in values if v)}/{len(values)}"
    numbers = [v for v in values if isinstance(v, int | float)]
    return statistics.median(numbers) if len(numbers) == len(values) else values[0]


def harness_rows(results: Path, base_peer: str = BASE, head_peer: str = HEAD) -> list[str]:
    """Table rows for every workload and params that both trees ran."""
    by = pooled_runs(results)
    rows = []
    for wl, metrics in METRICS.items():
        params = sorted({key[2] for key in by if key[1] == wl},
                        key=lambda p: sorted(json.loads(p).items()))
        for p in params:
            base, head = by.get((base_peer, wl, p)), by.get((head_peer, wl, p))
            if base is None or head is None:
                continue
            shown = " ".join(f"{k}={v}" for k, v in json.loads(p).items())
            for peer, runs in ((base_peer, base), (head_peer, head)):
                errors = [r["error"] for r in runs if r.get("error")]
                if errors:
                    rows.append(f"| {wl} | {shown} | error ({peer}, {len(errors)}/{len(runs)} "
                                f"runs) | {errors[0]} | | | |")
            for m in metrics:
                b, h = median(base, m.key), median(head, m.key)
                if b is None and h is None:
                    continue
                better = "higher" if m.higher_is_better else "lower"
                rows.append(f"| {wl} | {shown} | {m.label} | {fmt(b)} | {fmt(h)} | "
                            f"{ratio(b, h)} | {better} |")
            rows.append(f"| {wl} | {shown} | repetitions | {len(base)} | {len(head)} | | |")
    return rows


def soak_figures(text: str) -> dict[str, int]:
    """The counts of one soak's summary, and the RSS and fds of its last sample."""
    out = {}
    for label, pattern, _ in SOAK:
        found = re.search(pattern, text)
        if found:
            out[label] = int(found.group(1))
    samples = re.findall(r"^\s*(\d+)\s+([\d.]+)\s+(\d+)\s*$", text, re.MULTILINE)
    if samples:
        out["RSS at the end MiB"] = round(float(samples[-1][1]))
        out["open fds at the end"] = int(samples[-1][2])
    return out


def soak_rows(base_file: Path, head_file: Path) -> list[str]:
    """Table rows comparing the two soaks."""
    base, head = soak_figures(base_file.read_text()), soak_figures(head_file.read_text())
    minutes = re.search(r"soak: ([\d.]+) min", head_file.read_text())
    shown = f"minutes={minutes.group(1)}" if minutes else ""
    if not base or not head:
        return [f"| soak | {shown} | did not finish: see the soak output above | | | | |"]
    better = {label: up for label, _, up in SOAK} | {"RSS at the end MiB": False,
                                                   "open fds at the end": False}
    return [f"| soak | {shown} | {label} | {fmt(base.get(label))} | {fmt(head.get(label))} | "
            f"{ratio(base.get(label), head.get(label))} | "
            f"{'higher' if better[label] else 'lower'} |" for label in better]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--soak-base", type=Path)
    parser.add_argument("--soak-head", type=Path)
    parser.add_argument("--frames", action="store_true",
                        help=f"the trees ran as {BASE_FRAMES} and {HEAD_FRAMES}")
    args = parser.parse_args()
    base_peer, head_peer = (BASE_FRAMES, HEAD_FRAMES) if args.frames else (BASE, HEAD)
    rows = harness_rows(args.results, base_peer, head_peer)
    if args.soak_base and args.soak_head:
        rows += soak_rows(args.soak_base, args.soak_head)
    if not rows:
        print(f"{args.results}: no workload that both {base_peer} and {head_peer} ran",
              file=sys.stderr)
        return 1
    print("| workload | params | metric | base | head | head/base | better |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
