"""Client and AsyncClient against a real Unix-socket server speaking the protocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.fakeserver import FakeServer
from tests.harness import take, wait_for
from watchd import protocol
from watchd.client import (
    DEFAULT_SOCKET,
    AsyncClient,
    AsyncSubscription,
    Backoff,
    Client,
    ClientError,
    ServerError,
    resolve_socket_path,
)
from watchd.events import Kind


def seqs(messages: Sequence[Mapping[str, Any] | None]) -> list[object]:
    return [m["seq"] if m else None for m in messages]


# --- connecting ---------------------------------------------------------------------------------


def test_hello_and_ping(server: FakeServer) -> None:
    with Client(server.socket_path) as client:
        assert client.hello["type"] == "hello"
        assert client.hello["pid"] == os.getpid()
        assert client.hello["instance"] == server.instance
        client.ping()
        client.ping()
    assert server.requests == [{"op": "ping", "id": 1}, {"op": "ping", "id": 2}]


def test_socket_path_comes_from_the_environment(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCHD_SOCKET", raising=False)
    assert resolve_socket_path() == DEFAULT_SOCKET
    assert resolve_socket_path("/x/y") == "/x/y"
    monkeypatch.setenv("WATCHD_SOCKET", server.socket_path)
    with Client() as client:
        assert client.socket_path == server.socket_path
        client.ping()


def test_missing_socket_names_the_path_and_what_to_do(sock_path: str) -> None:
    with pytest.raises(ClientError) as info:
        Client(sock_path)
    message = str(info.value)
    assert sock_path in message
    assert "is watchd running? start it or set WATCHD_SOCKET" in message
    assert info.value.socket_path == sock_path
    assert not isinstance(info.value, ServerError)


def test_stale_socket_file_says_nothing_listens(sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()
    with pytest.raises(ClientError, match="nothing is listening"):
        Client(sock_path)


def _in_child(action: Callable[[], str]) -> str:
    """Run action in a forked child and return what it reported."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            try:
                report = action()
            except BaseException as e:
                report = f"child failed: {e!r}"
            os.write(write_end, report.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    os.waitpid(pid, 0)
    return report


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_permission_denied_says_to_join_the_group(server: FakeServer) -> None:
    os.chmod(server.socket_path, 0o600)

    def connect_as_nobody() -> str:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        try:
            Client(server.socket_path)
        except ClientError as e:
            return str(e)
        return "connected"

    report = _in_child(connect_as_nobody)
    assert "socket's group" in report
    assert f"ls -l {server.socket_path}" in report


def test_too_many_clients_is_a_server_error(sock_path: str) -> None:
    with FakeServer(sock_path, max_clients=1) as fake, Client(sock_path) as first:
        with pytest.raises(ServerError) as info:
            Client(sock_path)
        assert info.value.code == "too_many_clients"
        assert info.value.reply["type"] == "error"
        assert "max_clients" in info.value.message
        first.ping()  # the connection that got in is unaffected
        assert fake.live_clients() == 1


def test_no_greeting_times_out_with_a_message(sock_path: str) -> None:
    with FakeServer(sock_path, greet=False), pytest.raises(ClientError) as info:
        Client(sock_path, timeout=0.2)
    assert "did not answer within 0.2s" in str(info.value)


@contextlib.contextmanager
def reply_held(server: FakeServer) -> Iterator[None]:
    """The fake daemon answers the next request only once the block is left: however slow the
    machine, a short client timeout runs out first, and the reply comes late."""
    release = threading.Event()
    server.on_request = lambda request: release.wait(30)
    try:
        yield
    finally:
        server.on_request = None
        release.set()


def test_late_reply_after_a_timeout_is_not_taken_for_the_next(server: FakeServer) -> None:
    # Connected with the default timeout: only the ping is meant to run out of time.
    with Client(server.socket_path) as client:
        client.timeout = 0.1
        with reply_held(server), pytest.raises(ClientError, match=r"did not answer within 0\.1s"):
            client.ping()
        client.timeout = 5.0
        status = client.status()  # the late pong arrives first and must be skipped
        assert status["type"] == "status"
        assert status["id"] == 2


# --- requests and replies -----------------------------------------------------------------------


def test_status(server: FakeServer) -> None:
    with Client(server.socket_path) as client:
        status = client.status()
    assert status["type"] == "status"
    assert status["pid"] == os.getpid()
    assert [w["name"] for w in status["watches"]] == ["uploads", "logs"]


def test_subscribe_sends_every_filter(server: FakeServer, tmp_path: Path) -> None:
    with Client(server.socket_path) as client:
        sub = client.subscribe(
            watch=["uploads"],
            events=[Kind.CREATE, "delete"],
            paths=[tmp_path / "a", str(tmp_path / "b")],
            glob="*.csv",
            since=0,
            instance=server.instance,
        )
        assert sub.subscription == server.subscriptions()[0]
        assert sub.seq == 0
    assert server.requests[-1] == {
        "op": "subscribe",
        "id": 1,
        "watch": ["uploads"],
        "events": ["create", "delete"],
        "paths": [str(tmp_path / "a"), str(tmp_path / "b")],
        "glob": ["*.csv"],
        "since": 0,
        "instance": server.instance,
        "batch": True,  # the server's hello lists "batch"
    }


def test_subscribe_leaves_out_absent_filters_and_takes_one_watch_name(server: FakeServer) -> None:
    with Client(server.socket_path) as client:
        client.subscribe()
        client.subscribe(watch="logs")
    assert server.requests == [
        {"op": "subscribe", "id": 1, "batch": True},
        {"op": "subscribe", "id": 2, "watch": "logs", "batch": True},
    ]


def test_batch_is_asked_for_only_where_the_hello_offers_it(sock_path: str) -> None:
    with FakeServer(sock_path, features=()) as server, Client(sock_path) as client:
        client.subscribe()
        assert server.requests == [{"op": "subscribe", "id": 1}]


def test_events_arrive_as_sent(server: FakeServer) -> None:
    with Client(server.socket_path) as client:
        sub = client.subscribe(watch="uploads")
        server.publish("logs", "create", "/var/log/app/x")  # filtered out by the server
        seq = server.publish("uploads", "moved_to", "/srv/uploads/b", src_path="/srv/uploads/a")
        message = sub.get_message(timeout=5)
    assert message is not None
    event = message.data
    assert event["type"] == "event"
    assert event["subscription"] == sub.subscription
    assert event["seq"] == seq == 2
    assert event["kind"] == "moved_to"
    assert event["path"] == "/srv/uploads/b"
    assert event["src_path"] == "/srv/uploads/a"
    assert event["mask"] == ["IN_MOVED_TO"]
    assert message.raw.endswith(b"\n")
    assert sub.last_seq == 2


def test_get_returns_none_when_nothing_comes(server: FakeServer) -> None:
    with Client(server.socket_path) as client:
        sub = client.subscribe()
        assert sub.get(timeout=0.05) is None
        server.publish("uploads", "create", "/srv/uploads/a")
        assert seqs([sub.get(timeout=5)]) == [1]


def test_status_while_subscribed_loses_no_event(server: FakeServer) -> None:
    with Client(server.socket_path) as client:
        sub = client.subscribe()
        for i in range(3):
            server.publish("uploads", "create", f"/srv/uploads/{i}")
        # More events land between the request and its reply.
        server.on_request = lambda request: [
            server.publish("uploads", "delete", f"/srv/uploads/{i}") for i in range(2)
        ]
        status = client.status()
        client.ping()
        server.on_request = None
        assert status["seq"] == 5
        got = [sub.get(timeout=5) for _ in range(7)]
    assert seqs(got) == [1, 2, 3, 4, 5, 6, 7]


def test_several_subscriptions_each_get_their_events(server: FakeServer) -> None:
    with Client(server.socket_path) as client:
        everything = client.subscribe()
        logs = client.subscribe(watch="logs")
        server.publish("uploads", "create", "/srv/uploads/a")
        server.publish("logs", "create", "/var/log/app/b")
        server.publish("uploads", "delete", "/srv/uploads/a")
        # Reading `logs` first queues what `everything` gets meanwhile.
        assert seqs([logs.get(timeout=5), logs.get(timeout=0.05)]) == [2, None]
        assert seqs([everything.get(timeout=5) for _ in range(3)]) == [1, 2, 3]
        assert everything.subscription != logs.subscription


def test_since_replays_held_events_then_live_ones(server: FakeServer) -> None:
    for i in range(3):
        server.publish("uploads", "create", f"/srv/uploads/{i}")
    with Client(server.socket_path) as client:
        sub = client.subscribe(since=1, instance=client.hello["instance"])
        assert sub.seq == 3
        server.publish("uploads", "create", "/srv/uploads/3")
        assert seqs([sub.get(timeout=5) for _ in range(3)]) == [2, 3, 4]
        assert sub.last_seq == 4


def test_error_reply_raises_and_the_connection_stays_usable(server: FakeServer) -> None:
    with Client(server.socket_path) as client:
        with pytest.raises(ServerError) as info:
            client.subscribe(watch="nope")
        assert info.value.code == "unknown_watch"
        assert info.value.reply["id"] == 1
        assert "nope" in str(info.value)
        client.ping()
        sub = client.subscribe(watch="uploads")
        server.publish("uploads", "create", "/srv/uploads/a")
        assert seqs([sub.get(timeout=5)]) == [1]


def test_since_expired_carries_the_oldest_seq(server: FakeServer) -> None:
    server.publish("uploads", "create", "/srv/uploads/a")
    with Client(server.socket_path) as client, pytest.raises(ServerError) as info:
        client.subscribe(since=0, instance="an-earlier-daemon")
    assert info.value.code == "since_expired"
    assert info.value.reply["oldest"] == 1


def test_unsubscribe_ends_the_iteration(server: FakeServer) -> None:
    with Client(server.socket_path) as client:
        sub = client.subscribe()
        server.publish("uploads", "create", "/srv/uploads/a")
        sub.close()
        assert server.subscriptions() == []
        assert list(sub) == []
        assert sub.get(timeout=0.05) is None
        with pytest.raises(ServerError) as info:
            client.unsubscribe(sub.subscription)
        assert info.value.code == "unknown_subscription"


def test_line_too_long_closes_the_connection(sock_path: str) -> None:
    with FakeServer(sock_path, max_line_bytes=200), Client(sock_path) as client:
        with pytest.raises(ServerError) as info:
            client.subscribe(paths=["/" + "x" * 300])
        assert info.value.code == "line_too_long"
        with pytest.raises(ClientError, match="closed the connection"):
            client.ping()


def test_daemon_going_away_ends_iteration_with_an_error(server: FakeServer) -> None:
    with Client(server.socket_path) as client:
        sub = client.subscribe()
        server.publish("uploads", "create", "/srv/uploads/a")
        server.disconnect_all()
        assert seqs([next(sub)]) == [1]  # what was sent before is still delivered
        with pytest.raises(ClientError, match=r"watchd closed the connection \(/tmp/"):
            next(sub)
        with pytest.raises(ClientError, match="closed the connection"):
            client.ping()


# Lines up to 16 MiB are accepted; a peer that sends more is not watchd.
LONG_LINE_ERROR = r"sent a line over 16777216 bytes; is it really watchd's socket\?"


def _push_long_line(server: FakeServer, sid: str) -> threading.Thread:
    """Write an event line one byte past the client's limit, from a thread: the client reads it."""
    head = b'{"type":"event","subscription":"%s","seq":1,"path":"/' % sid.encode()
    line = head + b"x" * (16 * 1024 * 1024 + 1 - len(head) - 2) + b'"}'
    assert len(line) == 16 * 1024 * 1024 + 1
    pusher = threading.Thread(target=server.push_raw, args=(sid, line + b"\n"))
    pusher.start()
    return pusher


def test_a_line_over_the_limit_ends_the_connection(server: FakeServer) -> None:
    with Client(server.socket_path) as client:
        sub = client.subscribe()
        pusher = _push_long_line(server, sub.subscription)
        with pytest.raises(ClientError, match=LONG_LINE_ERROR) as info:
            sub.get(timeout=30)
        assert info.value.socket_path == server.socket_path
        with pytest.raises(ClientError, match=LONG_LINE_ERROR):
            client.ping()
    pusher.join(timeout=30)  # the closed connection ends the write
    assert not pusher.is_alive()


def test_a_subscribe_that_cannot_be_sent_leaves_the_connection_in_step(server: FakeServer) -> None:
    with Client(server.socket_path) as client:
        with pytest.raises(ValueError, match="Out of range float"):
            client.subscribe(since=math.nan)  # type: ignore[arg-type]
        client.ping()  # its reply is not taken for the subscribe's
        assert server.requests == [{"op": "ping", "id": 2}]


def test_use_after_close_is_an_error(server: FakeServer) -> None:
    client = Client(server.socket_path)
    client.close()
    with pytest.raises(ClientError, match="is closed"):
        client.ping()


def test_non_utf8_name_round_trips(server: FakeServer, tmp_path: Path) -> None:
    raw_dir = os.fsencode(tmp_path)
    raw_file = raw_dir + b"/caf\xe9.csv"
    with open(raw_file, "wb"):
        pass
    (name,) = os.listdir(tmp_path)  # surrogateescape-decoded, as the watcher does
    path = os.path.join(str(tmp_path), name)
    with Client(server.socket_path) as client:
        by_dir = client.subscribe(paths=raw_dir)  # bytes are accepted as they are
        by_name = client.subscribe(paths=[path], glob=["caf*"])
        server.publish("uploads", "create", path)
        for sub in (by_dir, by_name):
            message = sub.get_message(timeout=5)
            assert message is not None
            assert b"caf\\udce9.csv" in message.raw
            assert os.fsencode(message.data["path"]) == raw_file
            assert os.path.exists(message.data["path"])
    assert server.requests[0]["paths"] == [str(tmp_path)]
    assert server.requests[1]["paths"] == [path]


def test_fork_guard(server: FakeServer) -> None:
    client = Client(server.socket_path)

    def use_inherited_client() -> str:
        try:
            client.ping()
            report = "no error"
        except ClientError as e:
            report = str(e)
        client.close()  # closes only the child's copy
        return report

    report = _in_child(use_inherited_client)
    assert f"opened by process {os.getpid()}" in report
    assert "open a new client in the child" in report
    client.ping()  # the parent's connection survived the child's close
    client.close()


# --- AsyncClient --------------------------------------------------------------------------------


def test_async_hello_ping_status(server: FakeServer) -> None:
    async def main() -> dict[str, object]:
        async with AsyncClient(server.socket_path) as client:
            assert client.hello["instance"] == server.instance
            await client.ping()
            return await client.status()

    status = asyncio.run(main())
    assert status["type"] == "status"
    assert server.requests == [{"op": "ping", "id": 1}, {"op": "status", "id": 2}]


def test_async_events_interleaved_with_replies(server: FakeServer) -> None:
    async def main() -> tuple[list[object], dict[str, object]]:
        client = await AsyncClient.connect(server.socket_path)
        try:
            sub = await client.subscribe(watch="uploads", events=["create"])
            server.on_request = lambda request: [
                server.publish("uploads", "create", f"/srv/uploads/{i}") for i in range(3)
            ]

            async def collect() -> list[object]:
                return [event["seq"] async for event in _take(sub, 6)]

            collector = asyncio.create_task(collect())
            status = await client.status()
            await client.ping()
            server.on_request = None
            return await asyncio.wait_for(collector, 5), status
        finally:
            await client.close()

    got, status = asyncio.run(main())
    assert got == [1, 2, 3, 4, 5, 6]
    assert status["seq"] == 3


async def _take(sub: AsyncSubscription, count: int) -> AsyncIterator[dict[str, Any]]:
    async for event in sub:
        yield event
        count -= 1
        if not count:
            return


def test_async_several_subscriptions(server: FakeServer) -> None:
    async def main() -> tuple[list[object], list[object]]:
        async with AsyncClient(server.socket_path) as client:
            every = await client.subscribe()
            logs = await client.subscribe(watch=["logs"])
            server.publish("uploads", "create", "/srv/uploads/a")
            server.publish("logs", "create", "/var/log/app/b")
            first = [await logs.get(timeout=5), await logs.get(timeout=0.05)]
            second = [await every.get(timeout=5) for _ in range(2)]
            return seqs(first), seqs(second)

    assert asyncio.run(main()) == ([2, None], [1, 2])


def test_async_error_reply_and_unsubscribe(server: FakeServer) -> None:
    async def main() -> list[dict[str, Any] | None]:
        async with AsyncClient(server.socket_path) as client:
            with pytest.raises(ServerError) as info:
                await client.subscribe(watch="nope")
            assert info.value.code == "unknown_watch"
            sub = await client.subscribe()
            server.publish("uploads", "create", "/srv/uploads/a")
            first = await sub.get(timeout=5)
            await sub.close()
            rest = [event async for event in sub]
            assert await sub.get(timeout=0.05) is None
            return [first, *rest]

    assert seqs(asyncio.run(main())) == [1]


def test_async_too_many_clients_and_missing_socket(sock_path: str) -> None:
    async def main() -> None:
        with pytest.raises(ClientError, match="is watchd running"):
            await AsyncClient.connect(sock_path)
        with FakeServer(sock_path, max_clients=1):
            async with AsyncClient(sock_path):
                with pytest.raises(ServerError) as info:
                    await AsyncClient.connect(sock_path)
                assert info.value.code == "too_many_clients"

    asyncio.run(main())


def test_async_daemon_going_away(server: FakeServer) -> None:
    async def main() -> None:
        async with AsyncClient(server.socket_path) as client:
            sub = await client.subscribe()
            server.disconnect_all()
            with pytest.raises(ClientError, match="closed the connection"):
                await sub.get(timeout=5)
            with pytest.raises(ClientError, match="closed the connection"):
                await client.ping()

    asyncio.run(main())


def test_async_line_over_the_limit_ends_the_connection(server: FakeServer) -> None:
    async def main() -> threading.Thread:
        async with AsyncClient(server.socket_path) as client:
            sub = await client.subscribe()
            pusher = _push_long_line(server, sub.subscription)
            with pytest.raises(ClientError, match=LONG_LINE_ERROR):
                await sub.get(timeout=30)
            with pytest.raises(ClientError, match=LONG_LINE_ERROR):
                await client.ping()
            return pusher

    pusher = asyncio.run(main())
    pusher.join(timeout=30)
    assert not pusher.is_alive()


def test_async_reply_timeout(server: FakeServer) -> None:
    async def main() -> None:
        # Connected with the default timeout: only the ping is meant to run out of time.
        async with AsyncClient(server.socket_path) as client:
            client.timeout = 0.1
            with reply_held(server), pytest.raises(ClientError,
                                                   match=r"did not answer within 0\.1s"):
                await client.ping()
            client.timeout = 5.0
            assert (await client.status())["id"] == 2

    asyncio.run(main())


def test_async_fork_guard(server: FakeServer) -> None:
    async def main() -> str:
        async with AsyncClient(server.socket_path) as client:
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    try:
                        await client.ping()
                        report = b"no error"
                    except ClientError as e:
                        report = str(e).encode()
                    os.write(write_end, report)
                finally:
                    os._exit(0)
            os.close(write_end)
            os.waitpid(pid, 0)
            with os.fdopen(read_end, "rb") as pipe:
                report_text = pipe.read().decode()
            await client.ping()
            return report_text

    assert "open a new client in the child" in asyncio.run(main())


def test_async_client_used_before_connecting(sock_path: str) -> None:
    async def main() -> None:
        client = AsyncClient(sock_path)
        with pytest.raises(ClientError, match="not connected"):
            await client.ping()

    asyncio.run(main())


# --- following the daemon ------------------------------------------------------------------------

QUICK = Backoff(initial=0.01, maximum=0.2)


def restart(server: FakeServer, instance: str) -> FakeServer:
    """Stop server and start another on its socket, greeting with instance."""
    server.stop()
    return FakeServer(server.socket_path, instance=instance).start()


def test_follow_resumes_with_since_after_the_daemon_hangs_up(server: FakeServer) -> None:
    with Client.follow(watch="uploads", socket_path=server.socket_path,
                       backoff=QUICK) as follower:
        assert follower.get(timeout=0.05) is None  # connected and subscribed, nothing yet
        for i in range(3):
            server.publish("uploads", "create", f"/srv/uploads/{i}")
        assert seqs(take(follower, 3)) == [1, 2, 3]
        server.disconnect_all()
        # While the follower is not reading it has not noticed: these are replayed.
        for i in range(3, 5):
            server.publish("uploads", "create", f"/srv/uploads/{i}")
        got = take(follower, 2)
        server.publish("uploads", "delete", "/srv/uploads/0")
        got += take(follower, 1)
        assert follower.get(timeout=0.05) is None
    assert seqs(got) == [4, 5, 6]
    assert [m["type"] for m in got] == ["event"] * 3
    subscribes = [r for r in server.requests if r["op"] == "subscribe"]
    assert subscribes == [
        {"op": "subscribe", "id": 1, "watch": "uploads", "batch": True},
        {"op": "subscribe", "id": 1, "watch": "uploads", "since": 3,
         "instance": server.instance, "batch": True},
    ]


def test_follow_across_a_restart_with_a_new_instance_says_to_rescan(server: FakeServer) -> None:
    follower = Client.follow(socket_path=server.socket_path, backoff=QUICK)
    assert follower.get(timeout=0.05) is None
    server.publish("uploads", "create", "/srv/uploads/a")
    server.publish("uploads", "create", "/srv/uploads/b")
    assert seqs(take(follower, 2)) == [1, 2]
    assert follower.instance == "fake-instance-1"
    second = restart(server, "fake-instance-2")
    try:
        overflow = take(follower, 1)[0]
        assert overflow == {"type": "overflow", "subscription": overflow["subscription"],
                            "seq": 0, "reason": "daemon_restart", "watch": None,
                            "resync": False}
        assert second.subscriptions() == [overflow["subscription"]]
        second.publish("uploads", "create", "/srv/uploads/c")
        got = take(follower, 1)
        assert seqs(got) == [1]  # the new daemon's numbering, after the notice
        assert follower.instance == "fake-instance-2"
        # No since for another daemon (and frames, which the fake daemon offers).
        assert second.requests == [{"op": "subscribe", "id": 1, "batch": True}]
    finally:
        follower.close()
        second.stop()


def test_follow_across_a_restart_that_kept_its_instance_replays(server: FakeServer) -> None:
    # A daemon with durable state greets with the instance it had, and answers since.
    follower = Client.follow(socket_path=server.socket_path, backoff=QUICK)
    assert follower.get(timeout=0.05) is None
    for i in range(2):
        server.publish("uploads", "create", f"/srv/uploads/{i}")
    assert seqs(take(follower, 2)) == [1, 2]
    second = restart(server, server.instance)
    try:
        for i in range(4):  # its journal: the two seen, then two made while it was down
            second.publish("uploads", "create", f"/srv/uploads/{i}")
        got = take(follower, 2)
        assert [(m["type"], m["seq"]) for m in got] == [("event", 3), ("event", 4)]
        assert follower.get(timeout=0.05) is None
        assert second.requests == [
            {"op": "subscribe", "id": 1, "since": 2, "instance": "fake-instance-1",
             "batch": True}]
    finally:
        follower.close()
        second.stop()


def test_follow_when_the_events_are_no_longer_held(sock_path: str) -> None:
    with FakeServer(sock_path, hold=2) as server, Client.follow(
        socket_path=sock_path, backoff=QUICK
    ) as follower:
        assert follower.get(timeout=0.05) is None
        server.publish("uploads", "create", "/srv/uploads/a")
        assert seqs(take(follower, 1)) == [1]
        server.disconnect_all()
        for i in range(5):
            server.publish("uploads", "create", f"/srv/uploads/{i}")
        overflow = take(follower, 1)[0]
        assert (overflow["type"], overflow["reason"], overflow["seq"], overflow["resync"]) == (
            "overflow", "since_expired", 6, False)
        server.publish("uploads", "delete", "/srv/uploads/a")
        assert seqs(take(follower, 1)) == [7]
    subscribes = [r for r in server.requests if r["op"] == "subscribe"]
    assert [r.get("since") for r in subscribes] == [None, 1, None]


def test_follow_waits_for_a_daemon_that_is_not_there_yet(sock_path: str) -> None:
    retries: list[tuple[ClientError, float]] = []
    follower = Client.follow(socket_path=sock_path, backoff=QUICK,
                             on_retry=lambda e, delay: retries.append((e, delay)))
    with follower:
        assert follower.get(timeout=0.3) is None
        assert retries, "no attempt was made"
        assert all("No such file or directory" in str(e) for e, _ in retries)
        assert all(0 < delay <= QUICK.maximum for _, delay in retries)
        with FakeServer(sock_path) as server:
            # The follower works only while it is read: read until it has subscribed.
            wait_for(lambda: follower.get(timeout=0.05) is None and server.subscriptions(),
                     10, "the follower's subscription")
            server.publish("logs", "create", "/var/log/app/a")
            assert seqs(take(follower, 1)) == [1]


def test_follow_retries_a_full_daemon(sock_path: str) -> None:
    retries: list[ClientError] = []
    with FakeServer(sock_path, max_clients=1) as server:
        occupant = Client(sock_path)
        follower = Client.follow(socket_path=sock_path, backoff=QUICK,
                                 on_retry=lambda e, delay: retries.append(e))
        with follower:
            assert follower.get(timeout=0.2) is None
            assert retries
            assert {getattr(e, "code", None) for e in retries} == {"too_many_clients"}
            occupant.close()
            wait_for(lambda: follower.get(timeout=0.05) is None and server.subscriptions(),
                     10, "the follower's subscription")
            server.publish("logs", "create", "/var/log/app/a")
            assert seqs(take(follower, 1)) == [1]


def test_follow_raises_what_a_retry_would_meet_again(server: FakeServer, tmp_path: Path) -> None:
    with Client.follow(watch="nope", socket_path=server.socket_path) as follower:
        with pytest.raises(ServerError) as info:
            next(follower)
        assert info.value.code == "unknown_watch"
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with Client.follow(socket_path=str(not_a_dir / "sock")) as follower, pytest.raises(
        ClientError, match="Not a directory"
    ):
        follower.get(timeout=5)


def test_follow_gives_up_when_told_to(sock_path: str) -> None:
    follower = Client.follow(socket_path=sock_path,
                             backoff=Backoff(initial=0.01, maximum=0.02, give_up_after=0.2))
    with follower, pytest.raises(ClientError, match="is watchd running"):
        follower.get(timeout=10)


def test_follow_close_from_another_thread_ends_a_blocked_iteration(server: FakeServer) -> None:
    follower = Client.follow(socket_path=server.socket_path, backoff=QUICK)
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.extend(follower))
    reader.start()
    server.wait_subscriptions(1)
    server.publish("uploads", "create", "/srv/uploads/a")
    wait_for(lambda: got, 10, "the first event")
    follower.close()
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert seqs(got) == [1]  # type: ignore[arg-type]
    wait_for(lambda: server.live_clients() == 0, 10, "the connection closed")


