"""The publishing connection's own PING: a server that stops answering is seen as lost even
when nothing is being published, and the forwarder resumes once it answers again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.forward.test_forward_e2e import burst, event_seqs, forward, forwarder, wait_connected
from tests.harness import Daemon, config, wait_for, watch
from tests.nats_server import NatsServer, nats_server, wait_stream_count

pytest.importorskip("nats")

PING_INTERVAL_S = 1.0


def test_a_stopped_server_is_seen_by_a_ping_and_nothing_is_lost(
        start_daemon: Callable[..., Daemon], watched: Path, workdir: str) -> None:
    with nats_server(workdir) as nats:
        daemon = start_daemon(config(watches=watch("uploads", watched, events=["create"]))
                              + forward(nats.url, ping_interval=PING_INTERVAL_S))
        wait_connected(daemon)
        burst(watched, 10, "a")
        wait_for(lambda: forwarder(daemon)["last_acked_seq"] == 10
                 and forwarder(daemon)["lag"] == 0, 20.0, "the first 10 acknowledged")
        _stopped_and_continued(daemon, nats, watched)


def _stopped_and_continued(daemon: Daemon, nats: NatsServer, watched: Path) -> None:
    # The connection held until now: the loss below is the pause's, not a flap of a loaded
    # server slow to answer a PING (its error would read the same).
    before = forwarder(daemon)
    assert before["connected"] and before["last_error"] is None and before["errors"] == 0, before
    # Idle, nothing in flight: only a PING of ours can tell that the server is gone. Its
    # socket stays open (a stopped process's kernel keeps it), as in a half-open connection.
    nats.pause()
    try:
        # Quiet for 1 s, then 1 s for the answer; how much longer is the machine's load.
        lost = wait_for(lambda: not (f := forwarder(daemon))["connected"] and f, 60.0,
                        "the forwarder disconnected from the stopped server")
        assert "did not answer a PING within 1 s" in str(lost["last_error"]), lost
        assert lost["server"] is None
        daemon.wait_log("did not answer a PING within 1 s")
        burst(watched, 10, "b")  # while the server is stopped: lag, published later
        wait_for(lambda: forwarder(daemon)["lag"] == 10, 20.0, "lag 10")
    finally:
        nats.resume()
    wait_connected(daemon, 60.0)
    wait_stream_count(nats.url, 20)
    wait_for(lambda: forwarder(daemon)["lag"] == 0, 20.0, "lag 0")
    assert event_seqs(nats.url) == list(range(1, 21))
