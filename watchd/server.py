"""The asyncio Unix-socket server: peer credentials and flow control per connection.

What to do with a request is the daemon's business (`Handler`); which events a connection gets
and what it is told when it falls behind is the broker's; framing requests and giving each
connection its turn is watchd.requests'. This module only moves bytes.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import errno
import grp
import logging
import math
import os
import resource
import socket
import stat
import struct
import time
from collections.abc import Callable
from typing import Protocol

from watchd import flow, protocol
from watchd.broker import Broker, Connection, Peer
from watchd.errors import WatchdError
from watchd.requests import LineHandler, Requests, TurnBudget

__all__ = [
    "ClientProtocol",
    "Handler",
    "Listener",
    "ServerError",
    "TurnBudget",
    "bind_socket",
    "peer_of",
    "raise_fd_limit",
    "trusted",
]

log = logging.getLogger("watchd.server")

# The transport's own buffer above which a connection counts as slow and its events start to
# queue in the broker (where they are counted against daemon.client_queue).
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
_GROUPS_BUFLEN = 1024  # the most socket.getsockopt accepts
NGROUPS_MAX = 65536  # Linux's limit on supplementary groups
_UCRED = struct.Struct("3i")


class ServerError(WatchdError):
    """The socket cannot be set up; the message says why and what to do."""


class Handler(LineHandler, Protocol):
    """What the daemon does for a connection: admits it, greets it, answers its lines
    (the LineHandler part, which is all its request side needs) and hears of its flow."""

    def may_connect(self, peer: Peer) -> str | None:
        """None to serve this peer, or why it is refused (too_many_clients)."""

    def greet(self, conn: Connection) -> None: ...

    def review_hold_back(self) -> None: ...

    def flow_time(self) -> float: ...


def peer_of(sock: socket.socket) -> Peer:
    """The credentials of the process at the other end (SO_PEERCRED, SO_PEERGROUPS)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(uid=uid, gid=gid, groups=peer_groups(sock), pid=pid)


def peer_groups(sock: socket.socket) -> frozenset[int]:
    """The supplementary groups of the peer, as the kernel recorded them at connect time.

    socket.getsockopt takes at most 1024 bytes (256 groups); a peer with more makes the
    kernel answer ERANGE with the size it needs, which only the C call reports: ask again
    through libc with that size. Read from the socket, not /proc/<pid>: a pid can be reused.
    """
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _GROUPS_BUFLEN)
    except OSError as e:
        if e.errno == errno.ENOPROTOOPT:
            return frozenset()  # a kernel older than 4.13: primary group and uid only
        if e.errno != errno.ERANGE:
            log.warning("cannot read the groups of a client: %s; judging it by its uid and "
                        "primary group only", e.strerror)
            return frozenset()  # fewer groups only ever means less access
        try:
            raw = _peer_groups_large(sock.fileno())
        except OSError as e2:
            log.warning("cannot read the groups of a client: %s; judging it by its uid and "
                        "primary group only", e2.strerror)
            return frozenset()
    return frozenset(array.array("I", raw[: len(raw) - len(raw) % 4]))


def _peer_groups_large(fd: int) -> bytes:
    """SO_PEERGROUPS through libc, with a buffer as large as the kernel says it needs."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = ctypes.c_uint32(4 * NGROUPS_MAX)
    while True:
        buf = ctypes.create_string_buffer(size.value)
        if libc.getsockopt(fd, socket.SOL_SOCKET, SO_PEERGROUPS, buf, ctypes.byref(size)) == 0:
            return buf.raw[: size.value]
        err = ctypes.get_errno()
        if err != errno.ERANGE:  # size now holds what is needed; anything else is an error
            raise OSError(err, f"getsockopt(SO_PEERGROUPS): {os.strerror(err)}")


def trusted(peer: Peer) -> bool:
    """Root and the daemon's own user: they see everything and are never made to wait."""
    return peer.uid in (0, os.geteuid())


