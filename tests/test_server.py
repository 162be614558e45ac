"""The server in-process: the real daemon's handler behind real Unix sockets, no subprocess.

Each test runs its own event loop with the daemon's server on an abstract socket (no file,
so clients of any uid may reach it); a client of another uid is a socket connected while this
process's effective uid is that uid (SO_PEERCRED records the credentials at connect time).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pwd
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from watchd.config import parse_config
from watchd.daemon import Daemon
from watchd.requests import REQUESTS_PER_TURN
from watchd.systemd import Notifier

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="connects as other uids (needs root)")

NOBODY = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else 65534
OTHER = 4242  # a uid with no account: the kernel takes any
_names = itertools.count()


@asynccontextmanager
async def serving(config_text: str) -> AsyncIterator[tuple[Daemon, Callable[[int], Client]]]:
    """The daemon's server (no watcher) on an abstract socket; yields it and a function that
    connects a client of a uid (closed at the end)."""
    address = f"\0watchd-test-server-{os.getpid()}-{next(_names)}"
    listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listen.bind(address)
    listen.listen(64)
    daemon = Daemon(parse_config(config_text, "test.toml"), Notifier(None), listen)
    await daemon.start_server(asyncio.get_running_loop())
    await daemon.listener.serve()
    clients: list[Client] = []

    def connect(uid: int) -> Client:
        clients.append(Client(address, uid))
        return clients[-1]

    try:
        yield daemon, connect
    finally:
        for c in clients:
            c.close()
        daemon.listener.close()
        for client in list(daemon.clients):
            client.abort()
        await asyncio.sleep(0)  # let the aborted transports report their loss


class Client:
    """A client socket, connected as `uid`, read without blocking the loop."""

    def __init__(self, address: str, uid: int = 0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        os.seteuid(uid)
        try:
            self.sock.connect(address)
        finally:
            os.seteuid(0)
        self.sock.setblocking(False)
        self.buf = b""
        self.eof = False
        self.lines: list[dict[str, Any]] = []

    def poll(self) -> int:
        """Take what has arrived; returns how many new lines."""
        before = len(self.lines)
        while not self.eof:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                break
            if not data:
                self.eof = True
                break
            self.buf += data
        *whole, self.buf = self.buf.split(b"\n")
        self.lines.extend(json.loads(line) for line in whole)
        return len(self.lines) - before

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The first `count` lines, once they have come (or the connection ended)."""
        deadline = time.monotonic() + timeout
        while len(self.lines) < count and not self.eof and time.monotonic() < deadline:
            self.poll()
            await asyncio.sleep(0.002)
        return self.lines[:count]

    async def wait_eof(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self.poll()
            await asyncio.sleep(0.002)
        return self.eof

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def ping(i: int) -> bytes:
    return json.dumps({"op": "ping", "id": i}).encode() + b"\n"


async def wait_until(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
    return bool(cond())


def test_the_per_user_cap_refuses_one_more_and_leaves_other_users_alone() -> None:
    async def run() -> None:
        async with serving("[daemon]\nmax_clients_per_user = 2\n") as (daemon, connect):
            first, second = connect(NOBODY), connect(NOBODY)
            for c in (first, second):
                assert [m["type"] for m in await c.wait_for(1)] == ["hello"]
            third = connect(NOBODY)
            assert await third.wait_eof()
            (refused,) = third.lines
            assert refused["type"] == "error"
            assert refused["code"] == "too_many_clients"
            assert f"uid {NOBODY} already holds 2 connections" in refused["message"]
            assert "daemon.max_clients_per_user" in refused["message"]
            assert len(daemon.clients) == 2  # the refused one was never registered
            # Another user, and root, are served as before.
            other, root = connect(OTHER), connect(0)
            for c in (other, root):
                assert [m["type"] for m in await c.wait_for(1)] == ["hello"]
            # A slot given back is a slot to take.
            first.close()
            assert await wait_until(lambda: len(daemon.clients) == 3)
            again = connect(NOBODY)
            assert [m["type"] for m in await again.wait_for(1)] == ["hello"]
            assert not again.eof

    asyncio.run(run())


def test_many_requests_at_once_are_answered_over_turns_without_starving_another() -> None:
    async def run() -> None:
        async with serving("") as (_, connect):
            flood, polite = connect(NOBODY), connect(OTHER)
            for c in (flood, polite):
                await c.wait_for(1)  # hello
            n = 100
            flood.send(b"".join(ping(i) for i in range(n)))  # one read on the server's side
            polite.send(ping(-1))
            loop_turns = 0
            turns_with_replies = 0
            flood_at_polite = None
            deadline = time.monotonic() + 20
            while len(flood.lines) < 1 + n and time.monotonic() < deadline:
                await asyncio.sleep(0)  # one turn of the loop
                loop_turns += 1
                if flood.poll():
                    turns_with_replies += 1
                if polite.poll() and flood_at_polite is None:
                    flood_at_polite = len(flood.lines) - 1
            pongs = [(m["type"], m["id"]) for m in flood.lines[1:]]
            # Every one, in order: each turn re-arms the next.
            assert pongs == [("pong", i) for i in range(n)]
            # The other connection was answered after a turn or two of the flood, not after
            # all of it.
            assert flood_at_polite is not None
            assert flood_at_polite <= 4 * REQUESTS_PER_TURN
            assert polite.lines[1:] == [{"type": "pong", "id": -1}]
            # A few per turn: the replies came over many turns of the loop.
            assert turns_with_replies >= n // (4 * REQUESTS_PER_TURN)

    asyncio.run(run())


def test_a_request_line_not_finished_within_request_timeout_closes_the_connection() -> None:
    async def run() -> None:
        # A timeout the loaded machine leaves ample room within: `finishing` sends the rest
        # of its line as soon as the daemon has read the start of both.
        timeout = 1.0
        async with serving(f"[daemon]\nrequest_timeout = {timeout}\n") as (daemon, connect):
            slow, idle, finishing = (connect(NOBODY) for _ in range(3))
            for c in (slow, idle, finishing):
                await c.wait_for(1)
            started = time.monotonic()
            slow.send(b'{"op": "ping", "id"')
            finishing.send(b'{"op": "ping", ')
            deadline = started + 10
            while sum(c.requests.line_timer is not None for c in daemon.clients) < 2:
                assert time.monotonic() < deadline, "the daemon never read the lines' starts"
                await asyncio.sleep(0.002)
            finishing.send(b'"id": 7}\n')
            assert await slow.wait_eof()
            assert time.monotonic() - started >= timeout
            error = slow.lines[-1]
            assert error["type"] == "error"
            assert error["code"] == "request_timeout"
            assert "daemon.request_timeout" in error["message"]
            # A line finished in time is answered; a connection with no line started is not
            # closed however long it stays quiet.
            assert (await finishing.wait_for(2))[1] == {"type": "pong", "id": 7}
            await asyncio.sleep(timeout / 2)  # idle, quiet for longer than the timeout by now
            for c in (idle, finishing):
                c.send(ping(1))
                assert (await c.wait_for(len(c.lines) + 1))[-1] == {"type": "pong", "id": 1}
                assert not c.eof
            assert len(daemon.clients) == 2

    asyncio.run(run())
