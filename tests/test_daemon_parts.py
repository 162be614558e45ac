"""The daemon's parts in-process: request handling, status, watch state and the hold-back glue,
with a real Broker and the real server protocol on real socketpairs, and no watcher process."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from watchd.broker import Broker, Peer
from watchd.channel import Limit, Phase, WatchReport
from watchd.config import Config, parse_config
from watchd.config.model import RESERVED_CLIENTS
from watchd.handler import RequestHandler
from watchd.holdback import HoldBack
from watchd.protocol import LostReason, OverflowReason
from watchd.server import ClientProtocol
from watchd.status import ReloadRecord, Status
from watchd.supervisor import Supervisor
from watchd.watchstate import Watches

NOBODY = Peer(uid=65534, gid=65534, groups=frozenset(), pid=1)
CONFIG = """
[daemon]
socket = "/run/watchd-test.sock"
max_clients = 2
max_clients_per_user = 1
[[watch]]
name = "open"
path = "/srv/open"
[[watch]]
name = "closed"
path = "/srv/closed"
allow_users = ["root"]
"""


@dataclass
class Parts:
    """The parts a Daemon wires, built the same way, minus the watcher and the socket."""

    config: Config
    broker: Broker
    watches: Watches
    history: ReloadRecord
    supervisor: Supervisor
    status: Status
    handler: RequestHandler
    clients: set[ClientProtocol]
    hold: HoldBack


class Watcher:
    """What the hold-back glue asks of the watcher process: to stop and resume reading."""

    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def build(text: str = CONFIG, watcher: Watcher | None = None) -> Parts:
    config = parse_config(text, "/etc/watchd/test.toml")
    d = config.daemon
    broker = Broker(instance="i", client_queue=d.client_queue, replay_buffer=d.replay_buffer,
                    max_subscriptions=d.max_subscriptions, max_patterns=d.max_patterns,
                    max_paths=d.max_paths,
                    defer=lambda fn: asyncio.get_running_loop().call_soon(fn))
    broker.set_watches(config.watches)
    clients: set[ClientProtocol] = set()
    watches = Watches(broker, config.watches)
    history = ReloadRecord()
    supervisor = Supervisor(lambda on_exit: None,  # type: ignore[arg-type,return-value]
                            asyncio.Event(), on_exit=lambda: None, on_replaced=lambda: 1)
    status = Status(instance="i", config_path=config.path, broker=broker, watches=watches,
                    supervisor=supervisor, clients=clients, history=history)
    hold = HoldBack(broker, clients, lambda: watcher)  # type: ignore[arg-type,return-value]
    handler = RequestHandler(broker=broker, instance="i", settings=lambda: config.daemon,
                             clients=clients, status=status, hold=hold)
    return Parts(config, broker, watches, history, supervisor, status, handler, clients, hold)


class Client:
    """Our end of a socketpair whose other end the server protocol serves."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    async def line(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        while b"\n" not in self.buf:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 16), 10)
            assert data, "the server closed the connection"
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        await asyncio.get_running_loop().sock_sendall(self.sock,
                                                      json.dumps(request).encode() + b"\n")
        return await self.line()


@asynccontextmanager
async def connected(parts: Parts) -> AsyncIterator[Client]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(
        lambda: ClientProtocol(parts.broker, parts.handler, 65536, parts.clients), theirs)
    try:
        yield Client(ours)
    finally:
        ours.close()
        transport.close()


def run(scenario: Callable[[Parts], Any], text: str = CONFIG) -> None:
    async def main() -> None:
        await scenario(build(text))

    asyncio.run(main())


def test_a_connection_is_greeted_and_answered() -> None:
    async def scenario(parts: Parts) -> None:
        async with connected(parts) as client:
            hello = await client.line()
            assert (hello["type"], hello["pid"], hello["instance"]) == ("hello", os.getpid(), "i")
            assert await client.ask({"op": "ping", "id": 7}) == {"type": "pong", "id": 7}
            sub = await client.ask({"op": "subscribe", "id": "s", "watch": "open"})
            assert (sub["type"], sub["id"]) == ("subscribed", "s")
            bad = await client.ask({"op": "dance", "id": 1})
            assert (bad["type"], bad["code"], bad["id"]) == ("error", "unknown_op", 1)
            status = await client.ask({"op": "status", "id": 2})
            assert (status["type"], status["view"]) == ("status", "full")
            assert status["subscriptions"] == 1
            assert [w["name"] for w in status["watches"]] == ["open", "closed"]

    run(scenario)