def test_follow_close_ends_a_backoff_wait(sock_path: str) -> None:
    follower = Client.follow(socket_path=sock_path,
                             backoff=Backoff(initial=60.0, maximum=60.0, jitter=0.0))
    waiting = threading.Thread(target=lambda: list(follower))
    waiting.start()
    wait_for(lambda: follower._core.failures == 1, 10, "the first failed attempt")
    follower.close()
    waiting.join(timeout=10)
    assert not waiting.is_alive()


def test_async_follow_across_restarts(server: FakeServer) -> None:
    async def main() -> tuple[list[dict[str, Any]], FakeServer]:
        follower = AsyncClient.follow(socket_path=server.socket_path, backoff=QUICK)
        async with follower:
            # Subscribed before the first event: a get() with a short timeout would give up
            # (cancel) an attempt that the loaded machine had not finished in time.
            await follower.start()
            server.publish("uploads", "create", "/srv/uploads/a")
            got = [await follower.get(timeout=10)]
            server.disconnect_all()
            server.publish("uploads", "create", "/srv/uploads/b")  # replayed with since
            got.append(await follower.get(timeout=10))
            second = restart(server, "fake-instance-2")
            got.append(await follower.get(timeout=10))  # the overflow: rescan
            second.publish("logs", "create", "/var/log/app/c")
            got.append(await follower.get(timeout=10))
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return [m for m in got if m is not None], second

    got, second = asyncio.run(main())
    second.stop()
    assert [(m["type"], m["seq"]) for m in got] == [
        ("event", 1), ("event", 2), ("overflow", 0), ("event", 1)]
    assert got[2]["reason"] == "daemon_restart"


