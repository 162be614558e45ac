"""A client that goes away just as its connection is writable again: the daemon's server,
in-process, behind real Unix sockets (see tests/test_server.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.harness import watch
from tests.test_server import OTHER, ping, serving, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="connects as other uids (needs root)")

PINGS = 5000  # their replies are well over the write buffer's high water mark
NOTICES = 2000  # queued: written in many pieces once writing resumes


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_client_that_resets_as_its_writing_resumes_leaves_no_error_and_others_are_served(
        tmp_path: Path) -> None:
    records = Records()
    logging.getLogger("asyncio").addHandler(records)
    errors: list[dict[str, Any]] = []

    async def run() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: errors.append(ctx))
        async with serving(watch("up", tmp_path)) as (daemon, connect):
            victim, other = connect(0), connect(OTHER)
            for c in (victim, other):
                await c.wait_for(1)  # hello
            victim.send(b'{"op": "subscribe", "id": "s"}\n')
            assert (await victim.wait_for(2))[1]["type"] == "subscribed"
            (proto,) = [p for p in daemon.clients if p.conn is not None and p.conn.peer.uid == 0]
            assert proto.transport is not None
            # Writing resumes once all is sent: the client's next write fails at once.
            proto.transport.set_write_buffer_limits(high=64 * 1024, low=0)
            victim.send(b"".join(ping(i) for i in range(PINGS)))
            assert await wait_until(lambda: proto.paused)
            for _ in range(NOTICES):  # queued for it while it does not read
                daemon.broker.watch_degraded("up", 1, "a notice")
            resume = proto.resume_writing

            def reset_then_resume() -> None:
                # The client goes away at the worst moment: as its connection drains.
                victim.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
                victim.sock.close()
                victim.eof = True
                resume()

            proto.resume_writing = reset_then_resume  # type: ignore[method-assign]
            await victim.wait_eof()
            assert await wait_until(lambda: proto.transport is None)
            for _ in range(3):
                await asyncio.sleep(0)  # what the loop still had scheduled
            other.send(ping(-1))
            assert (await other.wait_for(2))[1:] == [{"type": "pong", "id": -1}]

    try:
        asyncio.run(run())
    finally:
        logging.getLogger("asyncio").removeHandler(records)
    assert errors == []
    # Each write after the failed one logged this; the handler's second finish of the
    # connection logged "Exception in callback ..._call_connection_lost" (AttributeError).
    assert records.messages == []
