"""The metrics' pure parts: the families built from a status, the latency histogram, the HTTP
request handling, the metrics request and the daemon.metrics key."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from watchd import protocol
from watchd.config.parse import parse_config
from watchd.errors import ConfigError
from watchd.metrics import LATENCY_BUCKETS, Latency, Snapshot, exposition
from watchd.metrics.http import respond


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


STATUS: dict[str, Any] = {
    "clients": 3, "subscriptions": 4, "dropped": 7,
    "watcher": {"pid": 1, "restarts": 2, "crashes_in_a_row": 0},
    "watches": [
        {"name": "up", "state": "active", "directories": 12, "resyncs": 1},
        {"name": "down", "state": "pending", "directories": 0, "resyncs": 0},
        {"name": "part", "state": "degraded", "directories": 5},  # resync = false
    ],
}
FORWARDERS = [
    {"name": "central", "type": "nats", "connected": True, "server": "nats://a:4222",
     "last_acked_seq": 10, "lag": 0, "last_error": None, "errors": 3},
    {"name": "backup", "type": "nats", "connected": False, "server": None,
     "last_acked_seq": None, "lag": 250, "last_error": "connection refused"},
]


def render(status: dict[str, Any], *, full: bool = True) -> dict[Any, float]:
    latency = Latency()
    latency.observe(0.0003)
    latency.observe(2.0)
    latency.observe(-1.0)  # the wall clock stepped back: counts as 0
    snap = Snapshot(status, {("up", "create"): 5, ("up", "delete"): 2},
                    {"kernel_queue": 1, "watcher_restart": 2}, full, delivered=9,
                    latency=latency)
    return samples(exposition(snap).decode())


def test_families_from_the_status() -> None:
    got = render(STATUS)
    assert got[("watchd_events_published_total", (("kind", "create"), ("watch", "up")))] == 5
    assert got[("watchd_events_published_total", (("kind", "delete"), ("watch", "up")))] == 2
    assert got[("watchd_events_delivered_total", ())] == 9
    assert got[("watchd_events_dropped_total", ())] == 7
    assert got[("watchd_overflows_total", (("reason", "watcher_restart"),))] == 2
    assert got[("watchd_resyncs_total", (("watch", "up"),))] == 1
    assert ("watchd_resyncs_total", (("watch", "part"),)) not in got  # no index, no resyncs
    assert got[("watchd_directories", (("watch", "part"),))] == 5
    assert got[("watchd_watches", (("state", "active"),))] == 1
    assert got[("watchd_watches", (("state", "pending"),))] == 1
    assert got[("watchd_watches", (("state", "degraded"),))] == 1
    assert got[("watchd_watcher_restarts_total", ())] == 2
    assert got[("watchd_clients", ())] == 3
    assert got[("watchd_subscriptions", ())] == 4
    assert got[("watchd_event_latency_seconds_count", ())] == 3
    assert got[("watchd_event_latency_seconds_sum", ())] == pytest.approx(2.0003)
    assert got[("watchd_event_latency_seconds_bucket", (("le", "0.0001"),))] == 1
    assert got[("watchd_event_latency_seconds_bucket", (("le", "0.0005"),))] == 2
    assert got[("watchd_event_latency_seconds_bucket", (("le", "1.0"),))] == 2
    assert got[("watchd_event_latency_seconds_bucket", (("le", "2.5"),))] == 3
    assert got[("watchd_event_latency_seconds_bucket", (("le", "+Inf"),))] == 3
    # No forwarder configured: the families are there, empty.
    assert not any(name.startswith("watchd_forward_") for name, _ in got)


def test_forward_families_from_the_forwarders_status() -> None:
    got = render({**STATUS, "forwarders": FORWARDERS})
    assert got[("watchd_forward_connected", (("forward", "central"),))] == 1
    assert got[("watchd_forward_connected", (("forward", "backup"),))] == 0
    assert got[("watchd_forward_lag_events", (("forward", "central"),))] == 0
    assert got[("watchd_forward_lag_events", (("forward", "backup"),))] == 250
    assert got[("watchd_forward_errors_total", (("forward", "central"),))] == 3
    # A forwarder whose status has no error count has no sample rather than a made-up 0.
    assert ("watchd_forward_errors_total", (("forward", "backup"),)) not in got


def test_limited_view_leaves_out_what_counts_every_watch() -> None:
    got = render({**STATUS, "forwarders": FORWARDERS}, full=False)
    names = {name for name, _ in got}
    assert "watchd_events_delivered_total" not in names
    assert not any(n.startswith(("watchd_event_latency", "watchd_forward_")) for n in names)
    assert ("watchd_clients", ()) in got


def test_latency_buckets_are_sorted_and_cumulative() -> None:
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)
    latency = Latency()
    for seconds in (0.0001, 0.00011, 100.0):
        latency.observe(seconds)
    buckets = dict(latency.buckets())
    assert buckets["0.0001"] == 1  # an upper bound is inclusive ("le")
    assert buckets["0.00025"] == 2
    assert buckets["10.0"] == 2
    assert buckets["+Inf"] == 3


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /metrics HTTP/1.1\r\nHost: x", b"200"),
    (b"GET /metrics?name[]=x HTTP/1.0", b"200"),
    (b"HEAD /metrics HTTP/1.1", b"200"),
    (b"GET / HTTP/1.1", b"404"),
    (b"GET /metrics/ HTTP/1.1", b"404"),
    (b"POST /metrics HTTP/1.1", b"405"),
    (b"GET /metrics", b"400"),
    (b"GET /metrics HTTP/2.0", b"400"),
    (b"\x00\xff\xfe", b"400"),
    (b"", b"400"),
])
def test_http_request_heads(head: bytes, status: bytes) -> None:
    reply = respond(head + b"\r\n\r\n", lambda: b"# body\n")
    assert reply.startswith(b"HTTP/1.1 " + status + b" ")
    assert b"\r\nConnection: close\r\n" in reply
    if status == b"200":
        assert reply.endswith(b"\r\n\r\n" if head.startswith(b"HEAD") else b"# body\n")
        assert b"Content-Length: 7\r\n" in reply


def test_metrics_request() -> None:
    assert protocol.decode_request(b'{"op":"metrics","id":4}') == protocol.Metrics(4)
    assert protocol.encode_request(protocol.Metrics(4)) == b'{"op":"metrics","id":4}\n'
    with pytest.raises(protocol.ProtocolError) as e:
        protocol.decode_request(b'{"op":"metrics","view":"full"}')
    assert e.value.code == protocol.ErrorCode.BAD_REQUEST
    line = protocol.metrics(4, "full", "# HELP x\n")
    assert line == b'{"type":"metrics","id":4,"view":"full","text":"# HELP x\\n"}\n'


@pytest.mark.parametrize(("text", "expected"), [
    ('"127.0.0.1:9311"', ("127.0.0.1", 9311)),
    ('"0.0.0.0:80"', ("0.0.0.0", 80)),
    ('"[::1]:9311"', ("::1", 9311)),
    ('"[0:0::1]:9311"', ("::1", 9311)),
    ('"localhost:9311"', ("localhost", 9311)),
    ('"metrics.example-host.internal:65535"', ("metrics.example-host.internal", 65535)),
    ('""', None),
])
def test_metrics_addresses(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_config(f"[daemon]\nmetrics = {text}\n", "/f.toml").daemon.metrics == expected


@pytest.mark.parametrize(("text", "problem"), [
    ("9311", "expected a string, got an integer (9311)"),
    ('"9311"', "no port"),
    ('"localhost"', "no port"),
    ('":9311"', "no host"),
    ('"::1:9311"', "write an IPv6 address in brackets"),
    ('"[::1]"', "the port must be a number from 1 to 65535"),
    ('"[fe80::zz]:9311"', "'fe80::zz' is not an IPv6 address"),
    ('"127.0.0.1:0"', "from 1 to 65535, got '0'"),
    ('"127.0.0.1:65536"', "from 1 to 65535"),
    ('"127.0.0.1:-1"', "from 1 to 65535"),
    ('"127.0.0.1:９３"', "from 1 to 65535"),  # noqa: RUF001 -- digits, but not ASCII ones
    ('"127.0.0.1: 9311"', "from 1 to 65535"),
    ('"256.0.0.1:9311"', "'256.0.0.1' is not an IPv4 address"),
    ('"1.2.3:9311"', "'1.2.3' is not an IPv4 address"),
    ('"bad_host:9311"', "is neither an IP address nor a host name"),
    ('"-bad:9311"', "is neither an IP address nor a host name"),
    ('"http://127.0.0.1:9311"', "without a scheme or path"),
    ('"127.0.0.1:9311/metrics"', "without a scheme or path"),
])
def test_bad_metrics_addresses(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(f"[daemon]\nmetrics = {text}\n", "/f.toml")
    assert str(e.value).startswith("/f.toml: daemon.metrics: ")
    assert problem in str(e.value)
