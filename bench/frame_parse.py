#!/usr/bin/env python3
"""What a client spends to parse a burst as event lines and as frames of various sizes.

The bytes are what watchd writes (EventEncoder tails behind a subscription's prefix, or frames
spliced from them); the client splits the buffer into lines and calls json.loads once per line,
as a plain Python client does. The figures are CPU time, medians of interleaved rounds, so
they compare within one run: the line form against frames, and frame sizes against each other
(the default of daemon.max_batch was chosen with it).

    .venv/bin/python -m bench.frame_parse --events 200000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from watchd.protocol import EventEncoder, event_prefix, frame_head, frames


def read_lines(data: bytes) -> int:
    """Events in data read as event lines: one json.loads each."""
    count = 0
    for line in data.split(b"\n")[:-1]:
        json.loads(line)
        count += 1
    return count


def read_frames(data: bytes) -> int:
    """Events in data read as frames: one json.loads per frame."""
    count = 0
    for line in data.split(b"\n")[:-1]:
        count += len(json.loads(line)["events"])
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256, 1024, 4096])
    args = parser.parse_args()
    encoder = EventEncoder()
    tails = [encoder.tail(seq, 1700000000.25, "w", "create", f"/srv/data/d{seq % 97}/f{seq}.csv",
                          0x100, 0, None) for seq in range(1, args.events + 1)]
    cases: list[tuple[str, bytes, Callable[[bytes], int]]] = [
        ("lines", b"".join(event_prefix("s1") + tail for tail in tails), read_lines)]
    cases += [(f"frames of {size}", b"".join(frames(frame_head("s1"), tails, size)), read_frames)
              for size in args.sizes]
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _ in range(args.rounds):
        for name, data, read in cases:
            start = time.process_time()
            assert read(data) == args.events
            times[name].append(time.process_time() - start)
    base = statistics.median(times["lines"])
    for name, data, _ in cases:
        median = statistics.median(times[name])
        print(f"{name:<16} {args.events / median:>12,.0f} events/s  {median / base:.2f}x the time "
              f"of lines  ({len(data) / args.events:.0f} bytes/event)")


if __name__ == "__main__":
    main()
