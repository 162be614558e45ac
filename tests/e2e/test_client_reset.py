"""A subscriber that resets its connection in the middle of a burst costs the others nothing
and leaves no traceback in the daemon's log."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from tests.harness import Daemon, config, is_event, watch

BURST = 1500
RESETTERS = 8


def burst(directory: Path, stop: threading.Event) -> None:
    for i in range(BURST):
        if stop.is_set():
            return
        (directory / f"f{i}").write_bytes(b"")


def test_subscribers_that_reset_mid_burst_leave_no_traceback(
        start_daemon: Callable[..., Daemon], watched: Path) -> None:
    daemon = start_daemon(config(watches=watch("up", watched)))
    resetters = [daemon.subscribe()[0] for _ in range(RESETTERS)]
    polite, _ = daemon.subscribe()
    stop = threading.Event()
    writer = threading.Thread(target=burst, args=(watched, stop))
    writer.start()
    try:
        for line in resetters:
            line.until(lambda m: m.get("type") == "event", timeout=20.0)
            # RST at close: the daemon's next send fails at once (EPIPE or ECONNRESET)
            line.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            line.sock.close()
    finally:
        writer.join()
    (watched / "after").write_bytes(b"")
    polite.until(is_event(watched / "after"), timeout=60.0)
    log = daemon.log_text()
    assert "Traceback" not in log, log[-4000:]
    assert "socket.send() raised" not in log, log[-4000:]
