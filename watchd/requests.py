"""The request side of a client connection: lines framed, handled a few per turn of the loop.

No connection may hold the loop: each handles REQUESTS_PER_TURN requests at a time, and all of
them together TURN_BUDGET_S per turn (`TurnBudget`), the one that has used the least time
first. A line started and not finished in daemon.request_timeout closes the connection.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from typing import Protocol

from watchd import protocol
from watchd.broker import Broker, Connection

# Requests handled per connection and turn of the loop: a read of 256 KiB can hold thousands,
# and handling them all at once would keep every other client waiting meanwhile.
REQUESTS_PER_TURN = 4
# Time spent on requests per turn of the loop over all connections; past it, the others wait
# for the next turn. Many connections flooding costly requests (a subscribe compiles its
# patterns) then delay a newcomer by about one request each, not by a few each.
TURN_BUDGET_S = 0.005


class LineHandler(Protocol):
    """What the daemon does with a request line (a watchd.server.Handler is one)."""

    def request_timeout(self) -> float:
        """Seconds a started request line may take to be finished."""

    def handle_line(self, conn: Connection, line: bytes) -> None: ...


class Endpoint(Protocol):
    """The connection the requests come from, as its request side needs it."""

    @property
    def conn(self) -> Connection | None:
        """The broker's connection; None before it is served and once it is closed."""

    def writable(self) -> bool:
        """False while replies would only pile up (the client does not read)."""

    def update_reading(self) -> None:
        """Read from the socket, or stop, as the request side now wants."""

    def close(self) -> None:
        """Close once what is buffered is written."""


class TurnBudget:
    """The time requests took in this turn of the loop over every connection, and the
    connections waiting for a turn, the one that has used the least time first.

    Each connection accounts the time its requests took (`used`). One that begins to wait
    starts no lower than the last one served, so a newcomer or one that asks little (a ping)
    goes before those that flood costly requests, and none waits forever.
    """

    def __init__(self) -> None:
        self.started: float | None = None
        self.clock = 0.0  # `used` of the connection served last
        self.waiting: list[tuple[float, int, Requests]] = []  # a heap
        self.order = 0  # ties go first come, first served
        self.scheduled = False

    def spent(self) -> bool:
        return self.started is not None and time.monotonic() - self.started >= TURN_BUDGET_S

    def begin(self) -> None:
        """A request is about to be handled: the turn's clock starts at its first."""
        if self.started is None:
            self.started = time.monotonic()
            asyncio.get_running_loop().call_soon(self.next_turn)

    def next_turn(self) -> None:
        self.started = None

    def wait(self, client: Requests) -> None:
        """client has requests left: it gets a turn."""
        if client.waiting:
            return
        client.waiting = True
        client.used = max(client.used, self.clock)
        self.order += 1
        heapq.heappush(self.waiting, (client.used, self.order, client))
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.run)

    def run(self) -> None:
        """A new turn: the waiting connections, least used first, while time is left."""
        self.scheduled = False
        self.started = None
        try:
            for _ in range(len(self.waiting)):
                if self.spent() or not self.waiting:
                    break
                used, _, client = heapq.heappop(self.waiting)
                client.waiting = False
                self.clock = max(self.clock, used)
                client.work()  # waits again if it still has requests
        finally:
            # Even if a request raised: the others must not be left waiting for a turn.
            if self.waiting and not self.scheduled:
                self.scheduled = True
                asyncio.get_running_loop().call_soon(self.run)


