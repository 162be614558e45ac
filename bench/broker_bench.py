"""Micro benchmark of Broker.publish_reads: events per second to 1 and to 100 subscriptions.

    .venv/bin/python bench/broker_bench.py [--events N] [--batch N] [--max-batch N] [--reps N]

The sink throws bytes away, so the figures are the broker's own cost: numbering, serializing
once, holding for replay and handing chunks to every subscription. Each case runs with line
subscribers and with batched ones ("batch": true) alternately, and prints the ratio of their
medians: the two are compared within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from dataclasses import dataclass

from watchd.broker import Broker, Peer, WatchInfo
from watchd.events import KIND_BITS, Kind
from watchd.protocol import DEFAULT_MAX_BATCH, Subscribe

# What a run is timed with: wall time, or (--cpu) this process's CPU time, which other work on a
# loaded machine disturbs far less.
CLOCK = [time.perf_counter]


class NullSink:
    """Always writable; counts what it is given and keeps nothing."""

    def __init__(self) -> None:
        self.chunks = 0
        self.open = True

    def write(self, chunks: list[bytes]) -> None:
        self.chunks += len(chunks)

    def writable(self) -> bool:
        return self.open


class JoinSink(NullSink):
    """Joins what it is given, as asyncio's transport does in writelines (Python 3.11)."""

    def write(self, chunks: list[bytes]) -> None:
        self.chunks += len(chunks)
        b"".join(chunks)


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
        merge: bool = True, framed: bool = False, max_batch: int = 256,
        sink: type[NullSink] = NullSink, behind: int = 0) -> tuple[float, int]:
    """Publish n_events in batches to n_subs subscriptions (one per connection).

    per_read > 0: the events come as watcher reads of that many, each with its own time, and
    a batch is the reads the daemon merges into one publish (a daemon that fell behind), or
    each read is published alone (merge=False).
    framed: the subscriptions ask for batch (frames of at most max_batch events).
    behind > 0: every connection is paused while that many batches are published (its events
    are queued), then drained; the figure then includes the draining.
    Returns events/s and the number of lines (frames, for framed) delivered.
    """
    broker = Broker(instance="bench", client_queue=10_000, replay_buffer=65_536,
                    max_subscriptions=64, max_batch=max_batch)
    watches: list[WatchInfo] = [Watch("w")]
    broker.set_watches(watches)
    peer = Peer(uid=0, gid=0, groups=frozenset(), pid=1)
    sinks = [sink() for _ in range(n_subs)]
    conns = []
    for i, sink in enumerate(sinks):
        req = dataclasses.replace(request(mode, i), batch=framed)
        conns.append(broker.connect(sink, peer))
        broker.subscribe(conns[-1], req)
    mask = KIND_BITS[Kind.CLOSE_WRITE]
    items: list[tuple[int, int, str, str | None]] = [
        (mask, 0, f"/srv/data/dir{n % 97}/file{n}.csv", None) for n in range(n_events)
    ]
    if per_read:
        reads = [(1700000000.0 + i * 1e-5, items[i : i + per_read])
                 for i in range(0, n_events, per_read)]
        start = CLOCK[0]()
        if merge:
            step = max(1, batch // per_read)
            for i in range(0, len(reads), step):
                broker.publish_reads("w", reads[i : i + step])
        else:
            for read_time, read in reads:
                broker.publish_reads("w", [(read_time, read)])
        elapsed = CLOCK[0]() - start
    else:
        batches = [items[i : i + batch] for i in range(0, n_events, batch)]
        start = CLOCK[0]()
        for n, items in enumerate(batches, 1):
            if behind and n % behind == 1:
                for s in sinks:
                    s.open = False
            broker.publish_reads("w", [(1700000000.123456, items)])
            if behind and (n % behind == 0 or n == len(batches)):
                for s, conn in zip(sinks, conns, strict=True):
                    s.open = True
                    broker.resume(conn)
        elapsed = CLOCK[0]() - start
        if behind:
            assert broker.dropped == 0
            return broker.events / elapsed, 0
    assert broker.events == n_events
    if framed:
        return broker.events / elapsed, (sum(s.chunks for s in sinks) - n_subs) // 3
    lines = (sum(s.chunks for s in sinks) - n_subs) // 2  # prefix + tail each; `subscribed`
    if mode != "paths":
        assert lines == broker.events * n_subs, "some subscription missed events"
    return broker.events / elapsed, lines


def check_framed(max_batch: int) -> None:
    """Batched subscribers get every event (counted in what they are written), untimed."""
    broker = Broker(instance="check", client_queue=10_000, replay_buffer=1000,
                    max_subscriptions=64, max_batch=max_batch)
    broker.set_watches([Watch("w")])
    written: list[bytes] = []

    class Keep(NullSink):
        def write(self, chunks: list[bytes]) -> None:
            written.extend(chunks)

    peer = Peer(uid=0, gid=0, groups=frozenset(), pid=1)
    for mode in ("none", "glob"):
        broker.subscribe(broker.connect(Keep(), peer),
                         dataclasses.replace(request(mode, 0), batch=True))
    mask = KIND_BITS[Kind.CLOSE_WRITE]
    for start in range(0, 1000, 300):
        broker.publish_reads("w", [(1.0, [(mask, 0, f"/srv/f{n}.csv", None)
                                          for n in range(start, min(1000, start + 300))])])
    frames = [json.loads(line) for line in b"".join(written).splitlines()[2:]]
    assert sum(len(f["events"]) for f in frames) == 2000, "some subscription missed events"
    assert max(len(f["events"]) for f in frames) <= max_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--batch", type=int, default=256, help="events per publish call")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="daemon.max_batch for the batched subscribers")
    parser.add_argument("--reps", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--join", action="store_true",
                        help="a sink that joins its chunks, as the transport does")
    parser.add_argument("--cpu", action="store_true",
                        help="time in CPU seconds of this process instead of wall time")
    args = parser.parse_args()
    if args.cpu:
        CLOCK[0] = time.process_time
    check_framed(args.max_batch)
    print(f"{args.events} events, {args.batch} per publish call, max_batch {args.max_batch}, "
          f"medians of {args.reps}, {'joining' if args.join else 'null'} sink")
    cases = (
        (1, "none", 0, "no filter"),
        (1, "none", -5, "no filter, reads of 5, alone"),
        (1, "none", 5, "no filter, reads of 5 merged"),
        (100, "none", 0, "no filter"),
        (100, "glob", 0, "the same glob, all match"),
        (100, "paths", 0, "a path each, ~1% match"),
        (100, "none", 0, "no filter, each behind"),
    )
    for n_subs, mode, per_read, label in cases:
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.reps):
            for framed in (False, True):
                rate, _ = run(args.events, args.batch, n_subs, mode, abs(per_read),
                              per_read > 0, framed, args.max_batch,
                              JoinSink if args.join else NullSink,
                              8 if "behind" in label else 0)
                rates[framed].append(rate)
        line_rate, framed_rate = (statistics.median(rates[f]) for f in (False, True))
        print(f"{n_subs:>3} subscription(s), {label:<30} lines {line_rate:>10,.0f} events/s, "
              f"batched {framed_rate:>10,.0f} events/s ({framed_rate / line_rate:.2f}x)")


if __name__ == "__main__":
    main()
