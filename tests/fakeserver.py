"""A small stand-in for watchd in client tests: a real Unix-socket server speaking protocol 1.

It keeps the daemon's observable behaviour (hello, replies in request order, filters, seq,
replay with since, notices, error replies, too_many_clients, line_too_long) but publishes only
what a test tells it to. Threads, not asyncio, so a test can drive it from plain code while a
client runs either in the same process or as a subprocess.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from watchd import protocol
from watchd.events import KIND_BITS, Kind
from watchd.inotify.flags import IN_ISDIR
from watchd.protocol import ErrorCode, ProtocolError

DEFAULT_WATCHES = {"uploads": "/srv/uploads", "logs": "/var/log/app"}


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll predicate until it returns something truthy; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


@dataclass
class Connection:
    """One accepted client: its socket, its subscriptions and what it sent."""

    sock: socket.socket
    subs: dict[str, protocol.Subscribe] = field(default_factory=dict)
    closed: bool = False


class FakeServer:
    """A threaded watchd stand-in bound to socket_path; use as a context manager."""

    def __init__(
        self,
        socket_path: str,
        *,
        watches: dict[str, str] | None = None,
        max_clients: int = 16,
        max_line_bytes: int = 65536,
        hold: int = 1000,
        version: str = "0.1.0",
        instance: str = "fake-instance-1",
        greet: bool = True,
    ) -> None:
        self.socket_path = socket_path
        self.watches = dict(DEFAULT_WATCHES if watches is None else watches)
        self.max_clients = max_clients
        self.max_line_bytes = max_line_bytes
        self.hold = hold
        self.version = version
        self.instance = instance
        self.greet = greet
        self.pid = os.getpid()
        self.seq = 0
        self.held: list[tuple[int, dict[str, Any], bytes]] = []  # (seq, event fields, tail)
        self.requests: list[dict[str, Any]] = []
        self.connections: list[Connection] = []
        # Called with each decoded request before its reply is sent (with the lock held), so
        # a test can push lines that the client must read before the reply it waits for.
        self.on_request: Callable[[protocol.Request], object] | None = None
        self.reply_delay = 0.0
        self.status_extra: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._encoder = protocol.EventEncoder()
        self._next_sid = 1
        self._started = time.monotonic()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind and start accepting."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        listener.listen(64)
        self._listener = listener
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        """Close every connection and the listener, and join the threads."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self.disconnect_all()
        for thread in self._threads:
            thread.join(timeout=5)
        for conn in self.connections:
            conn.sock.close()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def disconnect_all(self) -> None:
        """Hang up on every client, as a stopping daemon does."""
        with self._lock:
            for conn in self.connections:
                self._hang_up(conn)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    # --- what tests look at -----------------------------------------------------------------

    def subscriptions(self) -> list[str]:
        """The sids of every live subscription."""
        with self._lock:
            return [sid for conn in self.connections if not conn.closed for sid in conn.subs]

    def wait_subscriptions(self, count: int, timeout: float = 5.0) -> list[str]:
        """Wait until at least count subscriptions are live; return their sids."""
        sids: list[str] = wait_until(
            lambda: (sids := self.subscriptions()) and len(sids) >= count and sids,
            timeout,
            f"{count} subscription(s)",
        )
        return sids

    def live_clients(self) -> int:
        """How many connections are open."""
        with self._lock:
            return sum(not conn.closed for conn in self.connections)

    # --- what tests make happen -------------------------------------------------------------

    def publish(
        self,
        watch: str,
        kind: str,
        path: str,
        *,
        is_dir: bool = False,
        cookie: int = 0,
        src_path: str | None = None,
        when: float | None = None,
    ) -> int:
        """Publish one event to every matching subscription; return its seq."""
        mask = KIND_BITS[Kind(kind)] | (IN_ISDIR if is_dir else 0)
        with self._lock:
            self.seq += 1
            seq = self.seq
            tail = self._encoder.tail(
                seq,
                time.time() if when is None else when,
                watch,
                kind,
                path,
                mask,
                cookie,
                src_path,
            )
            fields = {"watch": watch, "kind": kind, "path": path}
            self.held.append((seq, fields, tail))
            del self.held[: -self.hold]
            for conn, sid, sub in self._live_subs():
                if _matches(sub, fields):
                    self._send(conn, protocol.EVENT_HEAD + sid.encode("ascii") + tail)
        return seq

    def notice(self, kind: str, watch: str | None = None, **fields: Any) -> None:
        """Send a notice (overflow, watch_lost, watch_restored, watch_degraded) to watch's subs."""
        with self._lock:
            for conn, sid, sub in self._live_subs():
                if watch is not None and sub.watch is not None and watch not in sub.watch:
                    continue
                if kind == "overflow":
                    reason = fields.get("reason", "kernel_queue")
                    line = protocol.overflow(sid, self.seq, reason, watch)
                elif kind == "watch_lost":
                    assert watch is not None
                    line = protocol.watch_lost(sid, watch, self.watches[watch], fields["reason"])
                elif kind == "watch_degraded":
                    assert watch is not None
                    line = protocol.watch_degraded(sid, watch, fields["unwatched"],
                                                   fields["reason"])
                else:
                    assert kind == "watch_restored"
                    assert watch is not None
                    line = protocol.watch_restored(sid, watch, self.watches[watch])
                self._send(conn, line)

    def dropped(self, sid: str, first_seq: int, last_seq: int) -> None:
        """Tell subscription sid that its events first_seq..last_seq were discarded."""
        self.push_raw(sid, protocol.dropped(sid, last_seq - first_seq + 1, first_seq, last_seq))

    def push_raw(self, sid: str, line: bytes) -> None:
        """Write line, exactly as given, to the connection that holds subscription sid."""
        with self._lock:
            for conn, live_sid, _ in self._live_subs():
                if live_sid == sid:
                    self._send(conn, line)
                    return
        raise AssertionError(f"no live subscription {sid}")

    def _live_subs(self) -> Iterable[tuple[Connection, str, protocol.Subscribe]]:
        for conn in self.connections:
            if not conn.closed:
                for sid, sub in list(conn.subs.items()):
                    yield conn, sid, sub

    # --- the server -------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return  # the listener was closed: stop() was called
            conn = Connection(sock)
            with self._lock:
                self.connections.append(conn)
                live = sum(not c.closed for c in self.connections)
                if live > self.max_clients:
                    message = (
                        f"watchd serves at most {self.max_clients} clients (daemon.max_clients)"
                    )
                    self._send(conn, protocol.error(ErrorCode.TOO_MANY_CLIENTS, message))
                    self._hang_up(conn)
                    continue
                if self.greet:
                    self._send(
                        conn, protocol.hello(self.version, self.pid, self.instance, self.seq)
                    )
            self._spawn(self._serve, conn)

    def _serve(self, conn: Connection) -> None:
        framer = protocol.LineFramer(self.max_line_bytes)
        while True:
            try:
                data = conn.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                with self._lock:
                    self._hang_up(conn)
                return
            try:
                lines = framer.feed(data)
            except protocol.LineTooLong as e:
                with self._lock:
                    for line in e.lines:
                        self._handle(conn, line)
                    self._send(conn, e.reply())
                    self._hang_up(conn)
                return
            for line in lines:
                if self.reply_delay:
                    time.sleep(self.reply_delay)
                with self._lock:
                    self._handle(conn, line)

    def _handle(self, conn: Connection, line: bytes) -> None:
        try:
            raw = protocol.decode_message(line)
            self.requests.append(raw)
            request = protocol.decode_request(line)
        except ProtocolError as e:
            self._send(conn, e.reply())
            return
        if self.on_request is not None:
            self.on_request(request)
        try:
            reply = self._reply(conn, request)
        except ProtocolError as e:
            reply = e.reply()
        self._send(conn, reply)
        if isinstance(request, protocol.Subscribe) and reply.startswith(b'{"type":"subscribed"'):
            self._replay(conn, request)

    def _reply(self, conn: Connection, request: protocol.Request) -> bytes:
        match request:
            case protocol.Ping():
                return protocol.pong(request.id)
            case protocol.Status():
                return protocol.status(request.id, self._status_fields())
            case protocol.Unsubscribe():
                if conn.subs.pop(request.subscription, None) is None:
                    raise ProtocolError(
                        ErrorCode.UNKNOWN_SUBSCRIPTION,
                        f"no subscription {request.subscription!r} on this connection",
                        request.id,
                    )
                return protocol.unsubscribed(request.id, request.subscription)
            case protocol.Subscribe():
                self._check_subscribe(request)
                sid = f"s{self._next_sid}"
                self._next_sid += 1
                conn.subs[sid] = request
                return protocol.subscribed(request.id, sid, self.seq)
        raise AssertionError(request)

    def _check_subscribe(self, request: protocol.Subscribe) -> None:
        for name in request.watch or ():
            if name not in self.watches:
                raise ProtocolError(ErrorCode.UNKNOWN_WATCH, f"no watch named {name!r}", request.id)
        if request.since is None:
            return
        oldest = self.held[0][0] if self.held else self.seq + 1
        stale = request.instance is not None and request.instance != self.instance
        if stale or request.since < oldest - 1:
            raise ProtocolError(
                ErrorCode.SINCE_EXPIRED,
                f"events after seq {request.since} are no longer held",
                request.id,
                {"oldest": oldest},
            )

    def _replay(self, conn: Connection, request: protocol.Subscribe) -> None:
        if request.since is None:
            return
        sid = next(reversed(conn.subs))
        for seq, fields, tail in self.held:
            if seq > request.since and _matches(request, fields):
                self._send(conn, protocol.EVENT_HEAD + sid.encode("ascii") + tail)

    def _status_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "pid": self.pid,
            "instance": self.instance,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "seq": self.seq,
            "config": "/etc/watchd/watchd.toml",
            "reloads": 0,
            "last_reload_error": None,
            "clients": self.live_clients(),
            "subscriptions": len(self.subscriptions()),
            "events": self.seq,
            "dropped": 0,
            "overflows": 0,
            "watches": [
                {"name": name, "path": path, "recursive": True, "state": "active", "directories": 1}
                for name, path in self.watches.items()
            ],
        }
        fields.update(self.status_extra)
        return fields

    def _send(self, conn: Connection, line: bytes) -> None:
        if conn.closed:
            return
        try:
            conn.sock.sendall(line)
        except OSError:
            self._hang_up(conn)

    def _hang_up(self, conn: Connection) -> None:
        if not conn.closed:
            conn.closed = True
            conn.subs.clear()
            # shutdown wakes the connection's reader thread; stop() closes the socket later.
            with contextlib.suppress(OSError):  # the client may have gone first
                conn.sock.shutdown(socket.SHUT_RDWR)


def _matches(sub: protocol.Subscribe, event: dict[str, Any]) -> bool:
    """The daemon's filter rule: every given filter must match (AND)."""
    path = event["path"]
    if sub.watch is not None and event["watch"] not in sub.watch:
        return False
    if sub.events is not None and event["kind"] not in sub.events:
        return False
    if sub.paths is not None and not any(
        path == p or path.startswith(p.rstrip("/") + "/") for p in sub.paths
    ):
        return False
    name = posixpath.basename(path)
    return sub.glob is None or any(fnmatch.fnmatchcase(name, g) for g in sub.glob)
