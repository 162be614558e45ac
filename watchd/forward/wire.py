"""The publishing connection: the NATS client protocol, written and read by us.

A forwarder's hot path is one message and one acknowledgement per event. Through the client
library each costs a message object, a future or a queue entry and a task switch; here a
batch of events is one buffer of HPUB frames written at once, every acknowledgement comes to
one wildcard subscription (`<inbox>.<token>`, the token a counter of the connection), and a
read of the socket is scanned for them in one pass that hands on the tokens (see
`Wire.replies`). The client library still makes the first connection to a server (its
errors, and the stream's check and creation, see watchd.forward.admin); this connection is
opened to the server it reached, with the same credentials.

What the protocol asks of a client and is done here: CONNECT with the credentials (user and
password, a token, or a credentials file: its JWT, and the server's nonce signed with its
seed), TLS when the URL is tls:// or the server requires it, PONG to the server's PING, and
-ERR, which ends the connection. And a PING of our own when the server has been quiet for a
while (`Wire.keepalive`): a connection whose other end is gone without a word (a server
stopped, a link cut) otherwise looks connected for ever while nothing is published.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from watchd.config.model import ForwardConfig
from watchd.forward.urls import shown

READ_SIZE: Final = 1 << 18
CONNECT_TIMEOUT_S: Final = 5.0
MAX_CONTROL_LINE: Final = 64 * 1024  # INFO, the longest line a server sends
# The start of an acknowledgement that stored the message (maybe as a duplicate): an error
# reply has an "error" member, a status reply (no stream captures the subject) a header.
ACK_HEAD: Final = b'{"stream":'
_CREDS_BLOCK: Final = re.compile(
    r"-{3,}BEGIN [A-Z ]*?(JWT|NKEY SEED)-{3,}\s*\n\s*(\S+)\s*\n\s*-{3,}END", re.MULTILINE)


class WireError(Exception):
    """The connection failed or the server refused something: the message is for people."""


@dataclass(frozen=True, slots=True)
class Reply:
    """An acknowledgement that did not simply store the message (the token of its message)."""

    token: int
    status: bytes  # the header block of an HMSG (b"" for a MSG)
    data: bytes


def read_credentials(path: str) -> tuple[str | None, bytes]:
    """(user JWT or None, seed) of a NATS credentials file."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise WireError(f"cannot read the credentials file {path}: {e}") from e
    jwt: str | None = None
    seed: str | None = None
    for kind, value in _CREDS_BLOCK.findall(text):
        if kind == "JWT" and jwt is None:
            jwt = value
        elif kind == "NKEY SEED" and seed is None:
            seed = value
    if seed is None:
        raise WireError(f"the credentials file {path} holds no user seed")
    return jwt, seed.encode()


def connect_options(config: ForwardConfig, info: dict[str, Any], url_user: str | None,
                    url_password: str | None) -> dict[str, Any]:
    """The CONNECT object for this forwarder and the server's INFO."""
    options: dict[str, Any] = {
        "verbose": False, "pedantic": False, "lang": "python3", "version": "watchd",
        "protocol": 1, "headers": True, "no_responders": True,
        "name": f"watchd forward {config.name}", "tls_required": bool(info.get("tls_required"))}
    user = config.user if config.user is not None else url_user
    password = config.password if config.password is not None else url_password
    if config.token is not None:
        options["auth_token"] = config.token
    elif user is not None and password is None:
        options["auth_token"] = user  # nats://TOKEN@host
    elif user is not None:
        options["user"], options["pass"] = user, password
    if config.credentials is not None:
        options.update(_signed(config.credentials, info))
    return options


def _signed(path: str, info: dict[str, Any]) -> dict[str, str]:
    import nkeys  # the nats extra's; the configuration checked it is there

    jwt, seed = read_credentials(path)
    nonce = str(info.get("nonce", ""))
    try:
        keys = nkeys.from_seed(bytearray(seed))
        signature = keys.sign(nonce.encode())
        public = keys.public_key.decode()
        keys.wipe()
    except Exception as e:  # the library raises its own errors for a bad seed
        raise WireError(f"the credentials file {path} holds no valid seed: {e}") from e
    signed = {"sig": base64.urlsafe_b64encode(signature).rstrip(b"=").decode()}
    if jwt is not None:
        signed["jwt"] = jwt
    else:
        signed["nkey"] = public
    return signed


