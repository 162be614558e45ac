"""Prometheus metrics end to end: the real daemon scraped over HTTP and over its socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import NOBODY, Daemon, config, python_for_nobody, run_watchd, wait_for, watch
from watchd.client import AsyncClient

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(port: int, path: str = "/metrics", method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as e:
        with contextlib.closing(e):
            return e.code, e.read().decode()


def scrape_works(port: int) -> bool:
    try:
        return scrape(port)[0] == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metered(start_daemon, watched: Path) -> tuple[Daemon, int]:
    port = free_port()
    daemon = start_daemon(config(daemon_extra=f'metrics = "127.0.0.1:{port}"',
                                 watches=watch("w", watched)))
    return daemon, port


def test_http_scrape_counts_real_events(metered, watched: Path) -> None:
    daemon, port = metered
    line, _ = daemon.subscribe()
    line.request({"op": "subscribe", "id": 2, "watch": "w", "events": ["create"]})
    for i in range(5):
        (watched / f"f{i}").write_text("x")
    line.until(lambda m: m.get("path", "").endswith("f4") and m.get("kind") == "close_write")
    status, text = scrape(port)
    assert status == 200
    assert value(text, "watchd_events_published_total", watch="w", kind="create") == 5
    assert value(text, "watchd_events_published_total", watch="w", kind="close_write") == 5
    # Every event to the first subscription, the creates to the second too (written at once,
    # or from the queue: both count).
    wait_for(lambda: value(scrape(port)[1], "watchd_events_delivered_total") >= 20, 10,
             "20 deliveries")
    assert value(text, "watchd_clients") == 1
    assert value(text, "watchd_subscriptions") == 2
    assert value(text, "watchd_watches", state="active") == 1
    assert value(text, "watchd_watches", state="pending") == 0
    assert value(text, "watchd_directories", watch="w") == 1
    assert value(text, "watchd_resyncs_total", watch="w") == 0
    assert value(text, "watchd_watcher_restarts_total") == 0
    assert value(text, "watchd_events_dropped_total") == 0
    # Observed once per publish (a read of the watcher's, of one event or many): at least one,
    # at most one per event published; how the events fall into reads depends on the load.
    published = sum(v for (name, _), v in samples(text).items()
                    if name == "watchd_events_published_total")
    assert 1 <= value(text, "watchd_event_latency_seconds_count") <= published
    assert value(text, "watchd_event_latency_seconds_bucket", le="+Inf") == value(
        text, "watchd_event_latency_seconds_count")
    assert scrape(port, "/")[0] == 404
    assert scrape(port, "/metricsx")[0] == 404
    assert scrape(port, method="POST")[0] == 405
    head = scrape(port, method="HEAD")
    assert head == (200, "")


def test_counts_a_watcher_restart(metered, watched: Path) -> None:
    daemon, port = metered
    line, _ = daemon.subscribe()
    os.kill(daemon.watcher_pid(), 9)
    line.until(lambda m: m["type"] == "overflow")
    text = scrape(port)[1]
    assert value(text, "watchd_watcher_restarts_total") == 1
    assert value(text, "watchd_overflows_total", reason="watcher_restart") == 1


def test_watchctl_metrics_prints_the_exposition(metered, watched: Path) -> None:
    daemon, port = metered
    line, _ = daemon.subscribe()
    (watched / "a").mkdir()
    line.until(lambda m: m.get("kind") == "create")
    out = subprocess.run([sys.executable, "-m", "watchd.watchctl", "--socket", daemon.socket,
                          "metrics"], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert value(out.stdout, "watchd_events_published_total", watch="w", kind="create") == 1
    assert value(out.stdout, "watchd_clients") == 2  # the subscriber and watchctl itself
    # The same families as over HTTP.
    names = {f.name for f in text_string_to_metric_families(out.stdout)}
    assert names == {f.name for f in text_string_to_metric_families(scrape(port)[1])}
    async def from_async_client() -> str:
        async with AsyncClient(daemon.socket) as client:
            return await client.metrics()
    assert value(asyncio.run(from_async_client()), "watchd_events_published_total", watch="w",
                 kind="create") == 1
    reply = daemon.connect().request({"op": "metrics", "id": "m"})
    assert reply["type"] == "metrics" and reply["id"] == "m" and reply["view"] == "full"
    bad = daemon.connect().request({"op": "metrics", "id": 3, "watch": "w"})
    assert bad["type"] == "error" and bad["code"] == "bad_request" and bad["id"] == 3


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_unprivileged_user_sees_only_its_watches(start_daemon, watched: Path,
                                                 workdir: str) -> None:
    os.chmod(workdir, 0o755)
    for name in ("public", "secret"):
        (watched / name).mkdir()
    daemon = start_daemon(config(
        daemon_extra='socket_mode = "0666"',
        watches=watch("public", watched / "public")
        + watch("secret", watched / "secret", allow_users=["root"])))
    line, _ = daemon.subscribe()
    (watched / "secret" / "s1").write_text("x")
    (watched / "public" / "p1").write_text("x")
    line.until(lambda m: m.get("path", "").endswith("p1"))
    client = ("import json,socket,sys\ns=socket.socket(socket.AF_UNIX);s.settimeout(10)\n"
              "s.connect(sys.argv[1]);f=s.makefile('rb');f.readline()\n"
              "s.sendall(b'{\"op\":\"metrics\"}\\n');print(f.readline().decode())")
    proc = subprocess.run([python_for_nobody(), "-c", client, daemon.socket], user=NOBODY,
                          group=NOBODY, extra_groups=[], capture_output=True, text=True,
                          timeout=30, check=False, cwd="/")
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["view"] == "limited"
    text = reply["text"]
    assert "secret" not in text
    assert value(text, "watchd_events_published_total", watch="public", kind="create") == 1
    # One watch shown, as if it were the only one; the root's connection is not counted.
    assert value(text, "watchd_watches", state="active") == 1
    assert value(text, "watchd_clients") == 1
    assert value(text, "watchd_subscriptions") == 0
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "watchd_events_delivered" not in names
    assert "watchd_event_latency_seconds" not in names
    full = daemon.connect().request({"op": "metrics"})
    assert full["view"] == "full"
    assert value(full["text"], "watchd_events_published_total", watch="secret",
                 kind="create") == 1
    assert value(full["text"], "watchd_watches", state="active") == 2


def test_reload_rebinds_and_keeps_the_old_address_on_failure(metered, watched: Path) -> None:
    daemon, port = metered
    new_port = free_port()
    text = config(daemon_extra='metrics = "127.0.0.1:{}"', watches=watch("w", watched))
    daemon.reload(text.format(new_port))
    assert scrape(new_port)[0] == 200
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        daemon.reload(text.format(taken.getsockname()[1]) + watch("other", watched))
        status = daemon.status()
        assert status["last_reload_error"].startswith(daemon.config + ": daemon.metrics: ")
        assert "cannot listen on 127.0.0.1:" in status["last_reload_error"]
        assert [w["name"] for w in status["watches"]] == ["w"]  # the old configuration
        assert scrape(new_port)[0] == 200
    daemon.reload(config(watches=watch("w", watched)))
    assert daemon.status()["last_reload_error"] is None
    with pytest.raises(urllib.error.URLError):
        scrape(new_port)


def test_start_fails_when_the_address_is_taken(start_daemon, watched: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = start_daemon(config(daemon_extra=f'metrics = "127.0.0.1:{port}"',
                                     watches=watch("w", watched)), wait_ready=False)
        assert daemon.proc is not None
        assert daemon.proc.wait(30) == 1
    assert f"daemon.metrics: cannot listen on 127.0.0.1:{port}: " in daemon.log_text()


@pytest.mark.parametrize(("value_text", "problem"), [
    ('"9311"', "no port"),
    ('":9311"', "no host"),
    ('"::1:9311"', "in brackets"),
    ('"127.0.0.1:0"', "from 1 to 65535"),
    ('"999.0.0.1:9311"', "is not an IPv4 address"),
    ("9311", "expected a string"),
])
def test_bad_metrics_values_are_config_errors(workdir: str, value_text: str,
                                              problem: str) -> None:
    path = Path(workdir) / "bad.toml"
    path.write_text(f"[daemon]\nmetrics = {value_text}\n")
    result = run_watchd("--check", "--config", str(path))
    assert result.returncode == 78
    assert result.stderr.startswith(f"watchd: {path}: daemon.metrics: ") or (
        f"{path}: daemon.metrics: " in result.stderr), result.stderr
    assert problem in result.stderr
    assert "Traceback" not in result.stderr


@contextlib.contextmanager
def hostile_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")  # and never the end
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def test_hostile_http_clients_stall_nothing(metered, watched: Path) -> None:
    from watchd.metrics.http import MAX_CONNECTIONS, MAX_HEAD_BYTES
    daemon, port = metered
    line, _ = daemon.subscribe()
    started = time.monotonic()
    with hostile_connections(port, MAX_CONNECTIONS):
        # The socket and the event path go on as if nothing were happening.
        (watched / "during").write_text("x")
        line.until(lambda m: m.get("path", "").endswith("during"), timeout=5)
        assert daemon.connect().request({"op": "ping"}, timeout=5)["type"] == "pong"
        # Every slot taken: another HTTP client is closed at once, not left waiting.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            extra.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert extra.recv(100) == b""
        # The slow ones are cut off after the head's timeout, and scrapes work again.
        wait_for(lambda: scrape_works(port) or None, 15, "a scrape to work again")
    assert time.monotonic() - started < 15
    with socket.create_connection(("127.0.0.1", port), timeout=5) as big:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            big.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * (4 * MAX_HEAD_BYTES))
        reply = b""
        with contextlib.suppress(ConnectionResetError):
            reply = big.recv(100)
        assert reply.startswith(b"HTTP/1.1 431 ")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as garbage:
        garbage.sendall(b"\x00\xff garbage\r\n\r\n")
        assert garbage.recv(100).startswith(b"HTTP/1.1 400 ")
    assert scrape(port)[0] == 200
    assert daemon.proc is not None and daemon.proc.poll() is None