def test_async_follow_resumes_a_daemon_that_kept_its_instance(server: FakeServer) -> None:
    async def main() -> list[dict[str, Any] | None]:
        async with AsyncClient.follow(socket_path=server.socket_path, backoff=QUICK) as follower:
            await follower.start()  # subscribed before the first event, however slow the machine
            server.publish("uploads", "create", "/srv/uploads/a")
            got = [await follower.get(timeout=10)]
            second = restart(server, server.instance)
            try:
                second.publish("uploads", "create", "/srv/uploads/a")
                second.publish("uploads", "create", "/srv/uploads/b")
                got.append(await follower.get(timeout=10))
                got.append(await follower.get(timeout=0.05))
            finally:
                second.stop()
            return got

    assert seqs(asyncio.run(main())) == [1, 2, None]


def test_async_follow_aclose_from_another_task(sock_path: str, server: FakeServer) -> None:
    async def main() -> None:
        follower = AsyncClient.follow(socket_path=sock_path, backoff=QUICK)
        seen: list[dict[str, Any]] = []

        async def read() -> None:
            async for message in follower:
                seen.append(message)

        reader = asyncio.create_task(read())
        await asyncio.to_thread(server.wait_subscriptions, 1)
        await follower.aclose()
        await asyncio.wait_for(reader, 10)
        assert seen == []
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())
    wait_for(lambda: server.live_clients() == 0, 10, "the connection closed")