def test_admission_keeps_slots_for_root_and_caps_each_user() -> None:
    async def scenario(parts: Parts) -> None:
        assert parts.handler.may_connect(NOBODY) is None
        async with connected(parts) as first, connected(parts) as second:
            await first.line()
            await second.line()
            assert len(parts.clients) == 2  # max_clients
            refusal = parts.handler.may_connect(NOBODY)
            assert refusal is not None
            assert "daemon.max_clients" in refusal
            # Root still gets in, up to the reserved slots.
            assert parts.handler.may_connect(Peer(0, 0, frozenset(), 1)) is None

    run(scenario)


def test_one_user_may_hold_only_max_clients_per_user() -> None:
    async def scenario(parts: Parts) -> None:
        theirs = ClientProtocol(parts.broker, parts.handler, 65536, parts.clients)
        theirs.conn = parts.broker.connect(theirs, NOBODY)
        parts.clients.add(theirs)
        refusal = parts.handler.may_connect(NOBODY)
        assert refusal is not None
        assert "uid 65534 already holds 1 connections" in refusal
        assert "daemon.max_clients_per_user" in refusal
        assert parts.handler.may_connect(Peer(65533, 65533, frozenset(), 2)) is None

    run(scenario)


def test_root_is_refused_only_past_the_reserved_slots() -> None:
    async def scenario(parts: Parts) -> None:
        root = Peer(0, 0, frozenset(), 1)
        for _ in range(parts.config.daemon.max_clients + RESERVED_CLIENTS):
            assert parts.handler.may_connect(root) is None
            parts.clients.add(ClientProtocol(parts.broker, parts.handler, 65536, parts.clients))
        refusal = parts.handler.may_connect(root)
        assert refusal is not None
        assert "slots kept for root" in refusal

    run(scenario)


def test_status_shows_another_user_only_what_it_may_see() -> None:
    async def scenario(parts: Parts) -> None:
        parts.history.last_reload_error = "/etc/watchd/test.toml: watch[1].path: /srv/closed ..."
        full = parts.status.fields()
        assert full["view"] == "full"
        assert full["last_reload_error"] == parts.history.last_reload_error
        limited = parts.status.fields(NOBODY)
        assert limited["view"] == "limited"
        assert [w["name"] for w in limited["watches"]] == ["open"]
        assert "/srv/closed" not in json.dumps(limited)
        assert limited["last_reload_error"] == (
            "the last reload was refused; the daemon's log says why")
        assert limited["watcher"] == {"pid": None, "restarts": 0, "crashes_in_a_row": 0}

    run(scenario)


def test_status_reports_a_degraded_watch_and_says_why_in_the_status_line() -> None:
    async def scenario(parts: Parts) -> None:
        parts.watches.on_heartbeat({
            "open": WatchReport(Phase.DEGRADED, 5, 3, "budget reached", Limit.MAX_DIRECTORIES),
            "closed": WatchReport(Phase.ACTIVE, 2, 0, None, None)})
        (shown,) = [w for w in parts.status.fields()["watches"] if w["name"] == "open"]
        assert (shown["state"], shown["unwatched"], shown["problem"]) == (
            "degraded", 3, "budget reached")
        assert json.loads(json.dumps(shown))["state"] == "degraded"  # the enum is its value
        assert parts.status.line() == (
            "2 watches (1 active, 1 degraded); 7 directories; 0 clients; 0 events; "
            "watcher restarting; 3 directories unwatched on open (max_directories)")
        parts.supervisor.stopping.set()
        parts.history.last_reload_error = "bad"
        assert parts.status.line() == (
            "2 watches (1 active, 1 degraded); 7 directories; 0 clients; 0 events; "
            "3 directories unwatched on open (max_directories); last reload failed: bad")

    run(scenario)