class Requests:
    """The requests of one connection: bytes read, lines framed, a few handled per turn."""

    def __init__(self, endpoint: Endpoint, broker: Broker, handler: LineHandler,
                 max_line_bytes: int, budget: TurnBudget) -> None:
        self.endpoint = endpoint
        self.broker = broker
        self.handler = handler
        self.budget = budget
        self.trusted = False  # never made to wait for a turn (root, the daemon's own user)
        self.used = 0.0  # seconds its requests took (see TurnBudget)
        self.waiting = False  # in budget.waiting
        self.framer = protocol.LineFramer(max_line_bytes)
        # Bytes read and not yet framed, from `inbox_at` on: handled a few lines per turn, and
        # kept as the one bytes object they came in (thousands of small lines cost more).
        # Reading stays paused while any are left.
        self.inbox = b""
        self.inbox_at = 0
        self.pending: deque[bytes] = deque()  # complete lines framed and not yet handled
        self.too_long: protocol.LineTooLong | None = None
        self.line_timer: asyncio.TimerHandle | None = None  # a started line's deadline

    @property
    def idle(self) -> bool:
        """Nothing read is left to handle: reading may go on."""
        return not self.pending and not self.inbox and self.too_long is None

    def receive(self, data: bytes) -> None:
        """Bytes read from the client: handle what they hold now, or wait for a turn."""
        if self.too_long is not None:
            return
        if self.inbox_at < len(self.inbox):
            data = self.inbox[self.inbox_at:] + data  # only after a pause: rare
        self.inbox, self.inbox_at = data, 0
        if self.waiting:
            return  # its turn comes
        if self.budget.waiting and not self.trusted:
            self.budget.wait(self)  # others were first
            self.endpoint.update_reading()
        else:
            self.work()

    def frame_some(self) -> None:
        """Frame the next few lines of the inbox into `pending`."""
        inbox = self.inbox
        start = self.inbox_at
        end = start
        for _ in range(REQUESTS_PER_TURN):
            found = inbox.find(b"\n", end)
            if found < 0:
                end = len(inbox)
                break
            end = found + 1
        self.inbox_at = end
        if end == len(inbox):
            self.inbox, self.inbox_at = b"", 0
        try:
            lines = self.framer.feed(inbox[start:end])
            if lines and self.line_timer is not None:
                self.line_timer.cancel()  # that line is done; a new one gets its own deadline
                self.line_timer = None
            self.pending.extend(lines)
        except protocol.LineTooLong as e:
            self.pending.extend(e.lines)
            self.too_long = e
            self.inbox, self.inbox_at = b"", 0

    def work(self) -> None:
        """Handle a few pending requests; the rest wait for a later turn of the loop, and
        for the client to read its replies (they count against the same bounds as events)."""
        endpoint = self.endpoint
        conn = endpoint.conn
        if conn is None:
            return
        pending = self.pending
        handled = 0
        budget = self.budget
        while handled < REQUESTS_PER_TURN and endpoint.writable():
            if not self.trusted and budget.spent():
                break
            if not pending:
                if not self.inbox:
                    break
                self.frame_some()
                continue
            line = pending.popleft()
            handled += 1  # blank lines too: a read of nothing but newlines is no free pass
            if line.strip():
                budget.begin()
                start = time.monotonic()
                self.handler.handle_line(conn, line)
                self.used += time.monotonic() - start
        more = bool(pending or self.inbox)
        if not more and self.too_long is not None:
            self.broker.reply(conn, self.too_long.reply())
            endpoint.close()
            return
        if more and endpoint.writable():
            budget.wait(self)
        endpoint.update_reading()

    def update_deadline(self, reading: bool) -> None:
        """A line started and not finished while we read has request_timeout to be finished
        (while we do not read, the rest may be waiting on our side)."""
        started = reading and self.framer.buffered > 0
        if started and self.line_timer is None:
            self.line_timer = asyncio.get_running_loop().call_later(
                self.handler.request_timeout(), self.line_timed_out)
        elif not started:
            self.cancel_deadline()

    def cancel_deadline(self) -> None:
        if self.line_timer is not None:
            self.line_timer.cancel()
            self.line_timer = None

    def line_timed_out(self) -> None:
        self.line_timer = None
        conn = self.endpoint.conn
        if conn is None:
            return
        timeout = self.handler.request_timeout()
        self.broker.reply(conn, protocol.error(
            protocol.ErrorCode.REQUEST_TIMEOUT,
            f"a request line was started and not finished within {timeout:g} s "
            "(daemon.request_timeout); closing the connection"))
        self.too_long = None
        self.inbox, self.pending = b"", deque()
        self.endpoint.close()