def test_async_follow_raises_what_a_retry_would_meet_again(server: FakeServer) -> None:
    async def main() -> None:
        async with AsyncClient.follow(watch="nope", socket_path=server.socket_path) as follower:
            with pytest.raises(ServerError) as info:
                await follower.get(timeout=10)
            assert info.value.code == "unknown_watch"

    asyncio.run(main())


def test_follow_hands_out_a_notice_a_replay_sends_again_once(server: FakeServer) -> None:
    # An overflow carries the seq of the event before it, and a since replay from that seq
    # sends it again (it may have been missed): the follower passes it on once.
    with Client.follow(socket_path=server.socket_path, backoff=QUICK) as follower:
        follower.start()
        server.publish("uploads", "create", "/srv/uploads/a")
        server.notice("overflow", watch="uploads", reason="kernel_queue", resync=True)
        first = take(follower, 2)
        server.disconnect_all()
        server.notice("resynced", watch="uploads", changes=0, duration_ms=1.0)
        server.publish("uploads", "create", "/srv/uploads/b")
        again = take(follower, 2)
        assert follower.get(timeout=0.05) is None
    assert [(m["type"], m["seq"]) for m in first + again] == [
        ("event", 1), ("overflow", 1), ("resynced", 1), ("event", 2)]
    assert [r.get("since") for r in server.requests] == [None, 1]


