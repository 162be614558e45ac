"""Client.follow and AsyncClient.follow with the real daemon: restarts, outages, cut connections.

The daemon is stopped and started again on the same socket (a new instance, as a daemon without
durable state starts), kept down for a while, or has a client's connection cut on its own side.
Each test checks that the follower hands out every event it can exactly once, in order, and
says so with an `overflow` (`"resync": false`) where it cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon, take, take_one, wait_for
from tests.picture import Picture, listing
from watchd.client import AsyncClient, Backoff, Client, ClientError, Follower

pytestmark = pytest.mark.timeout(90)

QUICK = Backoff(initial=0.02, maximum=0.3)
SYS_PIDFD_GETFD = 438  # the same number on every architecture (the unified syscall table)


def restart(daemon: Daemon, meanwhile: Callable[[], object] = lambda: None) -> None:
    """SIGTERM the daemon and start it again on the same socket and configuration; call
    meanwhile while it is down."""
    assert daemon.stop() == 0
    meanwhile()
    forget_ready(daemon)
    daemon.start()


def forget_ready(daemon: Daemon) -> None:
    """Drop the stopped daemon's READY=1, so that waiting for the next one waits."""
    daemon.notify.poll()
    daemon.notify.messages.clear()


def subscribed(follower: Follower, daemon: Daemon) -> None:
    """Subscribe the follower now (it works only while used)."""
    follower.start()
    assert daemon.proc is not None
    assert follower.hello["pid"] == daemon.proc.pid


def created(messages: list[dict[str, Any]]) -> list[str]:
    return [os.path.basename(m["path"]) for m in messages if m["type"] == "event"]


def test_follow_across_a_restart(start_watching, watched: Path) -> None:
    daemon = start_watching(events=["create"])
    with Client.follow(events=["create"], socket_path=daemon.socket, backoff=QUICK) as follower:
        subscribed(follower, daemon)
        first_instance = follower.instance
        (watched / "a").touch()
        (watched / "b").touch()
        before = take(follower, 2)
        assert created(before) == ["a", "b"]
        # Changed while no daemon runs: the new one does not know it changed. (Touched after
        # the start, it would be an event for a follower that subscribed before it.)
        restart(daemon, meanwhile=(watched / "while-restarted").touch)
        notice = take(follower, 1)[0]
        (watched / "c").touch()
        after = take(follower, 1)
        assert follower.get(timeout=0.2) is None
    assert follower.instance != first_instance
    assert {k: v for k, v in notice.items() if k != "subscription"} == {
        "type": "overflow", "seq": notice["seq"], "reason": "daemon_restart", "watch": None,
        "resync": False}
    # The overflow stands for every seq of the new instance up to its own; live ones follow.
    assert created(after) == ["c"]
    assert after[0]["seq"] > notice["seq"]
    assert [m["seq"] for m in before] == [1, 2]


def test_async_follow_across_a_restart(start_watching, watched: Path) -> None:
    daemon = start_watching(events=["create"])

    async def main() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        follower = AsyncClient.follow(socket_path=daemon.socket, backoff=QUICK)
        async with follower:
            async def until_subscribed() -> None:
                while follower.hello.get("pid") != (daemon.proc.pid if daemon.proc else None):
                    assert await follower.get(timeout=0.05) is None

            await asyncio.wait_for(until_subscribed(), 20)
            (watched / "a").touch()
            got.append(await take_one(follower))
            await asyncio.to_thread(restart, daemon)
            got.append(await take_one(follower))
            (watched / "b").touch()
            got.append(await take_one(follower))
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return got

    got = asyncio.run(main())
    assert [m["type"] for m in got] == ["event", "overflow", "event"]
    assert created(got) == ["a", "b"]
    assert (got[1]["reason"], got[1]["resync"]) == ("daemon_restart", False)
    assert got[2]["seq"] > got[1]["seq"]


def test_follow_waits_out_a_daemon_that_is_down(start_watching, watched: Path) -> None:
    daemon = start_watching(events=["create"])
    retries: list[tuple[ClientError, float]] = []
    backoff = Backoff(initial=0.05, maximum=0.4)
    with Client.follow(socket_path=daemon.socket, backoff=backoff,
                       on_retry=lambda e, delay: retries.append((e, delay))) as follower:
        subscribed(follower, daemon)
        (watched / "a").touch()
        assert created(take(follower, 1)) == ["a"]
        assert daemon.stop() == 0
        forget_ready(daemon)
        # Down for a while: the follower keeps trying, ever less often, up to the cap.
        wait_for(lambda: follower.get(timeout=0.05) is None and len(retries) >= 5, 30,
                 "five failed attempts")
        assert all(delay <= backoff.maximum for _, delay in retries)
        assert retries[0][1] <= backoff.initial
        assert "watchd closed the connection" in str(retries[0][0])
        assert all("cannot connect" in str(e) for e, _ in retries[1:])
        daemon.start()
        notice = take(follower, 1)[0]
        (watched / "b").touch()
        assert created(take(follower, 1)) == ["b"]
    assert (notice["type"], notice["reason"]) == ("overflow", "daemon_restart")
    assert follower.failures == 0


