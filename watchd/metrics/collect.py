"""The daemon's metrics in the Prometheus text exposition, built at scrape time.

Nothing here runs on the event path but `Latency.observe`, once per batch: every family is
made when someone asks, from the counters and the status the daemon keeps anyway. The same
view rules as status apply (see watchd.status): a peer that is neither root nor the daemon's
own user is shown the series of the watches it may see, and nothing that would count what
the others do in watches hidden from it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from watchd.channel import Phase
from watchd.events import KIND_BITS
from watchd.server import trusted

if TYPE_CHECKING:  # for hints only: the daemon wires these parts together
    from watchd.broker import Broker, Peer
    from watchd.status import Status

# Upper bounds (seconds) of the latency histogram's buckets: an event normally goes out
# within a millisecond; a loaded machine or a held-back watcher takes far longer.
LATENCY_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                          0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_KIND_OF_BIT: Final = {bit: str(kind) for kind, bit in KIND_BITS.items()}


@dataclass(slots=True)
class Latency:
    """From the watcher's read of a batch to the first write of it to a client: bucket counts
    kept by hand (a bisect and an increment per batch), turned into a histogram at scrape."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one batch. The two clocks are the machine's wall clock read by two processes:
        a step of it (NTP) could make a delay negative, which counts as 0."""
        seconds = max(seconds, 0.0)
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts per upper bound, "+Inf" last, as the exposition has them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(repr, LATENCY_BUCKETS), "+Inf"), self.counts,
                                strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one scrape shows: the status as the peer may read it, and the counters kept for
    the metrics, already limited to that peer's view."""

    status: Mapping[str, Any]
    published: Mapping[tuple[str, str], int]  # (watch, kind) -> events
    overflows: Mapping[str, int]  # reason -> occasions
    full: bool  # the full view: the families that count every watch's traffic too
    delivered: int = 0
    latency: Latency | None = None


def families(snap: Snapshot) -> Iterator[Metric]:
    """Every metric family of a snapshot."""
    status = snap.status
    watches: Sequence[Mapping[str, Any]] = status.get("watches", [])
    published = CounterMetricFamily(
        "watchd_events_published", "Events published (numbered and held), by watch and kind.",
        labels=["watch", "kind"])
    for (watch, kind), count in sorted(snap.published.items()):
        published.add_metric([watch, kind], count)
    yield published
    if snap.full:
        yield CounterMetricFamily(
            "watchd_events_delivered", "Events written to clients, one per subscription "
            "that received it.", value=snap.delivered)
    yield CounterMetricFamily(
        "watchd_events_dropped", "Events discarded for clients that read too slowly "
        "(each got a dropped notice).", value=status.get("dropped", 0))
    overflows = CounterMetricFamily(
        "watchd_overflows", "Occasions on which events may have been lost (overflow notices), "
        "by reason.", labels=["reason"])
    for reason, count in sorted(snap.overflows.items()):
        overflows.add_metric([reason], count)
    yield overflows
    resyncs = CounterMetricFamily(
        "watchd_resyncs", "Times a watch was compared with a rescan after a loss.",
        labels=["watch"])
    directories = GaugeMetricFamily(
        "watchd_directories", "Directories watched, by watch.", labels=["watch"])
    for w in watches:
        if "resyncs" in w:
            resyncs.add_metric([w["name"]], w["resyncs"])
        directories.add_metric([w["name"]], w.get("directories", 0))
    yield resyncs
    yield directories
    states = GaugeMetricFamily("watchd_watches", "Watches, by state.", labels=["state"])
    for phase in Phase:
        states.add_metric([str(phase)], sum(1 for w in watches if w.get("state") == phase))
    yield states
    yield CounterMetricFamily(
        "watchd_watcher_restarts", "Times the watcher process was replaced (it died or hung).",
        value=status.get("watcher", {}).get("restarts", 0))
    yield GaugeMetricFamily("watchd_clients", "Client connections.",
                            value=status.get("clients", 0))
    yield GaugeMetricFamily("watchd_subscriptions", "Subscriptions over every connection.",
                            value=status.get("subscriptions", 0))
    if snap.full:
        yield from _forwarders(status.get("forwarders") or [])
        if snap.latency is not None:
            histogram = HistogramMetricFamily(
                "watchd_event_latency_seconds", "From the watcher's read of a batch of events "
                "to the first write of it to a client, once per batch.")
            histogram.add_metric([], snap.latency.buckets(), snap.latency.total)
            yield histogram


def _forwarders(forwarders: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
    """The forward_* families, from the forwarders' status entries."""
    connected = GaugeMetricFamily(
        "watchd_forward_connected", "1 while the forwarder is connected to its server.",
        labels=["forward"])
    lag = GaugeMetricFamily(
        "watchd_forward_lag_events", "Events that pass the forwarder's filters and are not yet "
        "acknowledged.", labels=["forward"])
    errors = CounterMetricFamily(
        "watchd_forward_errors", "Errors of the forwarder (failed connections and publishes).",
        labels=["forward"])
    for fwd in forwarders:
        name = str(fwd.get("name", ""))
        connected.add_metric([name], 1 if fwd.get("connected") else 0)
        lag.add_metric([name], fwd.get("lag") or 0)
        if isinstance(fwd.get("errors"), int):
            errors.add_metric([name], fwd["errors"])
    yield connected
    yield lag
    yield errors


class _Families(Collector):
    """A snapshot as the collector prometheus_client's exposition asks for."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        return families(self.snap)


def exposition(snap: Snapshot) -> bytes:
    """The snapshot in the Prometheus text format."""
    return generate_latest(_Families(snap))


class Metrics:
    """The daemon's metrics: the latency histogram it feeds, and snapshots for a peer."""

    def __init__(self, status: Status, broker: Broker) -> None:
        self.status = status
        self.broker = broker
        self.latency = Latency()

    def snapshot(self, peer: Peer | None = None) -> Snapshot:
        """What this peer may be shown (None: everything, for the HTTP endpoint)."""
        status = self.status.fields(peer)
        counts = self.broker.counts
        full = peer is None or trusted(peer)
        names = None if full else {w["name"] for w in status["watches"]}
        published = {
            (watch, _KIND_OF_BIT.get(bit, str(bit))): n
            for watch, of in counts.kinds_of.items() if names is None or watch in names
            for bit, n in of.items()
        }
        overflows: dict[str, int] = {}
        for (watch, reason), n in counts.overflows_by.items():
            # "" is an occasion of every watch at once (a watcher restart): status shows those
            # to everyone too.
            if names is None or not watch or watch in names:
                overflows[reason] = overflows.get(reason, 0) + n
        if full:
            return Snapshot(status, published, overflows, True, self.broker.delivered,
                            self.latency)
        return Snapshot(status, published, overflows, False)

    def text(self, peer: Peer | None = None) -> tuple[str, str]:
        """(view, exposition) for this peer: the reply to the metrics request."""
        snap = self.snapshot(peer)
        return ("full" if snap.full else "limited"), exposition(snap).decode()