def test_follow_start_subscribes_at_once(server: FakeServer) -> None:
    with Client.follow(socket_path=server.socket_path) as follower:
        follower.start()
        assert server.subscriptions()
        assert follower.hello["instance"] == server.instance
        follower.start()  # already subscribed: nothing more
        assert len(server.requests) == 1


def test_async_follow_get_timeout_in_the_middle_of_an_attempt(server: FakeServer) -> None:
    async def main() -> list[object]:
        async with AsyncClient.follow(socket_path=server.socket_path, backoff=QUICK) as follower:
            server.reply_delay = 0.5  # the subscription's confirmation comes late
            assert await follower.get(timeout=0.05) is None
            assert follower.hello == {}  # the half-made connection was let go
            server.reply_delay = 0.0
            await follower.start()
            server.publish("uploads", "create", "/srv/uploads/a")
            got = [await follower.get(timeout=10)]
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return seqs(got)

    assert asyncio.run(main()) == [1]
    wait_for(lambda: server.live_clients() == 0, 10, "every connection closed")


# --- batched subscriptions ----------------------------------------------------------------------


def _burst(sid: str, first: int, count: int) -> tuple[bytes, list[bytes]]:
    """A frame of count events for sid, and the event lines the daemon sends without batch."""
    encoder = protocol.EventEncoder()
    tails = [
        encoder.tail(seq, 1700000000.25, "uploads", "create", f"/srv/uploads/{seq}\n\u00e9\udcff",
                     0x100, 0, None)
        for seq in range(first, first + count)
    ]
    frame = b"".join(protocol.frames(protocol.frame_head(sid), tails, protocol.MAX_BATCH))
    return frame, [protocol.event_prefix(sid) + tail for tail in tails]


