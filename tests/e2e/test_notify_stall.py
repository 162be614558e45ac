"""A notification socket that stops reading: the daemon keeps serving, and the notifications
that matter arrive once the receiver reads again."""

from __future__ import annotations

import os
import re
import signal
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon, Line, config, is_event, wait_for, watch

pytestmark = pytest.mark.timeout(60)

FILLER = b"X-FILLER=1"


def fill(path: str) -> socket.socket:
    """Send datagrams to `path` until its receive queue is full; the sender must stay open."""
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.setblocking(False)
    sent = 0
    while True:
        try:
            sender.sendto(FILLER, path)
        except BlockingIOError:
            break
        sent += 1
    assert sent > 0
    return sender


def received(daemon: Daemon) -> list[str]:
    """What the daemon sent so far (the test's own filler datagrams left out); reads them."""
    daemon.notify.poll()
    return [m for m in daemon.notify.messages if m != FILLER.decode()]


def firsts(messages: list[str]) -> list[str]:
    """The state-changing fields of the datagrams, in order."""
    keys = ("READY=1", "RELOADING=1", "STOPPING=1")
    return [f for m in messages for f in m.split("\n") if f in keys]


def connect(daemon: Daemon) -> Line | None:
    """A greeted connection, or None while the socket is not there or not listening yet."""
    try:
        return daemon.connect()  # it listens before READY=1, greets once its loop runs
    except OSError:
        return None


@pytest.fixture
def daemon(workdir: str, watched: Path) -> Iterator[Daemon]:
    directory = os.path.join(workdir, "d")
    os.mkdir(directory)
    d = Daemon(directory, config(watches=watch("w", watched)))
    yield d
    d.cleanup()


def test_a_stalled_notification_socket_does_not_stall_clients(
        daemon: Daemon, watched: Path) -> None:
    filler = fill(daemon.notify.path)
    daemon.start(wait_ready=False)
    line = wait_for(lambda: connect(daemon), what="the daemon's greeting")
    reply = line.request({"op": "subscribe", "id": 1})
    assert reply["type"] == "subscribed", reply
    # Clients are served while the receiver reads nothing.
    rtts = []
    for i in range(10):
        started = time.monotonic()
        assert line.request({"op": "ping", "id": i})["type"] == "pong"
        rtts.append(time.monotonic() - started)
    assert statistics.median(rtts) < 0.1 and max(rtts) < 1.0, rtts
    (watched / "f").touch()
    line.until(is_event(watched / "f"))
    # A reload made meanwhile is applied; its notices wait too.
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: line.request({"op": "status"})["reloads"] == 1, what="the reload")
    assert line.request({"op": "ping"})["type"] == "pong"

    # The receiver reads again: READY=1, then the reload's RELOADING=1 and READY=1, in order.
    wait_for(lambda: firsts(received(daemon)) == ["READY=1", "RELOADING=1", "READY=1"],
             what="the notifications that waited")
    log = daemon.log_text()
    assert log.count("is not reading its notification socket") == 1, log

    # Stalled again at the stop: STOPPING=1 still arrives once the receiver reads.
    filler.close()
    mark = len(received(daemon))
    filler = fill(daemon.notify.path)
    daemon.proc.send_signal(signal.SIGTERM)
    # Logged after STOPPING=1 was tried: a blocking send would never get here.
    wait_for(lambda: re.search(r": stopping$", daemon.log_text(), re.MULTILINE),
             what="the stop to begin")
    wait_for(lambda: "STOPPING=1" in firsts(received(daemon)[mark:]), what="STOPPING=1")
    assert daemon.proc.wait(10) == 0
    filler.close()