def test_a_watch_limit_lifted_tells_subscribers_to_rescan() -> None:
    # Without an index (with one, the watcher announces the loss and its differences:
    # test_budgets.test_a_healed_limit_publishes_only_what_changed_meanwhile).
    text = CONFIG.replace('path = "/srv/open"', 'path = "/srv/open"\nresync = false')

    async def scenario(parts: Parts) -> None:
        async with connected(parts) as client:
            await client.line()
            await client.ask({"op": "subscribe", "id": "s", "watch": "open"})
            parts.watches.on_heartbeat({
                "open": WatchReport(Phase.DEGRADED, 5, 3, "budget", Limit.MAX_DIRECTORIES)})
            degraded = await client.line()
            assert (degraded["type"], degraded["unwatched"], degraded["reason"]) == (
                "watch_degraded", 3, "max_directories")
            parts.watches.on_heartbeat({"open": WatchReport(Phase.ACTIVE, 8, 0, None, None)})
            overflow = await client.line()
            assert (overflow["type"], overflow["reason"], overflow["watch"]) == (
                "overflow", OverflowReason.WATCH_LIMIT, "open")

    run(scenario, text)


def test_the_watcher_is_held_back_while_the_only_subscriber_is_behind() -> None:
    watcher = Watcher()

    async def main() -> None:
        parts = build(CONFIG.replace("max_clients = 2", "max_clients = 2\nclient_queue = 50"),
                      watcher)
        async with connected(parts) as client:
            await client.line()
            await client.ask({"op": "subscribe", "id": "s", "watch": "open"})
            (conn,) = parts.clients
            # Publish until the connection's transport is paused: it reads nothing meanwhile.
            batch = [(0x100, 0, "/srv/open/" + "x" * 200 + str(i), None) for i in range(500)]
            for _ in range(200):
                parts.broker.publish_reads("open", [(1.0, batch)])
                if conn.paused:
                    break
            assert conn.paused
            parts.hold.review()  # (the server calls it when it pauses; publishing does too)
            assert watcher.paused
            assert parts.hold.clock.holding
            held_at = parts.hold.flow_time()
            # It reads again: once its transport resumes, the watcher is let go.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while watcher.paused:
                assert loop.time() < deadline, "the subscriber read everything, still held"
                await asyncio.wait_for(loop.sock_recv(client.sock, 1 << 20), 10)
            assert not parts.hold.clock.holding
            assert parts.hold.flow_time() >= held_at

    asyncio.run(main())


def test_a_hold_that_lasts_too_long_is_spent() -> None:
    watcher = Watcher()

    async def main() -> None:
        parts = build(watcher=watcher)
        parts.hold.clock.hold(0.0)  # held since long ago
        watcher.paused = True
        parts.hold.expire(limit_s=10.0)
        assert parts.hold.spent
        assert not watcher.paused
        assert not parts.hold.clock.holding
        parts.hold.review()  # no subscriber: no reason to hold back, so the hold is forgotten
        assert not parts.hold.spent

    asyncio.run(main())


def test_a_lost_watch_that_comes_back_while_no_watcher_knew_is_announced_restored() -> None:
    async def scenario(parts: Parts) -> None:
        async with connected(parts) as client:
            await client.line()
            await client.ask({"op": "subscribe", "id": "s", "watch": "open"})
            parts.watches.on_lost("open", "/srv/open", LostReason.UNMOUNTED)
            lost = await client.line()
            assert (lost["type"], lost["reason"], lost["path"]) == (
                "watch_lost", "unmounted", "/srv/open")
            assert parts.watches.by_name["open"].state == Phase.PENDING
            # A new watcher's first heartbeat finds it again: it never sent RESTORED.
            parts.watches.on_heartbeat({"open": WatchReport(Phase.ACTIVE, 1, 0, None, None)})
            restored = await client.line()
            assert (restored["type"], restored["watch"]) == ("watch_restored", "open")
            assert not parts.watches.lost
            # A reload that removes the watch tells its subscribers so.
            (kept, removed) = parts.config.watches[1], parts.config.watches[0]
            parts.watches.reconfigure([kept], [removed])
            gone = await client.line()
            assert (gone["type"], gone["reason"]) == ("watch_lost", "removed")
            assert list(parts.watches.by_name) == ["closed"]

    run(scenario)