def test_a_batched_subscription_yields_one_event_at_a_time(server: FakeServer) -> None:
    with Client(server.socket_path) as client:
        sub = client.subscribe()
        server.publish("uploads", "create", "/srv/uploads/live")  # through the broker: a frame
        frame, lines = _burst(sub.subscription, 2, 3)
        server.push_raw(sub.subscription, frame)
        got = [sub.get_message(timeout=5) for _ in range(4)]
    messages = [m for m in got if m is not None]
    assert [m.data["seq"] for m in messages] == [1, 2, 3, 4]
    assert messages[0].data["path"] == "/srv/uploads/live"
    assert [m.data for m in messages[1:]] == [json.loads(line) for line in lines]
    assert [m.raw for m in messages[1:]] == lines  # as the daemon sends them without batch
    assert [list(m.data)[:3] for m in messages] == [["type", "subscription", "seq"]] * 4
    assert sub.last_seq == 4


def test_async_a_batched_subscription_yields_one_event_at_a_time(server: FakeServer) -> None:
    async def main() -> list[dict[str, Any]]:
        async with AsyncClient(server.socket_path) as client:
            sub = await client.subscribe()
            frame, _ = _burst(sub.subscription, 1, 5)
            server.push_raw(sub.subscription, frame)
            server.notice("overflow", "uploads")
            frame, _ = _burst(sub.subscription, 6, 2)
            server.push_raw(sub.subscription, frame)
            return [event async for event in _take(sub, 8)]

    got = asyncio.run(main())
    assert [(m["type"], m.get("seq")) for m in got] == [
        ("event", 1), ("event", 2), ("event", 3), ("event", 4), ("event", 5), ("overflow", 0),
        ("event", 6), ("event", 7)]


@pytest.mark.parametrize("frame", [
    b'{"type":"events","subscription":"s1","events":[]}\n',
    b'{"type":"events","subscription":"s1","events":[1]}\n',
    b'{"type":"events","subscription":"s1"}\n',
])
def test_a_malformed_frame_is_a_client_error(server: FakeServer, frame: bytes) -> None:
    with Client(server.socket_path) as client:
        sub = client.subscribe()
        server.push_raw(sub.subscription, frame)
        with pytest.raises(ClientError, match="frame of events watchd would not send"):
            sub.get(timeout=5)
