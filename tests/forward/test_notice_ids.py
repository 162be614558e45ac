"""The Nats-Msg-Id of notices: identical notices at one seq are all stored, a replay of them
is not stored again."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from tests.nats_server import NatsServer, nats_server, stream_messages, wait_stream_count
from watchd.config.model import ForwardConfig
from watchd.forward.child import Forwarder, NoticeIds
from watchd.forward.setup import Setup

pytest.importorskip("nats")


def test_identical_notices_at_one_seq_are_numbered_and_a_replay_numbers_them_the_same(
        ) -> None:
    def ids(ids: NoticeIds) -> list[bytes]:
        return [ids.next("i1", 7, "resynced", "up", ""), ids.next("i1", 7, "overflow", "up",
                                                                  "kernel_queue"),
                ids.next("i1", 7, "resynced", "up", ""), ids.next("i1", 8, "resynced", "up", "")]

    first = ids(NoticeIds())
    assert first == [b"i1:7:resynced:up::0", b"i1:7:overflow:up:kernel_queue:0",
                     b"i1:7:resynced:up::1", b"i1:8:resynced:up::0"]
    assert ids(NoticeIds()) == first


@pytest.fixture
def nats(workdir: str) -> Iterator[NatsServer]:
    with nats_server(workdir) as server:
        yield server


def test_two_identical_notices_at_one_seq_both_reach_the_stream(nats: NatsServer) -> None:
    config = ForwardConfig(name="central", urls=(nats.url,), create_stream=True)
    setup = Setup(config, "/nonexistent", "h1", ("up",), None, None)
    notice = {"type": "resynced", "seq": 7, "watch": "up"}

    async def publish() -> None:
        control, other = socket.socketpair()
        with control, other:
            forwarder = Forwarder(setup, control)
            forwarder.instance = "i1"
            running = asyncio.create_task(forwarder.publisher.run())
            try:
                async with asyncio.timeout(20):
                    await forwarder.publisher.up.wait()
                    for _ in range(2):
                        forwarder.publish_notice(dict(notice), "up")
                    # The same two again, as a new subscription from before seq 7 hands them.
                    forwarder.notice_ids = NoticeIds()
                    for _ in range(2):
                        forwarder.publish_notice(dict(notice), "up")
                    while forwarder.publisher.seqs:
                        await asyncio.sleep(0.02)
            finally:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
                await forwarder.publisher.close()

    asyncio.run(publish())
    wait_stream_count(nats.url, 2)
    messages = stream_messages(nats.url)
    assert [(p, msg_id) for _, p, msg_id in messages] == [
        (notice, "i1:7:resynced:up::0"), (notice, "i1:7:resynced:up::1")]