class Wire:
    """One connection to a NATS server: raw writes, and the replies of one subscription."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 info: dict[str, Any]) -> None:
        self.reader = reader
        self.writer = writer
        self.info = info
        self.inbox = b"_INBOX." + base64.b32encode(os.urandom(15)).rstrip(b"=") + b"."
        self.plain = plain_acks(self.inbox)
        self.heard = time.monotonic()  # when the server last sent anything
        self.pinged: float | None = None  # when we sent a PING it has not answered yet

    @classmethod
    async def open(cls, url: str, config: ForwardConfig) -> Wire:
        """Connect, say CONNECT, and wait for the server's PONG that says it took it."""
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        host, port = parts.hostname or "127.0.0.1", parts.port or 4222
        where = shown(url)
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(host, port, limit=MAX_CONTROL_LINE)
                line = await reader.readline()
                if not line.startswith(b"INFO "):
                    raise WireError(f"not a NATS server at {where}: {line[:80]!r}")
                info = json.loads(line[5:])
                if parts.scheme == "tls" or info.get("tls_required"):
                    await writer.start_tls(ssl.create_default_context(), server_hostname=host)
                wire = cls(reader, writer, info)
                options = connect_options(config, info, parts.username, parts.password)
                writer.write(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
                await wire._await_pong()
                return wire
        except BaseException as e:
            # Whatever ends the attempt (an error, a timeout, our cancellation), its socket
            # goes with it: a retry per backoff step would otherwise keep one open each time.
            if writer is not None:
                writer.close()
            if isinstance(e, TimeoutError):
                raise WireError(f"cannot reach the NATS server at {where}: no answer within "
                                f"{CONNECT_TIMEOUT_S:.0f} s") from None
            if isinstance(e, OSError | ssl.SSLError | ValueError):
                raise WireError(f"cannot reach the NATS server at {where}: {e}") from e
            raise

    async def _await_pong(self) -> None:
        while True:
            line = await self.reader.readline()
            if not line:
                raise WireError("the NATS server closed the connection")
            if line.startswith(b"PONG"):
                return
            if line.startswith(b"-ERR"):
                raise WireError(server_error(line))
            if line.startswith(b"PING"):
                self.writer.write(b"PONG\r\n")

    def subscribe(self) -> None:
        """Subscribe to every reply to this connection's inbox (sid 1)."""
        self.writer.write(b"SUB " + self.inbox + b"* 1\r\n")

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def replies(self, on_acks: Callable[[list[int], list[Reply]], None]) -> None:
        """Read until the connection ends: each read's acknowledgements to `on_acks`.

        `on_acks` gets the tokens of the messages stored, in the order of their replies, and
        the replies that are not a plain acknowledgement (errors). Raises WireError.
        """
        reader = self.reader
        monotonic = time.monotonic
        buf = b""
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                raise WireError("the connection to the NATS server was lost")
            self.heard = monotonic()
            buf = self._scan(buf + data if buf else data, on_acks)
            if len(buf) > MAX_CONTROL_LINE and b"\r\n" not in buf:
                raise WireError("the NATS server sent a line too long to be a protocol line")

    def _scan(self, buf: bytes, on_acks: Callable[[list[int], list[Reply]], None]) -> bytes:
        """Handle every whole operation in buf; the rest (a partial one) is returned."""
        try:
            ok, other, controls, rest = scan(buf, len(self.inbox), self.plain)
        except (ValueError, IndexError):  # a size or a token that is not a number, or missing
            start = buf[:80]
            raise WireError(f"the NATS server sent a malformed message: {start!r}") from None
        # The acknowledgements first: an -ERR among the controls ends the connection, and
        # the messages acknowledged in the same read (before it or not) are stored all the
        # same; dropping them would publish them again for nothing.
        if ok or other:
            on_acks(ok, other)
        for line in controls:
            self._control(line)
        return rest

    def keepalive(self, interval: float) -> str | None:
        """PING a server quiet for `interval` s; what is wrong when it stays quiet as long
        again (a half-open connection: a server stopped or gone without a word), or None.

        Anything the server sends counts as its answer: acknowledgements as much as a PONG.
        """
        now = time.monotonic()
        if self.pinged is not None and self.heard >= self.pinged:
            self.pinged = None
        if self.pinged is None:
            if now - self.heard >= interval:
                self.pinged = now
                self.writer.write(b"PING\r\n")
            return None
        if now - self.pinged < interval:
            return None
        return (f"the NATS server did not answer a PING within {interval:g} s (the "
                "connection is lost or the server is stuck)")

    def _control(self, line: bytes) -> None:
        if line.startswith(b"PING"):
            self.writer.write(b"PONG\r\n")
        elif line.startswith(b"-ERR"):
            raise WireError(server_error(line))
        # PONG (its arrival is what keepalive looks for), +OK (never asked for) and INFO
        # (servers of a cluster: the next connection's attempt goes through the client
        # library, which learns them) need nothing.

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def plain_acks(inbox: bytes) -> re.Pattern[bytes]:
    """What a run of plain acknowledgements to `inbox` looks like, one MSG each (see scan)."""
    return re.compile(b"MSG " + re.escape(inbox) + rb'(\d+) 1 (\d+)\r\n\{"stream":"[^"\\\r\n]*",'
                      rb'"seq":\d+(?:,"duplicate":true)?\}\r\n')


def scan(buf: bytes, prefix: int, plain: re.Pattern[bytes] | None = None
         ) -> tuple[list[int], list[Reply], list[bytes], bytes]:
    """The whole operations a server sent in buf: (tokens of plain acknowledgements, other
    replies, control lines, the rest of buf: a partial operation). A reply's subject is our
    inbox, `prefix` bytes long, and its token.

    With `plain` (plain_acks of the inbox), a run of plain acknowledgements, nearly all a
    server sends, is read one regular-expression match each; anything else (and any
    acknowledgement of another shape) goes the general way, an operation at a time.
    """
    ok: list[int] = []
    other: list[Reply] = []
    controls: list[bytes] = []
    pos = 0
    find = buf.find
    match = plain.match if plain is not None else None
    append = ok.append
    while True:
        if match is not None:
            # A size other than the body's (a broken server) is read the general way, by it.
            while (m := match(buf, pos)) is not None and m.end() - m.end(2) - 4 == int(m[2]):
                append(int(m[1]))
                pos = m.end()
        if (eol := find(b"\r\n", pos)) < 0:
            break
        if buf.startswith(b"MSG ", pos):
            # MSG <inbox><token> <sid> <size>: no spaces in the subject, and no reply subject.
            subject, _, size = buf[pos + 4:eol].partition(b" ")
            end = eol + 2 + int(size.rpartition(b" ")[2])
            if end + 2 > len(buf):
                break
            data = buf[eol + 2:end]
            if data.startswith(ACK_HEAD) and b'"error"' not in data:
                ok.append(int(subject[prefix:]))
            else:
                other.append(Reply(int(subject[prefix:]), b"", data))
            pos = end + 2
        elif buf.startswith(b"HMSG ", pos):
            # HMSG <inbox><token> <sid> <header size> <total size>
            fields = buf[pos + 5:eol].split(b" ")
            head, total = int(fields[-2]), int(fields[-1])
            end = eol + 2 + total
            if end + 2 > len(buf):
                break
            other.append(Reply(int(fields[0][prefix:]), buf[eol + 2:eol + 2 + head],
                               buf[eol + 2 + head:end]))
            pos = end + 2
        else:
            controls.append(buf[pos:eol])
            pos = eol + 2
    return ok, other, controls, buf[pos:]


def server_error(line: bytes) -> str:
    """A -ERR line for people."""
    text = line[4:].strip().strip(b"'").decode("utf-8", "replace")
    lower = text.lower()
    if "authorization" in lower or "authentication" in lower or "permissions" in lower:
        return f"the NATS server refused the credentials: {text}"
    return f"the NATS server reported an error: {text}"
