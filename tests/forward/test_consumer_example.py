"""The consumer example of docs/forwarding.md, run as it stands against a real stream."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.forward.test_forward_e2e import forward, wait_connected
from tests.harness import Daemon, config, wait_for, watch
from tests.nats_server import NatsServer, nats_server, run

pytest.importorskip("nats")

DOC = Path(__file__).resolve().parents[2] / "docs" / "forwarding.md"


def example() -> str:
    text = DOC.read_text()
    start = text.index("## A consumer")
    match = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert match is not None
    return match.group(1)


@pytest.fixture
def nats(workdir: str) -> Iterator[NatsServer]:
    with nats_server(workdir) as server:
        yield server


def read_lines(out: IO[str], count: int) -> list[str]:
    lines: list[str] = []
    while len(lines) < count:
        line = out.readline()
        assert line, f"the consumer ended after {lines}"
        lines.append(line.rstrip("\n"))
    return lines


def acked_by_indexer(url: str) -> int:
    """The stream seq up to which the durable consumer "indexer" acknowledged."""
    async def floor() -> int:
        import nats

        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().consumer_info("WATCHD", "indexer")
            return int(info.ack_floor.stream_seq) if info.ack_floor else 0
        finally:
            await nc.close()
    return run(floor())  # type: ignore[no-any-return]


def stop(consumer: subprocess.Popen[str]) -> None:
    consumer.kill()
    consumer.wait()
    assert consumer.stdout is not None
    consumer.stdout.close()


def run_consumer(script: Path, url: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(script)], env={"NATS_URL": url, "PATH": ""},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_consumer_example_reads_every_event_once_across_its_restarts(
        start_daemon: object, nats: NatsServer, workdir: str) -> None:
    watched = Path(workdir) / "uploads"
    (watched).mkdir()
    daemon: Daemon = start_daemon(  # type: ignore[operator]
        config(watches=watch("uploads", watched, events=["create"])) + forward(nats.url))
    wait_connected(daemon)
    script = Path(workdir) / "consumer.py"
    script.write_text(example())
    host = socket.gethostname()
    (watched / "a").write_bytes(b"")
    (watched / "b").write_bytes(b"")
    consumer = run_consumer(script, nats.url)
    try:
        assert consumer.stdout is not None
        first = read_lines(consumer.stdout, 2)
        assert first == [f"{host}: 1 create {watched}/a", f"{host}: 2 create {watched}/b"]
        wait_for(lambda: acked_by_indexer(nats.url) == 2, 10.0, "both acknowledged",
                 interval=0.1)
    finally:
        stop(consumer)
    # The durable consumer goes on where it was acknowledged: only what came since.
    (watched / "c").write_bytes(b"")
    wait_for(lambda: daemon.status()["forwarders"][0]["last_acked_seq"] == 3, 10.0,
             "seq 3 acknowledged")
    consumer = run_consumer(script, nats.url)
    try:
        assert consumer.stdout is not None
        assert read_lines(consumer.stdout, 1) == [f"{host}: 3 create {watched}/c"]
    finally:
        stop(consumer)
