"""The hold-back looks again once per turn of the loop, not once per connection that pauses or
resumes: the real Broker, the real server protocol on real socketpairs, no watcher process.

A turn is counted with `asyncio.sleep(0)`: a callback the loop was asked for with call_soon
before the test's task yields runs before the task resumes. Nothing here waits for time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack

from tests.test_daemon_parts import CONFIG, Client, Parts, Watcher, build, connected
from watchd.server import ClientProtocol

SUBSCRIBERS = 6
# Small queues: a paused connection counts as behind at once (levels.behind is 0).
MANY = CONFIG.replace("max_clients = 2\nmax_clients_per_user = 1",
                      f"max_clients = {SUBSCRIBERS}\nmax_clients_per_user = {SUBSCRIBERS}\n"
                      "client_queue = 50")
# One publish of this many lines overfills every connection's socket and transport buffer.
BURST = [(0x100, 0, "/srv/open/" + "x" * 200 + str(i), None) for i in range(6000)]


def counting_reviews(parts: Parts) -> Callable[[], int]:
    """Count the hold-back's reviews from now on; returns the count so far."""
    review = parts.hold.review
    count = 0

    def counted() -> None:
        nonlocal count
        count += 1
        review()

    parts.hold.review = counted  # type: ignore[method-assign]
    return lambda: count


async def subscribed(parts: Parts, stack: AsyncExitStack, n: int) -> list[Client]:
    clients = []
    for i in range(n):
        client = await stack.enter_async_context(connected(parts))
        await client.line()  # hello
        reply = await client.ask({"op": "subscribe", "id": i, "watch": "open"})
        assert reply["type"] == "subscribed"
        clients.append(client)
    return clients


async def drain(client: Client, conn: ClientProtocol) -> None:
    """Read from the client's socket until the server resumes writing to it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while conn.paused:
        assert loop.time() < deadline, "the client read everything and is still paused"
        await asyncio.wait_for(loop.sock_recv(client.sock, 1 << 20), 10)


def test_connections_that_pause_in_one_publish_are_reviewed_once_after_it() -> None:
    watcher = Watcher()

    async def main() -> None:
        parts = build(MANY, watcher)
        async with AsyncExitStack() as stack:
            await subscribed(parts, stack, SUBSCRIBERS)
            await asyncio.sleep(0)  # the reviews the subscribes asked for
            reviews = counting_reviews(parts)
            parts.broker.publish_reads("open", [(1.0, BURST)])
            assert all(c.paused for c in parts.clients)
            # Nothing reviewed inside the publish; the hold is decided when the turn ends...
            assert reviews() == 0
            assert not watcher.paused
            await asyncio.sleep(0)
            # ...once for all of them, and before the loop polls for the watcher's next batch.
            assert reviews() == 1
            assert watcher.paused
            assert parts.hold.clock.holding

    asyncio.run(main())


def test_pauses_in_a_publish_are_reviewed_once_before_the_watchers_next_message() -> None:
    watcher = Watcher()

    async def main() -> None:
        parts = build(MANY, watcher)
        async with AsyncExitStack() as stack:
            await subscribed(parts, stack, SUBSCRIBERS)
            await asyncio.sleep(0)
            reviews = counting_reviews(parts)
            # What the daemon does with each message of the watcher: the hold, if any, must
            # stop the messages that follow in the same read (supervisor._dispatch).
            parts.broker.publish_reads("open", [(1.0, BURST)])
            parts.hold.after_publish()
            assert reviews() == 1
            assert watcher.paused
            await asyncio.sleep(0)
            assert reviews() == 1  # that review answered the one the pauses asked for

    asyncio.run(main())


def test_a_hold_is_released_in_the_turn_after_a_paused_connection_resumes() -> None:
    watcher = Watcher()

    async def main() -> None:
        parts = build(MANY, watcher)
        async with AsyncExitStack() as stack:
            (client,) = await subscribed(parts, stack, 1)
            (conn,) = parts.clients
            parts.broker.publish_reads("open", [(1.0, BURST)])
            await asyncio.sleep(0)
            assert watcher.paused
            await drain(client, conn)
            # The resume asked for a review before this task resumed: one turn and it is done.
            await asyncio.sleep(0)
            assert not watcher.paused
            assert not parts.hold.clock.holding

    asyncio.run(main())


def test_a_hold_is_released_in_the_turn_after_the_paused_connection_closes() -> None:
    watcher = Watcher()

    async def main() -> None:
        parts = build(MANY, watcher)
        async with AsyncExitStack() as stack:
            await subscribed(parts, stack, 1)
            (conn,) = parts.clients
            parts.broker.publish_reads("open", [(1.0, BURST)])
            await asyncio.sleep(0)
            assert watcher.paused
            conn.abort()  # connection_lost comes in a later turn, then the review's turn
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while parts.clients:
                assert loop.time() < deadline, "the aborted connection was never lost"
                await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert not watcher.paused

    asyncio.run(main())
