"""Prometheus metrics: built at scrape time (collect), served over HTTP on the loop (http)."""

from watchd.metrics.collect import LATENCY_BUCKETS, Latency, Metrics, Snapshot, exposition
from watchd.metrics.http import MetricsBindError, MetricsServer, show_address

__all__ = [
    "LATENCY_BUCKETS",
    "Latency",
    "Metrics",
    "MetricsBindError",
    "MetricsServer",
    "Snapshot",
    "exposition",
    "show_address",
]
