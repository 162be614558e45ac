"""Forwarding to a real nats-server with JetStream: the daemon, its forwarder process and
the server as they run in production."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon, config, wait_for, watch
from tests.nats_server import NatsServer, nats_server, stream_messages, wait_stream_count

pytest.importorskip("nats")

HOST = socket.gethostname()


@pytest.fixture
def nats(workdir: str) -> Iterator[NatsServer]:
    with nats_server(workdir) as server:
        yield server


def forward(url: str, **keys: object) -> str:
    lines = ["[[forward]]", 'name = "central"', 'type = "nats"', f'url = "{url}"']
    keys.setdefault("create_stream", True)
    for key, value in keys.items():
        text = str(value).lower() if isinstance(value, bool) else f'"{value}"' if isinstance(
            value, str) else str(value).replace("'", '"')
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def forwarder(daemon: Daemon) -> dict[str, object]:
    (one,) = daemon.status()["forwarders"]
    return one  # type: ignore[no-any-return]


def wait_connected(daemon: Daemon, timeout: float = 20.0) -> dict[str, object]:
    return wait_for(lambda: (f := forwarder(daemon))["connected"] and f, timeout,
                    "the forwarder connected")


def event_seqs(url: str, kind: str | None = None) -> list[int]:
    msgs = stream_messages(url)
    return [p["seq"] for s, p, _ in msgs if not s.endswith("._notice")
            and (kind is None or p["kind"] == kind)]


def burst(root: Path, n: int, prefix: str = "f") -> None:
    for i in range(n):
        (root / f"{prefix}{i}").write_bytes(b"")


@pytest.fixture
def start(start_daemon: Callable[..., Daemon], watched: Path,
          nats: NatsServer) -> Callable[..., Daemon]:
    def go(daemon_extra: str = "", **keys: object) -> Daemon:
        text = config(daemon_extra=daemon_extra,
                      watches=watch("uploads", watched, events=["create"])) + forward(
            nats.url, **keys)
        return start_daemon(text)
    return go


def test_a_burst_reaches_the_stream_once_and_in_order(start: Callable[..., Daemon],
                                                       nats: NatsServer, watched: Path) -> None:
    daemon = start()
    status = wait_connected(daemon)
    assert status["server"] == nats.url
    assert status["last_error"] is None
    burst(watched, 2000)
    wait_stream_count(nats.url, 2000)
    msgs = stream_messages(nats.url)
    seqs = [p["seq"] for _, p, _ in msgs]
    assert seqs == sorted(seqs)
    assert len(seqs) == len(set(seqs)) == 2000
    subject, payload, msg_id = msgs[0]
    assert subject == f"watchd.{HOST.replace('.', '%2E')}.uploads"
    assert "subscription" not in payload
    assert payload["kind"] == "create" and payload["watch"] == "uploads"
    assert msg_id == f"{daemon.status()['instance']}:{payload['seq']}"
    assert [p["path"] for _, p, _ in msgs] == [str(watched / f"f{i}") for i in range(2000)]
    wait_for(lambda: forwarder(daemon)["lag"] == 0 and forwarder(daemon)["last_acked_seq"]
             == seqs[-1], 10.0, "lag 0 and the last seq acknowledged")
