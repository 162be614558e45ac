"""The hold-back looks again once per turn of the loop, not once per connection that pauses or
resumes: the real Broker, the real server protocol on real socketpairs, no watcher process.

A turn is counted with `asyncio.sleep(0)`: a callback the loop was asked for with call_soon
before the test's task yields runs before the task resumes. Nothing here waits for time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Burst:
    """What a scenario after the burst looks at."""

    parts: Parts
    watcher: Watcher
    clients: list[Client]
    reviews: Callable[[], int]  # the hold-back's reviews since just before the burst


def with_burst(subscribers: int, scenario: Callable[[Burst], Awaitable[None]]) -> None:
    """Subscribe, then publish a burst that pauses every connection; then the scenario, on
    the loop."""
    watcher = Watcher()

    async def main() -> None:
        parts = build(MANY, watcher)
        async with AsyncExitStack() as stack:
            clients = await subscribed(parts, stack, subscribers)
            await asyncio.sleep(0)  # the reviews the subscribes asked for
            reviews = counting_reviews(parts)
            parts.broker.publish_reads("open", [(1.0, BURST)])
            assert all(c.paused for c in parts.clients)
            await scenario(Burst(parts, watcher, clients, reviews))

    asyncio.run(main())


def test_connections_that_pause_in_one_publish_are_reviewed_once_after_it() -> None:
    async def scenario(b: Burst) -> None:
        # Nothing reviewed inside the publish; the hold is decided when the turn ends...
        assert b.reviews() == 0
        assert not b.watcher.paused
        await asyncio.sleep(0)
        # ...once for all of them, and before the loop polls for the watcher's next batch.
        assert b.reviews() == 1
        assert b.watcher.paused
        assert b.parts.hold.clock.holding

    with_burst(SUBSCRIBERS, scenario)


def test_pauses_in_a_publish_are_reviewed_once_before_the_watchers_next_message() -> None:
    async def scenario(b: Burst) -> None:
        # What the daemon does after each message of the watcher: the hold, if any, must stop
        # the messages that follow in the same read (supervisor._dispatch).
        b.parts.hold.after_publish()
        assert b.reviews() == 1
        assert b.watcher.paused
        await asyncio.sleep(0)
        assert b.reviews() == 1  # that review answered the one the pauses asked for

    with_burst(SUBSCRIBERS, scenario)


def test_a_hold_is_released_in_the_turn_after_a_paused_connection_resumes() -> None:
    async def scenario(b: Burst) -> None:
        await asyncio.sleep(0)
        assert b.watcher.paused
        (conn,) = b.parts.clients
        await drain(b.clients[0], conn)
        # The resume asked for a review before this task resumed: one turn and it is done.
        await asyncio.sleep(0)
        assert not b.watcher.paused
        assert not b.parts.hold.clock.holding

    with_burst(1, scenario)


def test_a_hold_is_released_in_the_turn_after_the_paused_connection_closes() -> None:
    async def scenario(b: Burst) -> None:
        await asyncio.sleep(0)
        assert b.watcher.paused
        (conn,) = b.parts.clients
        conn.abort()  # connection_lost comes in a later turn, then the review's turn
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while b.parts.clients:
            assert loop.time() < deadline, "the aborted connection was never lost"
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not b.watcher.paused

    with_burst(1, scenario)
