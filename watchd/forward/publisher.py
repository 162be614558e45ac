"""The NATS side of a forwarder: one connection at a time, publishes with pipelined
JetStream acknowledgements, and the position they prove (the last acknowledged seq).

Every message goes out with a reply subject of its own; JetStream answers each with an
acknowledgement (or an error) there. Publishing never waits for them: up to WINDOW messages
are in flight, and `acked` moves on over the ones acknowledged in a row from the oldest.
A connection that breaks, an error acknowledgement, or one that does not come within
ACK_TIMEOUT_S ends the connection: what was in flight is forgotten, and the forwarder
publishes again from `acked` on a new one (JetStream drops the repeats by their
Nats-Msg-Id). The client library's own reconnection is off: it would send, on the new
connection, what it had buffered for the old one, out of order with what we publish again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StorageType

from watchd.config.model import ForwardConfig
from watchd.forward.subjects import capture

log = logging.getLogger("watchd.forward")

WINDOW: Final = 16384  # messages in flight at most
ACK_TIMEOUT_S: Final = 10.0
CONNECT_TIMEOUT_S: Final = 5
BACKOFF_S: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# The duplicate window of a stream made by create_stream: a message published again within
# it is dropped by its Nats-Msg-Id. It covers the longest wait between a publish and its
# repeat that the backoff allows (30 s), a restart of the daemon and a reconnection, with
# room to spare; the server keeps one id per message for this long.
DUPLICATE_WINDOW_S: Final = 600.0


@dataclass(slots=True)
class _Flight:
    seq: int | None  # None: a notice
    at: float  # time.monotonic() when published
    done: bool = False


class Unavailable(Exception):
    """No connection to publish on: the message says why, for people."""


class Publisher:
    """One forwarder's connection to NATS and its messages in flight."""

    def __init__(self, config: ForwardConfig, on_change: Callable[[], None]) -> None:
        self.config = config
        self.on_change = on_change  # the status changed
        self.nc: Client | None = None
        self.server: str | None = None
        self.last_error: str | None = None
        self.errors = 0
        self.acked: int | None = None  # the last seq acknowledged with every one before it
        self.flights: deque[_Flight] = deque()
        self.events_in_flight = 0
        self.by_token: dict[str, _Flight] = {}
        self.token = 0
        self.inbox = ""
        self.lost = asyncio.Event()  # the current connection is to be given up
        self.up = asyncio.Event()  # a connection is ready to publish on
        self.room = asyncio.Event()
        self.room.set()

    @property
    def connected(self) -> bool:
        return self.up.is_set()

    @property
    def in_flight(self) -> int:
        return len(self.flights)

    def ready(self) -> bool:
        """Connected, with room for another message in flight."""
        return self.up.is_set() and len(self.flights) < WINDOW

    # -- the connection ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, and connect again with backoff each time the connection is lost."""
        failures = 0
        while True:
            try:
                await self._open()
            except Exception as e:  # every failure is reported and retried
                self.fail(str(e) if isinstance(e, Unavailable) else describe(e))
                await self._close()
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                log.warning("forward %s: %s; trying again in %.1f s", self.config.name,
                            self.last_error, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            log.info("forward %s: connected to %s", self.config.name, self.server)
            await self.lost.wait()
            await self._close()
            await asyncio.sleep(BACKOFF_S[0])

    async def _open(self) -> None:
        cfg = self.config
        self.lost.clear()
        self.nc = nc = Client()
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[str] = loop.create_future()

        async def on_error(e: Exception) -> None:
            if not failed.done():
                failed.set_result(describe(e))
            elif self.up.is_set():
                log.warning("forward %s: %s", cfg.name, describe(e))

        async def on_closed() -> None:
            if self.up.is_set():
                self.fail("the connection to the NATS server was lost")

        options: dict[str, Any] = {}
        if cfg.credentials is not None:
            options["user_credentials"] = cfg.credentials
        if cfg.token is not None:
            options["token"] = cfg.token
        if cfg.user is not None:
            options["user"], options["password"] = cfg.user, cfg.password
        connect = loop.create_task(nc.connect(
            list(cfg.urls), name=f"watchd forward {cfg.name}", allow_reconnect=False,
            max_reconnect_attempts=0, connect_timeout=CONNECT_TIMEOUT_S, error_cb=on_error,
            skip_subject_validation=True, disconnected_cb=on_closed, closed_cb=on_closed,
            **options))
        # The library tries the servers again and again by itself when a first connection
        # fails: its first error ends the attempt, and the retries (with their backoff) are ours.
        either: set[asyncio.Future[Any]] = {connect, failed}
        await asyncio.wait(either, timeout=CONNECT_TIMEOUT_S * len(cfg.urls) + 1,
                           return_when=asyncio.FIRST_COMPLETED)
        if not connect.done() or connect.exception() is not None:
            connect.cancel()
            with contextlib.suppress(BaseException):
                await connect
            if failed.done():
                raise Unavailable(failed.result())
            error = connect.exception() if connect.done() and not connect.cancelled() else None
            raise Unavailable(describe(error) if error else "cannot reach the NATS server: "
                                  "no answer within the connect timeout")
        if not failed.done():
            failed.set_result("")  # errors from now on are the connection's
        url = nc.connected_url
        self.server = url.geturl() if url is not None else None
        await self._check_stream(nc)
        self.inbox = nc.new_inbox()
        await nc.subscribe(self.inbox + ".*", cb=self._ack)
        self.last_error = None
        self.up.set()
        self.on_change()

    async def _check_stream(self, nc: Client) -> None:
        cfg = self.config
        js = nc.jetstream()
        try:
            await js.stream_info(cfg.stream)
            return
        except nats.js.errors.NotFoundError:
            if not cfg.create_stream:
                raise Unavailable(
                    f"stream {cfg.stream!r} not found on the server; create it (capturing "
                    f"{' and '.join(capture(cfg.subject))}) or set create_stream = true"
                ) from None
        except nats.errors.NoRespondersError:
            raise Unavailable("JetStream is not enabled on the server (no answer to "
                                  "its API); enable it, or connect to one that has it") from None
        await js.add_stream(name=cfg.stream, subjects=list(capture(cfg.subject)),
                            storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S)
        log.info("forward %s: created stream %s", cfg.name, cfg.stream)

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
        self.flights.clear()
        self.events_in_flight = 0
        self.by_token.clear()
        self.room.set()
        self.server = None
        nc, self.nc = self.nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()
        self.on_change()

    # -- publishing ----------------------------------------------------------------------------

    async def publish(self, seq: int | None, subject: str, payload: bytes, msg_id: str) -> None:
        """Publish one message; its acknowledgement comes later (see `acked`)."""
        nc = self.nc
        assert nc is not None
        self.token += 1
        token = str(self.token)
        flight = _Flight(seq, time.monotonic())
        if seq is not None:
            self.events_in_flight += 1
        self.flights.append(flight)
        self.by_token[token] = flight
        if len(self.flights) >= WINDOW:
            self.room.clear()
        try:
            await nc.publish(subject, payload, reply=f"{self.inbox}.{token}",
                             headers={"Nats-Msg-Id": msg_id})
        except Exception as e:  # a closed or broken connection
            self.fail(describe(e))

    async def _ack(self, msg: Msg) -> None:
        flight = self.by_token.pop(msg.subject.rpartition(".")[2], None)
        if flight is None:
            return  # of a connection given up
        problem = ack_problem(msg, self.config)
        if problem is not None:
            self.fail(problem)
            return
        flight.done = True
        flights = self.flights
        moved = False
        while flights and flights[0].done:
            seq = flights.popleft().seq
            if seq is not None:
                self.acked = seq
                self.events_in_flight -= 1
                moved = True
        if len(flights) < WINDOW // 2:
            self.room.set()
        if moved:
            self.on_change()

    def overdue(self) -> bool:
        """The oldest message in flight waits for its acknowledgement too long."""
        return bool(self.flights) and time.monotonic() - self.flights[0].at > ACK_TIMEOUT_S

    def position(self) -> int | None:
        """The last seq handed to the current connection (in flight or acknowledged)."""
        for flight in reversed(self.flights):
            if flight.seq is not None:
                return flight.seq
        return self.acked

    async def drain(self, deadline: float) -> None:
        """Wait for the messages in flight to be acknowledged, at most `deadline` seconds."""
        end = time.monotonic() + deadline
        while self.flights and self.up.is_set() and time.monotonic() < end:
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self._close()


def ack_problem(msg: Msg, config: ForwardConfig) -> str | None:
    """What an acknowledgement says went wrong, or None when the message is stored."""
    data = msg.data
    # The common case without a JSON parse: {"stream":"WATCHD","seq":17} (maybe with
    # "duplicate":true); an error reply has an "error" member, a status reply no body.
    if data.startswith(b'{"stream":') and b'"error"' not in data and not msg.headers:
        return None
    status = msg.headers.get("Status") if msg.headers else None
    if status == "503":
        return (f"no stream captures the subject (stream {config.stream!r} must capture "
                f"{' and '.join(capture(config.subject))})")
    try:
        reply = json.loads(msg.data) if msg.data else {}
    except ValueError:
        return f"an acknowledgement that is not JSON: {msg.data[:100]!r}"
    error = reply.get("error") if isinstance(reply, dict) else None
    if error:
        text = error.get("description", error) if isinstance(error, dict) else error
        return f"JetStream refused a message: {text}"
    if not isinstance(reply, dict) or "seq" not in reply:
        return f"an unexpected acknowledgement: {msg.data[:100]!r}"
    return None


def describe(e: BaseException) -> str:
    """An exception of the client library as a line for people."""
    text = str(e).strip() or type(e).__name__
    if isinstance(e, nats.errors.NoServersError | TimeoutError | OSError):
        return f"cannot reach the NATS server: {text}"
    if "authorization" in text.lower() or "authentication" in text.lower():
        return f"the NATS server refused the credentials: {text}"
    return text