class ClientProtocol(asyncio.Protocol):
    """One client connection: lines in, bytes out, reading paused while writing is."""

    def __init__(self, broker: Broker, handler: Handler, max_line_bytes: int,
                 registry: set[ClientProtocol], budget: TurnBudget | None = None) -> None:
        self.broker = broker
        self.handler = handler
        self.registry = registry
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self.requests = Requests(self, broker, handler, max_line_bytes, budget or TurnBudget())
        self.paused = False
        # When writing to it was last paused: monotonic, and on the flow clock (watchd.flow).
        self.paused_at = -math.inf
        self.paused_at_flow = -math.inf
        self.reading = True
        self.resuming: asyncio.Handle | None = None

    # The broker's Sink -------------------------------------------------------------------------
    def write(self, chunks: list[bytes]) -> None:
        # A transport whose send failed is closing until its connection_lost, which comes
        # later in the loop: what a burst writes meanwhile is for nobody (asyncio would log
        # "socket.send() raised exception" for each such write past the fifth).
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(chunks)

    def writable(self) -> bool:
        return not self.paused and self.transport is not None

    # asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = peer_of(transport.get_extra_info("socket"))
        refusal = self.handler.may_connect(peer)
        if refusal is not None:
            transport.write(protocol.error(protocol.ErrorCode.TOO_MANY_CLIENTS, refusal))
            transport.close()
            self.transport = None
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        self.requests.trusted = trusted(peer)
        self.conn = self.broker.connect(self, peer)
        self.registry.add(self)
        self.handler.greet(self.conn)

    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.requests.receive(data)

    def update_reading(self) -> None:
        """Read while requests are handled as they come and replies are taken."""
        want = not self.paused and self.requests.idle
        if self.transport is not None and want != self.reading:
            self.reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()
        self.requests.update_deadline(self.reading and self.transport is not None)

    def eof_received(self) -> bool | None:
        return False  # close our side too: a client that is done writing is done

    def connection_lost(self, exc: Exception | None) -> None:
        # A closed connection left in budget.waiting does nothing when its turn comes.
        self.requests.cancel_deadline()
        if self.resuming is not None:
            self.resuming.cancel()
            self.resuming = None
        if self.conn is not None:
            self.broker.disconnect(self.conn)
            self.conn = None
        self.transport = None
        self.registry.discard(self)
        self.handler.review_hold_back()

    def pause_writing(self) -> None:
        if self.resuming is not None:
            self.resuming.cancel()
            self.resuming = None
        self.paused = True
        self.paused_at = time.monotonic()
        self.paused_at_flow = self.handler.flow_time()
        # A client that does not read must not make us buffer its replies without bound.
        self.update_reading()
        self.handler.review_hold_back()

    def resume_writing(self) -> None:
        # Not here and now: asyncio calls this from inside its write handler, and a send
        # that fails in here (the client reset the connection) makes that handler finish the
        # connection a second time (AttributeError in _call_connection_lost). Until then the
        # broker keeps queueing, so the order of events holds.
        if self.transport is None:
            self._resumed()  # nothing to write to: nothing to defer
        elif self.resuming is None:
            self.resuming = asyncio.get_running_loop().call_soon(self._resumed)

    def _resumed(self) -> None:
        self.resuming = None
        if self.transport is not None and self.transport.is_closing():
            return
        self.paused = False
        if self.conn is not None:
            self.broker.resume(self.conn)
        if not self.paused:
            self.requests.work()  # the requests that waited for it, then reading again
        self.handler.review_hold_back()

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


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (clients each hold one); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit still stops at the kernel's fs.nr_open.
    target = _nr_open() if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as e:
            log.warning("cannot raise the file descriptor limit from %d to %d: %s",
                        soft, target, e)
            return soft
        return target
    return soft


def _nr_open() -> int:
    """The kernel's ceiling for RLIMIT_NOFILE (fs.nr_open)."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024 * 1024


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


class Listener:
    """The daemon's listening socket: bound (or taken over from systemd), served only once the
    watches are established, closed at a stop and then, if bound here, removed."""

    def __init__(self, listen: socket.socket | None) -> None:
        self.listen = listen  # a socket passed by systemd, or None to bind daemon.socket
        self.owned_socket_path: str | None = None
        self.server: asyncio.AbstractServer | None = None

    async def open(self, loop: asyncio.AbstractEventLoop, path: str, mode: int,
                   group: int | None, factory: Callable[[], asyncio.Protocol]) -> None:
        """Bind the socket at path (unless systemd passed one); not served yet (see serve)."""
        sock = self.listen
        if sock is None:
            sock = bind_socket(path, mode, group)
            self.owned_socket_path = path
        sock.setblocking(False)
        self.server = await loop.create_unix_server(factory, sock=sock, start_serving=False)

    async def serve(self) -> None:
        """Accept connections from now on (those that came meanwhile waited in the queue)."""
        assert self.server is not None
        await self.server.start_serving()

    def close(self) -> None:
        """Stop accepting."""
        if self.server is not None:
            self.server.close()

    def remove(self) -> None:
        """Remove the socket file, if bound here."""
        if self.owned_socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.owned_socket_path)

    def socket_path(self) -> str:
        """Where the daemon's socket is, for its forwarders to connect to."""
        if self.owned_socket_path is not None:
            return self.owned_socket_path
        return str(self.listen.getsockname()) if self.listen is not None else ""

    def socket_name(self) -> str:
        """The socket as the log names it."""
        if self.owned_socket_path is not None:
            return self.owned_socket_path
        name = self.listen.getsockname() if self.listen is not None else ""
        return f"{name} (from systemd)"


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
