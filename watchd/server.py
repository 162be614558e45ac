"""The asyncio Unix-socket server: framing, peer credentials and flow control per connection.

What to do with a request is the daemon's business (`Handler`); which events a connection gets
and what it is told when it falls behind is the broker's. This module only moves bytes.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import grp
import logging
import math
import os
import socket
import stat
import struct
import time
from typing import Protocol

from watchd import flow, protocol
from watchd.broker import Broker, Connection, Peer
from watchd.errors import WatchdError

log = logging.getLogger("watchd.server")

# The transport's own buffer above which a connection counts as slow and its events start to
# queue in the broker (where they are counted against daemon.client_queue).
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
_UCRED = struct.Struct("3i")


class ServerError(WatchdError):
    """The socket cannot be set up; the message says why and what to do."""


class Handler(Protocol):
    def may_connect(self) -> bool: ...

    def greet(self, conn: Connection) -> None: ...

    def handle_line(self, conn: Connection, line: bytes) -> None: ...

    def congestion_changed(self) -> None: ...

    def flow_time(self) -> float: ...


def peer_of(sock: socket.socket) -> Peer:
    """The credentials of the process at the other end (SO_PEERCRED, SO_PEERGROUPS)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    groups: frozenset[int] = frozenset()
    with contextlib.suppress(OSError):
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 1024)
        groups = frozenset(array.array("I", raw[: len(raw) - len(raw) % 4]))
    return Peer(uid=uid, gid=gid, groups=groups, pid=pid)


class ClientProtocol(asyncio.Protocol):
    """One client connection: lines in, bytes out, reading paused while writing is."""

    def __init__(self, broker: Broker, handler: Handler, max_line_bytes: int,
                 registry: set[ClientProtocol]) -> None:
        self.broker = broker
        self.handler = handler
        self.framer = protocol.LineFramer(max_line_bytes)
        self.registry = registry
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self.paused = False
        # When writing to it was last paused: monotonic, and on the flow clock (watchd.flow).
        self.paused_at = -math.inf
        self.paused_at_flow = -math.inf

    # The broker's Sink -------------------------------------------------------------------------
    def write(self, chunks: list[bytes]) -> None:
        if self.transport is not None:
            self.transport.writelines(chunks)

    def writable(self) -> bool:
        return not self.paused and self.transport is not None

    # asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.handler.may_connect():
            transport.write(protocol.error(protocol.ErrorCode.TOO_MANY_CLIENTS,
                                           "the daemon serves its maximum number of clients "
                                           "(daemon.max_clients); try again later"))
            transport.close()
            self.transport = None
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        sock = transport.get_extra_info("socket")
        self.conn = self.broker.connect(self, peer_of(sock))
        self.registry.add(self)
        self.handler.greet(self.conn)

    def data_received(self, data: bytes) -> None:
        if self.conn is None:
            return
        too_long: protocol.LineTooLong | None = None
        try:
            lines = self.framer.feed(data)
        except protocol.LineTooLong as e:
            lines, too_long = e.lines, e
        conn = self.conn
        for line in lines:
            if line.strip():
                self.handler.handle_line(conn, line)
        if too_long is not None:
            self.broker.reply(conn, too_long.reply())
            self.close()

    def eof_received(self) -> bool | None:
        return False  # close our side too: a client that is done writing is done

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.broker.disconnect(self.conn)
            self.conn = None
        self.transport = None
        self.registry.discard(self)
        self.handler.congestion_changed()

    def pause_writing(self) -> None:
        self.paused = True
        self.paused_at = time.monotonic()
        self.paused_at_flow = self.handler.flow_time()
        # A client that does not read must not make us buffer its replies without bound.
        if self.transport is not None:
            self.transport.pause_reading()
        self.handler.congestion_changed()

    def resume_writing(self) -> None:
        self.paused = False
        if self.conn is not None:
            self.broker.resume(self.conn)
        if self.transport is not None and not self.paused:
            self.transport.resume_reading()
        self.handler.congestion_changed()

    def view(self) -> flow.View:
        """The connection as the hold-back rule sees it."""
        conn = self.conn
        queued, pid = (0, 0) if conn is None else (conn.queued_events, conn.peer.pid)
        return flow.View(paused=self.paused, queued=queued, process=pid,
                         behind_at=self.paused_at, behind_at_flow=self.paused_at_flow)

    @property
    def subscribed(self) -> bool:
        """True when the connection holds a subscription (so it is owed events)."""
        return self.conn is not None and bool(self.conn.subs)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered, then closes

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def bind_socket(path: str, mode: int, group: int | None) -> socket.socket:
    """Bind and listen on path with the given mode and group, never wider at any moment.

    The umask makes the kernel create the file with `mode` at bind time; the group is set
    afterwards, which only ever narrows who may connect relative to the final state
    (between bind and chown the file belongs to our own primary group).
    """
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ServerError(f"cannot create the socket {path}: the directory {directory} does not "
                          "exist; create it or set daemon.socket to another path")
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
        sock.listen(512)  # at once: a client that finds the file is queued, not refused
    except OSError as e:
        sock.close()
        raise ServerError(f"cannot create the socket {path}: {e.strerror}") from e
    finally:
        os.umask(old_umask)
    try:
        if group is not None:
            os.chown(path, -1, group)
        os.chmod(path, mode)  # exact bits even where the umask cannot express them (setgid etc.)
    except OSError as e:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise ServerError(f"cannot set up the socket {path}: {e.strerror} "
                          f"(group {_group_name(group)}, mode {mode:04o})") from e
    return sock


def _group_name(gid: int | None) -> str:
    if gid is None:
        return "unchanged"
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _remove_stale(path: str) -> None:
    """Remove a socket file left by a crash; refuse when a live daemon answers on it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ServerError(f"{path} exists and is not a socket; refusing to replace it. "
                          "Remove it or set daemon.socket to another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ServerError(
                f"cannot tell whether the socket {path} is in use: {e.strerror}") from e
        log.info("removing stale socket %s left by a previous run", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    finally:
        probe.close()
    raise ServerError(f"another daemon is already serving on {path}; stop it first "
                      "or set daemon.socket to another path")
