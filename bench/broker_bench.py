"""Micro benchmark of Broker.publish_reads: events per second to 1 and to 100 subscriptions.

    .venv/bin/python bench/broker_bench.py [--events N] [--batch N]

The sink throws bytes away, so the figures are the broker's own cost: numbering, serializing
once, holding for replay and handing chunks to every subscription.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from watchd.broker import Broker, Peer, WatchInfo
from watchd.events import KIND_BITS, Kind
from watchd.protocol import Subscribe


class NullSink:
    """Always writable; counts what it is given and keeps nothing."""

    def __init__(self) -> None:
        self.chunks = 0

    def write(self, chunks: list[bytes]) -> None:
        self.chunks += len(chunks)

    def writable(self) -> bool:
        return True


@dataclass(frozen=True)
class Watch:
    name: str
    path: str = "/srv"

    def may_see(self, uid: int, gid: int, groups: frozenset[int]) -> bool:
        return True


def request(mode: str, i: int) -> Subscribe:
    """The subscription of client i: no filter, one glob shared by all, or a path of its own."""
    if mode == "glob":
        return Subscribe(glob=("*.csv",))
    if mode == "paths":
        return Subscribe(paths=(f"/srv/data/dir{i % 97}",))
    return Subscribe()


def run(n_events: int, batch: int, n_subs: int, mode: str, per_read: int = 0,
        merge: bool = True) -> tuple[float, int]:
    """Publish n_events in batches to n_subs subscriptions (one per connection).

    per_read > 0: the events come as watcher reads of that many, each with its own time, and
    a batch is the reads the daemon merges into one publish (a daemon that fell behind), or
    each read is published alone (merge=False).
    Returns events/s and the number of event lines delivered.
    """
    broker = Broker(instance="bench", client_queue=10_000, replay_buffer=65_536,
                    max_subscriptions=64)
    watches: list[WatchInfo] = [Watch("w")]
    broker.set_watches(watches)
    peer = Peer(uid=0, gid=0, groups=frozenset(), pid=1)
    sinks = [NullSink() for _ in range(n_subs)]
    for i, sink in enumerate(sinks):
        broker.subscribe(broker.connect(sink, peer), request(mode, i))
    mask = KIND_BITS[Kind.CLOSE_WRITE]
    items: list[tuple[int, int, str, str | None]] = [
        (mask, 0, f"/srv/data/dir{n % 97}/file{n}.csv", None) for n in range(n_events)
    ]
    if per_read:
        reads = [(1700000000.0 + i * 1e-5, items[i : i + per_read])
                 for i in range(0, n_events, per_read)]
        start = time.perf_counter()
        if merge:
            step = max(1, batch // per_read)
            for i in range(0, len(reads), step):
                broker.publish_reads("w", reads[i : i + step])
        else:
            for read_time, read in reads:
                broker.publish_reads("w", [(read_time, read)])
        elapsed = time.perf_counter() - start
    else:
        batches = [items[i : i + batch] for i in range(0, n_events, batch)]
        start = time.perf_counter()
        for items in batches:
            broker.publish_reads("w", [(1700000000.123456, items)])
        elapsed = time.perf_counter() - start
    assert broker.events == n_events
    lines = (sum(s.chunks for s in sinks) - n_subs) // 2  # prefix + tail each; `subscribed`
    if mode != "paths":
        assert lines == broker.events * n_subs, "some subscription missed events"
    return broker.events / elapsed, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--batch", type=int, default=256, help="events per publish call")
    args = parser.parse_args()
    print(f"{args.events} events, {args.batch} per publish call")
    cases = (
        (1, "none", 0, "no filter"),
        (1, "none", -5, "no filter, reads of 5, alone"),
        (1, "none", 5, "no filter, reads of 5 merged"),
        (100, "none", 0, "no filter"),
        (100, "glob", 0, "the same glob, all match"),
        (100, "paths", 0, "a path each, ~1% match"),
    )
    for n_subs, mode, per_read, label in cases:
        rate, lines = run(args.events, args.batch, n_subs, mode, abs(per_read), per_read > 0)
        print(f"{n_subs:>3} subscription(s), {label:<30} {rate:>10,.0f} events/s "
              f"({lines:,} lines out)")


if __name__ == "__main__":
    main()
