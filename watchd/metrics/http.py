"""The metrics over HTTP: a minimal GET /metrics server on the daemon's own event loop.

Not prometheus_client's server, which runs threads: here a scrape is one more connection of
the loop, and whoever reaches the port (anyone on the machine, for 127.0.0.1) is held to
bounds that keep it from stalling or starving anything: a request head of at most
MAX_HEAD_BYTES sent within HEAD_TIMEOUT_S, a reply taken within WRITE_TIMEOUT_S, at most
MAX_CONNECTIONS connections at once, and one request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from watchd.errors import WatchdError

log = logging.getLogger("watchd.metrics")

MAX_HEAD_BYTES: Final = 8192  # the request line and headers; a scraper sends some 300
HEAD_TIMEOUT_S: Final = 5.0  # to send them, from the connection on
WRITE_TIMEOUT_S: Final = 10.0  # for the client to take the reply
# Connections at once; one more is closed at once. A scrape takes milliseconds, so a few
# suffice even for several scrapers.
MAX_CONNECTIONS: Final = 16

# What generate_latest writes for names like ours is the classic text format, which every
# Prometheus reads; a newer version in the header could make an older server refuse it.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

Address = tuple[str, int]


class MetricsBindError(WatchdError):
    """daemon.metrics cannot be listened on; the message says where and why."""


def show_address(address: Address) -> str:
    """host:port as the configuration writes it ([...] around an IPv6 address)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reply(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
           extra: str = "", head_only: bool = False) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
    return head.encode() + (b"" if head_only else body)


def respond(head: bytes, render: Callable[[], bytes]) -> bytes:
    """The reply to a request head (request line and headers, without the blank line)."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _reply("400 Bad Request", b"expected an HTTP/1.x request line\n")
    method, target, _ = parts
    if method not in (b"GET", b"HEAD"):
        return _reply("405 Method Not Allowed", b"only GET and HEAD\n",
                      extra="Allow: GET, HEAD\r\n")
    if target.split(b"?", 1)[0] != b"/metrics":
        return _reply("404 Not Found", b"the metrics are at /metrics\n")
    return _reply("200 OK", render(), CONTENT_TYPE, head_only=method == b"HEAD")


class MetricsServer:
    """Serves `render()` at /metrics on one address, on the running loop."""

    def __init__(self, render: Callable[[], bytes]) -> None:
        self.render = render
        self.address: Address | None = None
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def listen(self, address: Address | None) -> None:
        """Serve on `address` (None: nowhere) instead of the current one; on failure
        (MetricsBindError) the current one is kept.

        The new address is bound before the old one is closed, so that scrapes see no gap;
        where that fails because the old one holds the port (a new host, the same port), the
        old one is closed first, and bound again should the new one fail all the same.
        """
        if address == self.address:
            return
        if address is None:
            await self.close()
            return
        try:
            server = await self._bind(address)
        except MetricsBindError:
            if self.address is None or self.address[1] != address[1]:
                raise
            old = self.address
            await self.close()
            try:
                server = await self._bind(address)
            except MetricsBindError:
                with contextlib.suppress(MetricsBindError):
                    self.server, self.address = await self._bind(old), old
                raise
        await self.close()
        self.server, self.address = server, address
        log.info("serving metrics on http://%s/metrics", show_address(address))

    async def _bind(self, address: Address) -> asyncio.AbstractServer:
        try:
            return await asyncio.start_server(self._serve, address[0], address[1],
                                              limit=MAX_HEAD_BYTES)
        except OSError as e:
            raise MetricsBindError(
                f"daemon.metrics: cannot listen on {show_address(address)}: "
                f"{e.strerror or e}") from e

    async def close(self) -> None:
        """Stop listening, and end the connections under way."""
        server, self.server, self.address = self.server, None, None
        if server is not None:
            server.close()
        for task in list(self.tasks):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self.tasks) >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self.tasks.add(task)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            writer.write(respond(head, self.render))
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
            writer.close()
        except asyncio.LimitOverrunError:
            writer.write(_reply("431 Request Header Fields Too Large",
                                b"the request head is too large\n"))
            writer.close()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError,
                asyncio.CancelledError):
            writer.transport.abort()
        except Exception:
            log.exception("metrics: a scrape failed")
            writer.transport.abort()
        finally:
            self.tasks.discard(task)
