"""Waiting for the watcher to confirm a configuration it was sent, by its generation.

The daemon numbers every configuration it sends the watcher process (channel.Configure); the
watcher answers APPLIED with that number once its watches are in place. A reload waits for it
before it tells systemd READY=1, and start-up before its first READY=1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Confirmations:
    """Waiting for the watcher to confirm (APPLIED) a configuration, by its generation."""

    def __init__(self, stopping: asyncio.Event) -> None:
        self.stopping = stopping
        self.waiters: dict[int, asyncio.Future[None]] = {}

    async def wait(self, generation: int, *, deadline: float | None = None,
                   meanwhile: Callable[[], None] | None = None) -> bool:
        """True once the watcher applied `generation` or a later one; False at the deadline
        or on stop. `meanwhile` runs every second until then."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.waiters[generation] = future
        give_up = None if deadline is None else loop.time() + deadline
        while not future.done() and not self.stopping.is_set():
            if give_up is not None and loop.time() >= give_up:
                break
            done, _ = await asyncio.wait({future}, timeout=1.0)
            if not done and meanwhile is not None:
                meanwhile()
        return future.done()

    def applied(self, generation: int) -> None:
        """The watcher applied `generation`: it answers the waits for it and earlier ones."""
        for gen in list(self.waiters):
            if gen <= generation:
                future = self.waiters.pop(gen)
                if not future.done():
                    future.set_result(None)