# --- a connection cut on the daemon's side -------------------------------------------------------


def _pidfd_getfd(pid: int, fd: int) -> int:
    """A copy of process pid's descriptor fd (pidfd_getfd(2): needs the right to ptrace it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        copy = int(libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0))
        if copy < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return copy
    finally:
        os.close(pidfd)


@contextlib.contextmanager
def daemon_sockets(daemon: Daemon) -> Iterator[list[socket.socket]]:
    """Copies of the daemon's accepted client connections (sockets named by its socket path)."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    found: list[socket.socket] = []
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            try:
                copy = _pidfd_getfd(pid, int(name))
            except OSError as e:
                if e.errno in (errno.EPERM, errno.ENOSYS):
                    pytest.skip(f"pidfd_getfd is not allowed here: {e.strerror}")
                continue  # closed meanwhile
            sock = socket.socket(fileno=copy)
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            if (sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
                    and not listening and sock.getsockname() == daemon.socket):
                found.append(sock)
            else:
                sock.close()
        yield found
    finally:
        for sock in found:
            sock.close()


def cut_every_client(daemon: Daemon) -> int:
    """Shut down, on the daemon's side, every client connection it holds; how many."""
    with daemon_sockets(daemon) as socks:
        for sock in socks:
            # shutdown acts on the connection the daemon holds, not just on our copy of it.
            sock.shutdown(socket.SHUT_RDWR)
        return len(socks)


def test_a_connection_cut_by_the_daemon_resumes_every_event_once(start_watching,
                                                                  watched: Path) -> None:
    daemon = start_watching(events=["create"])
    total = 300
    retries: list[ClientError] = []
    with Client.follow(socket_path=daemon.socket, backoff=QUICK,
                       on_retry=lambda e, delay: retries.append(e)) as follower:
        subscribed(follower, daemon)
        got: list[dict[str, Any]] = []

        def burst() -> None:
            for i in range(total):
                (watched / f"f{i:04}").touch()

        maker = threading.Thread(target=burst)
        maker.start()
        got += take(follower, 20)
        # Cut while the burst runs; the follower is the daemon's only client.
        assert cut_every_client(daemon) == 1
        maker.join(timeout=60)
        (watched / "zz-last").touch()
        while not got or got[-1].get("path") != str(watched / "zz-last"):
            got += take(follower, 1)
        assert follower.hello.get("pid") == daemon.proc.pid if daemon.proc else False
    assert len(retries) == 1 and "watchd closed the connection" in str(retries[0])
    assert [m["type"] for m in got] == ["event"] * (total + 1)  # no overflow: it resumed
    assert created(got) == [f"f{i:04}" for i in range(total)] + ["zz-last"]
    seqs = [m["seq"] for m in got]
    assert seqs == list(range(seqs[0], seqs[0] + total + 1))
    # The follower was closed; the cut connection is gone too.
    wait_for(lambda: daemon.status()["subscriptions"] == 0, 10, "no subscription left")


def test_a_cut_longer_than_the_replay_buffer_says_to_rescan(start_watching,
                                                            watched: Path) -> None:
    daemon = start_watching("replay_buffer = 10", events=["create"])
    with Client.follow(socket_path=daemon.socket, backoff=QUICK) as follower:
        subscribed(follower, daemon)
        (watched / "a").touch()
        first = take(follower, 1)
        assert cut_every_client(daemon) == 1
        for i in range(30):  # while the follower is away: more than the daemon holds
            (watched / f"f{i:02}").touch()
        wait_for(lambda: daemon.status()["seq"] == 31, 20, "every create published")
        notice = take(follower, 1)[0]
        (watched / "b").touch()
        after = take(follower, 1)
    assert created(first) == ["a"]
    assert {k: v for k, v in notice.items() if k != "subscription"} == {
        "type": "overflow", "seq": 31, "reason": "since_expired", "watch": None,
        "resync": False}
    assert created(after) == ["b"]
    assert after[0]["seq"] == 32


