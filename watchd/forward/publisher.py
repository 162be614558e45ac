"""The NATS side of a forwarder: one connection at a time, publishes with pipelined
JetStream acknowledgements, and the position they prove (the last acknowledged seq).

Every message goes out with a reply subject of its own, `<inbox>.<token>`, the token one
more than the last message's; JetStream answers each with an acknowledgement (or an error)
there. Publishing never waits for them: up to WINDOW messages are in flight, and `acked`
moves on over the ones acknowledged in a row from the oldest. A connection that breaks, an
error acknowledgement, or one that does not come within ACK_TIMEOUT_S ends the connection:
what was in flight is forgotten, and the forwarder publishes again from `acked` on a new one
(JetStream drops the repeats by their Nats-Msg-Id). A connection is reached and its stream
checked through the client library (watchd.forward.admin), then published on through our own
(watchd.forward.wire): see docs/forwarding.md, "How it is built".
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

from watchd.config.model import ForwardConfig
from watchd.forward.admin import Unavailable, describe, reach
from watchd.forward.subjects import capture
from watchd.forward.urls import shown
from watchd.forward.wire import Reply, Wire, WireError
from watchd.protocol.event_lines import MAX_BATCH

log = logging.getLogger("watchd.forward")

WINDOW: Final = 65536  # messages in flight at most
# `room` is cleared when fewer than this many more may be published: a frame of events (at
# most MAX_BATCH) always fits while it is set. It is set again at WINDOW // 2 in flight.
ROOM: Final = MAX_BATCH
ACK_TIMEOUT_S: Final = 10.0
BACKOFF_S: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
NOTICE: Final = -1  # the seq of a message in flight that is a notice, not an event
MSG_ID_HEAD: Final = b"NATS/1.0\r\nNats-Msg-Id: "


class Publisher:
    """One forwarder's connection to NATS and its messages in flight."""

    def __init__(self, config: ForwardConfig, on_change: Callable[[], None]) -> None:
        self.config = config
        self.on_change = on_change  # the status changed
        self.wire: Wire | None = None
        self.server: str | None = None
        self.last_error: str | None = None
        self.errors = 0
        self.acked: int | None = None  # the last seq acknowledged with every one before it
        # In flight: the seq of each message (NOTICE for a notice) from the token `base` on;
        # `done` holds the tokens acknowledged out of order, `sent` (token after a write, when).
        self.seqs: deque[int] = deque()
        self.base = 0
        self.done: set[int] = set()
        self.sent: deque[tuple[int, float]] = deque()
        self.events_in_flight = 0
        # Events in flight on a connection given up: still not acknowledged (part of the
        # lag) until the forwarder subscribes again from its position and hands them anew.
        self.forgotten = 0
        self.lost = asyncio.Event()  # the current connection is to be given up
        self.proven = False  # a message was acknowledged on the current connection
        self.up = asyncio.Event()  # a connection is ready to publish on
        self.room = asyncio.Event()  # connected or not, a frame's events fit in the window
        self.room.set()

    @property
    def connected(self) -> bool:
        return self.up.is_set()

    def ready(self) -> bool:
        """Connected, with room for another message in flight."""
        return self.up.is_set() and len(self.seqs) < WINDOW

    def free(self) -> int:
        """How many more messages may be published now."""
        # (Notices about every watch may take it past WINDOW by a few.)
        return max(0, WINDOW - len(self.seqs)) if self.up.is_set() else 0

    # -- the connection ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, and connect again with backoff each time the connection is lost."""
        failures = 0
        while True:
            try:
                wire = await self._open()
            except Exception as e:  # every failure is reported and retried
                self.fail(str(e) if isinstance(e, Unavailable | WireError) else describe(e))
                await self._close()
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                log.warning("forward %s: %s; trying again in %.1f s", self.config.name,
                            self.last_error, delay)
                await asyncio.sleep(delay)
                continue
            log.info("forward %s: connected to %s", self.config.name, self.server)
            since = time.monotonic()
            await self._serve(wire)
            # A connection counts as good once JetStream acknowledged a message on it (or it
            # lasted a whole backoff): a server that takes the connection but refuses every
            # publish is retried ever more slowly, not every half second.
            if self.proven or time.monotonic() - since >= BACKOFF_S[-1]:
                failures = 0
            delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
            failures += 1
            log.warning("forward %s: %s; connecting again in %.1f s", self.config.name,
                        self.last_error, delay)
            await self._close()
            await asyncio.sleep(delay)

    async def _open(self) -> Wire:
        self.lost.clear()
        self.proven = False
        url = await reach(self.config)
        wire = await Wire.open(url, self.config)
        wire.subscribe()
        self.wire = wire
        self.server = shown(url)
        self.last_error = None
        self.up.set()
        self.on_change()
        return wire

    async def _serve(self, wire: Wire) -> None:
        """Read the acknowledgements until the connection ends or is given up."""
        reading = asyncio.ensure_future(wire.replies(self._acks))
        # Its end is read below, or not at all when we are cancelled: never an unread error.
        reading.add_done_callback(lambda task: task.cancelled() or task.exception())
        await first_of(reading, asyncio.ensure_future(self.lost.wait()))
        if reading.done() and not reading.cancelled() and (e := reading.exception()):
            self.fail(str(e) if isinstance(e, WireError) else describe(e))

    def fail(self, message: str) -> None:
        """Give up the current connection (if any) for this reason."""
        if self.lost.is_set():
            return  # given up already: one failure is counted and reported once
        self.errors += 1
        self.last_error = message
        self.up.clear()
        self.lost.set()
        self.on_change()

    async def _close(self) -> None:
        self.up.clear()
        self.forgotten += self.events_in_flight
        self.seqs.clear()
        self.done.clear()
        self.sent.clear()
        self.base = 0
        self.events_in_flight = 0
        self.room.set()
        self.server = None
        wire, self.wire = self.wire, None
        if wire is not None:
            await wire.close()
        self.on_change()

    # -- publishing ----------------------------------------------------------------------------

    def publish_events(self, msg_id: bytes, events: Iterable[tuple[int, bytes, bytes]]) -> None:
        """Publish events, (seq, subject, payload) each, with Nats-Msg-Id `msg_id` + seq, in
        one write; their acknowledgements come later (see `acked`). Call only when connected,
        with free() room for them."""
        wire = self.wire
        assert wire is not None
        head = MSG_ID_HEAD + msg_id
        reply = wire.inbox
        seqs = self.seqs
        token = self.base + len(seqs)
        frames = []
        for seq, subject, payload in events:
            number = b"%d" % seq
            size = len(head) + len(number) + 4
            frames.append(b"HPUB %b %b%d %d %d\r\n%b%b\r\n\r\n%b\r\n" % (
                subject, reply, token, size, size + len(payload), head, number, payload))
            seqs.append(seq)
            token += 1
        if frames:
            self.events_in_flight += len(frames)
            self._sent(wire, b"".join(frames), token)

    def publish_notice(self, subject: bytes, payload: bytes, msg_id: bytes) -> None:
        """Publish one notice (a message with no seq of its own)."""
        wire = self.wire
        assert wire is not None
        token = self.base + len(self.seqs)
        head = MSG_ID_HEAD + msg_id + b"\r\n\r\n"
        self.seqs.append(NOTICE)
        self._sent(wire, b"HPUB %b %b%d %d %d\r\n%b%b\r\n" % (
            subject, wire.inbox, token, len(head), len(head) + len(payload), head, payload),
            token + 1)

    def _sent(self, wire: Wire, data: bytes, end: int) -> None:
        wire.write(data)
        self.sent.append((end, time.monotonic()))
        if len(self.seqs) > WINDOW - ROOM:
            self.room.clear()

    def _acks(self, stored: list[int], others: list[Reply]) -> None:
        # The messages stored count before an error given up the connection for (they are
        # before it in the window, or done out of order after it: either way, not past it).
        problem = None
        for reply in others:
            if (said := ack_problem(reply, self.config)) is None:
                stored.append(reply.token)
            else:
                problem = problem or said
        if stored:
            self.proven = True
        seqs = self.seqs
        done = self.done
        base = self.base
        end = base + len(seqs)
        before = self.acked
        acked = before
        events = self.events_in_flight
        for token in stored:
            if token != base:
                if base < token < end:
                    done.add(token)  # out of order: counted when the ones before it are
                continue
            while True:
                seq = seqs.popleft()
                base += 1
                if seq != NOTICE:
                    acked = seq
                    events -= 1
                if not done or base not in done:
                    break
                done.discard(base)
        self.base, self.acked, self.events_in_flight = base, acked, events
        if len(seqs) < WINDOW // 2:
            self.room.set()
        if problem is not None:
            self.fail(problem)
        elif acked != before:
            self.on_change()

    def overdue(self) -> bool:
        """The oldest message in flight waits for its acknowledgement too long."""
        sent = self.sent
        while sent and sent[0][0] <= self.base:
            sent.popleft()  # acknowledged, every message of that write
        return bool(sent) and time.monotonic() - sent[0][1] > ACK_TIMEOUT_S

    def keepalive(self) -> None:
        """PING a quiet server; give the connection up when it does not answer in time."""
        wire = self.wire
        if wire is not None and self.up.is_set():
            problem = wire.keepalive(self.config.ping_interval)
            if problem is not None:
                self.fail(problem)

    def position(self) -> int | None:
        """The last seq handed to the current connection (in flight or acknowledged)."""
        for seq in reversed(self.seqs):
            if seq != NOTICE:
                return seq
        return self.acked

    async def drain(self, deadline: float) -> None:
        """Wait for the messages in flight to be acknowledged, at most `deadline` seconds."""
        end = time.monotonic() + deadline
        while self.seqs and self.up.is_set() and time.monotonic() < end:
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self._close()


async def first_of(*waits: asyncio.Future[Any]) -> None:
    """Wait until one of them is done, then cancel the others (also when we are cancelled:
    none outlives the wait). A done one is left to be read."""
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def ack_problem(reply: Reply, config: ForwardConfig) -> str | None:
    """What a reply that is not a plain acknowledgement says went wrong, or None when the
    message is stored all the same."""
    if reply.status.startswith(b"NATS/1.0 503"):
        return (f"no stream captures the subject (stream {config.stream!r} must capture "
                f"{' and '.join(capture(config.subject))})")
    if reply.status and not reply.data:
        return f"an unexpected reply: {reply.status[:100]!r}"
    try:
        answer = json.loads(reply.data)
    except ValueError:
        return f"an acknowledgement that is not JSON: {reply.data[:100]!r}"
    error = answer.get("error") if isinstance(answer, dict) else None
    if error:
        text = error.get("description", error) if isinstance(error, dict) else error
        return f"JetStream refused a message: {text}"
    if not isinstance(answer, dict) or "seq" not in answer:
        return f"an unexpected acknowledgement: {reply.data[:100]!r}"
    return None
