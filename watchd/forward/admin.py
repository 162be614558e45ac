"""The first connection to a server, through the client library: which server answers, with
errors for people, and the stream checked (created or completed with create_stream = true).

The library is good at what happens once per connection (trying the URLs, TLS, the
credentials, JetStream's API); what happens per event goes through watchd.forward.wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import StorageType

from watchd.config.model import ForwardConfig
from watchd.forward.subjects import capture, covers

log = logging.getLogger("watchd.forward")

CONNECT_TIMEOUT_S: Final = 5
CLOSE_TIMEOUT_S: Final = 1.0
# The duplicate window of a stream made by create_stream: a message published again within
# it is dropped by its Nats-Msg-Id. It covers the longest wait between a publish and its
# repeat that the backoff allows (30 s), a restart of the daemon and a reconnection, with
# room to spare; the server keeps one id per message for this long.
DUPLICATE_WINDOW_S: Final = 600.0


class Unavailable(Exception):
    """No connection to publish on: the message says why, for people."""


async def reach(config: ForwardConfig) -> str:
    """The URL of the server that answered, once the stream is checked; raises Unavailable
    with a message for people."""
    nc = Client()
    loop = asyncio.get_running_loop()
    failed: asyncio.Future[str] = loop.create_future()

    async def on_error(e: Exception) -> None:
        if not failed.done():
            failed.set_result(describe(e))

    options: dict[str, Any] = {}
    if config.credentials is not None:
        options["user_credentials"] = config.credentials
    if config.token is not None:
        options["token"] = config.token
    if config.user is not None:
        options["user"], options["password"] = config.user, config.password
    connect = loop.create_task(nc.connect(
        list(config.urls), name=f"watchd forward {config.name}", allow_reconnect=False,
        max_reconnect_attempts=0, connect_timeout=CONNECT_TIMEOUT_S, error_cb=on_error,
        **options))
    try:
        # The library tries the servers again and again by itself when a first connection
        # fails: its first error ends the attempt, and the retries (with their backoff) are ours.
        either: set[asyncio.Future[Any]] = {connect, failed}
        await asyncio.wait(either, timeout=CONNECT_TIMEOUT_S * len(config.urls) + 1,
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
        url = nc.connected_url
        if url is None:
            raise Unavailable("cannot reach the NATS server: the connection closed at once")
        await check_stream(nc, config)
        return url.geturl()
    finally:
        # Bounded: the library's close of a client whose TLS handshake failed never returns
        # (it waits for its transport to close; the socket is closed by then).
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await nc.close()


async def check_stream(nc: Client, config: ForwardConfig) -> None:
    """The stream exists and captures our subjects, or is made to with create_stream."""
    js = nc.jetstream()
    subjects = list(capture(config.subject))
    try:
        info = await js.stream_info(config.stream)
    except nats.js.errors.NotFoundError:
        if not config.create_stream:
            raise Unavailable(
                f"stream {config.stream!r} not found on the server; create it (capturing "
                f"{' and '.join(subjects)}) or set create_stream = true") from None
        await js.add_stream(name=config.stream, subjects=subjects,
                            storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S)
        log.info("forward %s: created stream %s", config.name, config.stream)
        return
    except nats.errors.NoRespondersError:
        raise Unavailable("JetStream is not enabled on the server (no answer to "
                              "its API); enable it, or connect to one that has it") from None
    have = list(info.config.subjects or [])
    missing = [s for s in subjects if not any(covers(h, s) for h in have)]
    if not missing:
        return
    if not config.create_stream:
        # Every publish would be refused (no stream captures it): not a connection to keep.
        raise Unavailable(
            f"stream {config.stream!r} does not capture {' and '.join(missing)}; add "
            f"{'them' if len(missing) > 1 else 'it'} to its subjects or set "
            "create_stream = true")
    # Add ours, keep every other: the stream may capture other publishers' subjects too.
    stream = info.config
    stream.subjects = have + missing
    try:
        await js.update_stream(stream)
    except nats.js.errors.APIError as e:
        raise Unavailable(f"stream {config.stream!r} does not capture {' and '.join(missing)}, "
                          f"and adding them failed: {e.description or e}") from None
    log.info("forward %s: stream %s now captures %s too", config.name, config.stream,
             " and ".join(missing))


def describe(e: BaseException) -> str:
    """An exception of the client library as a line for people."""
    text = str(e).strip() or type(e).__name__
    if isinstance(e, ssl.SSLCertVerificationError):
        return (f"the NATS server's TLS certificate is not trusted ({e.verify_message}): "
                "add its certificate authority to the system's trusted ones (or name a file "
                "of them in SSL_CERT_FILE in the daemon's environment)")
    if isinstance(e, nats.errors.NoServersError | TimeoutError | OSError):
        return f"cannot reach the NATS server: {text}"
    if "authorization" in text.lower() or "authentication" in text.lower():
        return f"the NATS server refused the credentials: {text}"
    return text