def test_async_follower_through_a_cut_and_an_outage(start_watching, watched: Path) -> None:
    daemon = start_watching(events=["create"])

    async def main() -> tuple[list[dict[str, Any]], list[ClientError]]:
        retries: list[ClientError] = []
        got: list[dict[str, Any]] = []
        follower = AsyncClient.follow(socket_path=daemon.socket, backoff=QUICK,
                                      on_retry=lambda e, delay: retries.append(e))
        async with follower:
            await follower.start()
            (watched / "a").touch()
            got.append(await take_one(follower))
            assert await asyncio.to_thread(cut_every_client, daemon) == 1
            (watched / "b").touch()  # made while cut off: replayed with since
            got.append(await take_one(follower))
            assert daemon.stop() == 0
            forget_ready(daemon)
            async with asyncio.timeout(30):  # down for a while: attempts keep failing
                while len(retries) < 4:
                    assert await follower.get(timeout=0.05) is None
            await asyncio.to_thread(daemon.start)
            got.append(await take_one(follower))
            (watched / "c").touch()
            got.append(await take_one(follower))
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return got, retries

    got, retries = asyncio.run(main())
    assert [(m["type"], m.get("reason")) for m in got] == [
        ("event", None), ("event", None), ("overflow", "daemon_restart"), ("event", None)]
    assert created(got) == ["a", "b", "c"]
    assert [m["seq"] for m in got[:2]] == [1, 2]
    assert "closed the connection" in str(retries[0])
    assert any("cannot connect" in str(e) for e in retries[1:])


def test_cutting_the_connection_is_seen_by_the_follower(start_watching, watched: Path) -> None:
    # The cut above must really end the connection: a plain subscription sees it end.
    daemon = start_watching(events=["create"])
    with Client(daemon.socket) as client:
        sub = client.subscribe()
        wait_for(lambda: daemon.status()["subscriptions"] == 1, 10, "the subscription")
        assert cut_every_client(daemon) >= 1  # ours, and status()'s if not yet gone
        with pytest.raises(ClientError, match="closed the connection"):
            sub.get(timeout=10)


# --- the consumer of docs/client.md --------------------------------------------------------------


def populate(root: Path) -> None:
    for d in range(3):
        (root / f"d{d}" / "inner").mkdir(parents=True)
        for f in range(4):
            (root / f"d{d}" / f"f{f}").write_text("x")


def change(root: Path, tag: str) -> None:
    """A create in a new directory, a delete, a file and a directory renamed."""
    (root / f"new-{tag}" / "deep").mkdir(parents=True)
    (root / f"new-{tag}" / "deep" / "file").write_text(tag)
    os.unlink(next(p for p in sorted(root.rglob("f*")) if p.is_file()))
    os.rename(next(p for p in sorted(root.rglob("f*")) if p.is_file()), root / f"moved-{tag}")
    os.rename(root / f"d{'012'.index(tag[-1])}", root / f"renamed-{tag}")


def consume(follower: Follower, root: Path, picture: Picture, sentinel: str,
            seen: set[tuple[str | None, int]]) -> Picture:
    """Apply messages as the documented consumer does, up to the sentinel's create."""
    while True:
        message = take(follower, 1)[0]
        if message["type"] == "event":
            key = (follower.instance, message["seq"])
            assert key not in seen, f"seq handed out twice: {message}"
            seen.add(key)
        if message["type"] == "overflow" and not message["resync"]:
            picture = Picture(listing(root))
        else:
            picture.apply(message)
        if message.get("type") == "event" and message["path"] == str(root / sentinel):
            return picture


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_the_documented_consumer_keeps_the_tree_through_restarts(start_watching, watched: Path,
                                                                 stop: str) -> None:
    populate(watched)
    daemon = start_watching()
    seen: set[tuple[str | None, int]] = set()
    with Client.follow(socket_path=daemon.socket, backoff=QUICK) as follower:
        follower.start()
        picture = Picture(listing(watched))
        change(watched, "a0")
        (watched / "s0").touch()
        picture = consume(follower, watched, picture, "s0", seen)
        assert picture.paths == listing(watched)
        if stop == "SIGTERM":
            assert daemon.stop() == 0
        else:
            assert daemon.proc is not None
            daemon.proc.kill()
            daemon.proc.wait()
            daemon.log.close()
        forget_ready(daemon)
        change(watched, "b1")  # while the daemon is down: nobody reports it
        daemon.start()
        change(watched, "c2")  # before the follower is back: its rescan finds these
        # The rest of s0's events (its open and close), then the notice to rescan.
        while (notice := take(follower, 1)[0])["type"] == "event":
            assert os.path.basename(notice["path"]) == "s0"
        assert (notice["type"], notice["reason"], notice["resync"]) == (
            "overflow", "daemon_restart", False)
        picture = Picture(listing(watched))  # the consumer's rescan
        # Changes to what only the rescan knows of, then the sentinel.
        os.rename(watched / "new-c2", watched / "renamed-new-c2")
        os.unlink(watched / "moved-b1")
        (watched / "after").mkdir()
        (watched / "after" / "x").write_text("x")
        (watched / "s1").touch()
        picture = consume(follower, watched, picture, "s1", seen)
    assert picture.paths == listing(watched)
