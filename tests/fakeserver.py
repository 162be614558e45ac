"""A stand-in for watchd in client tests: a real Unix-socket server around the real Broker.

Subscriptions, filters, seqs, replay with since and the notices are the daemon's own (a
`watchd.broker.Broker`); only the events come from the test instead of a watcher, and the
connection handling is a few threads so that a test can drive it from plain code while a
client runs in the same process or as a subprocess. Like the daemon it greets with hello,
answers in request order, refuses clients past max_clients and closes on a line too long.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from tests.harness import wait_for
from watchd import protocol
from watchd.broker import Broker, Connection, Peer
from watchd.events import KIND_BITS, SYNTHETIC, Kind
from watchd.inotify.flags import IN_ISDIR
from watchd.protocol import ErrorCode, ProtocolError

DEFAULT_WATCHES = {"uploads": "/srv/uploads", "logs": "/var/log/app"}
MAX_SUBSCRIPTIONS = 64  # the daemon's default (daemon.max_subscriptions)
CLIENT_QUEUE = 10000  # the daemon's default; the sinks never pause, so it is never reached


@dataclass(frozen=True, slots=True)
class FakeWatch:
    """A configured watch as the broker sees it; every peer may see it."""

    name: str
    path: str

    def may_see(self, uid: int, gid: int, groups: frozenset[int]) -> bool:
        return True


@dataclass(eq=False)
class Client:
    """One accepted connection: its socket and, once admitted, the broker's view of it."""

    sock: socket.socket
    conn: Connection | None = None
    closed: bool = False
    failed: bool = False  # a write failed: hang up once the broker call returns

    def write(self, chunks: list[bytes]) -> None:
        """The broker's Sink: a blocking send, so the queue never fills."""
        if self.closed or self.failed:
            return
        try:
            self.sock.sendall(b"".join(chunks))
        except OSError:
            self.failed = True

    def writable(self) -> bool:
        return True


def peer_of(sock: socket.socket) -> Peer:
    """The credentials of the process at the other end (SO_PEERCRED), as the daemon takes them."""
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return Peer(uid=uid, gid=gid, groups=frozenset(), pid=pid)


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
        features: tuple[str, ...] = protocol.FEATURES,  # what its hello offers
    ) -> None:
        self.socket_path = socket_path
        self.watches = dict(DEFAULT_WATCHES if watches is None else watches)
        self.max_clients = max_clients
        self.max_line_bytes = max_line_bytes
        self.version = version
        self.greet = greet
        self.features = features
        self.pid = os.getpid()
        self.broker = Broker(instance=instance, client_queue=CLIENT_QUEUE, replay_buffer=hold,
                             max_subscriptions=MAX_SUBSCRIPTIONS)
        self.broker.set_watches(FakeWatch(name, path) for name, path in self.watches.items())
        self.requests: list[dict[str, Any]] = []  # every request that decoded as JSON
        self.clients: list[Client] = []
        # Called with each decoded request before its reply is sent (with the lock held), so
        # a test can push lines that the client must read before the reply it waits for.
        self.on_request: Callable[[protocol.Request], object] | None = None
        self.reply_delay = 0.0
        self.status_extra: dict[str, Any] = {}
        # The broker is not thread-safe: every call into it holds this lock.
        self._lock = threading.RLock()
        self._started = time.monotonic()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    @property
    def instance(self) -> str:
        return self.broker.instance

    @property
    def hold(self) -> int:
        """How many events are held for replay (daemon.replay_buffer)."""
        return self.broker.replay_buffer

    @hold.setter
    def hold(self, count: int) -> None:
        with self._lock:
            self.broker.set_limits(client_queue=CLIENT_QUEUE, replay_buffer=count,
                                   max_subscriptions=MAX_SUBSCRIPTIONS)

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
        for client in self.clients:
            client.sock.close()
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
            for client in self.clients:
                self._hang_up(client)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    # --- what tests look at -----------------------------------------------------------------

    def subscriptions(self) -> list[str]:
        """The sids of every live subscription."""
        with self._lock:
            return [sid for conn in self._live() for sid in conn.subscriptions]

    def wait_subscriptions(self, count: int, timeout: float = 5.0) -> list[str]:
        """Wait until at least count subscriptions are live; return their sids."""
        sids: list[str] = wait_for(
            lambda: (sids := self.subscriptions()) and len(sids) >= count and sids,
            timeout,
            f"{count} subscription(s)",
        )
        return sids

    def live_clients(self) -> int:
        """How many connections are open."""
        with self._lock:
            return sum(not client.closed for client in self.clients)

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
        synthetic: bool = False,
    ) -> int:
        """Publish one event through the broker, as the watcher would have read it; its seq."""
        mask = KIND_BITS[Kind(kind)] | (IN_ISDIR if is_dir else 0)
        mask |= SYNTHETIC if synthetic else 0
        at = time.time() if when is None else when
        with self._lock:
            self.broker.publish_reads(watch, [(at, [(mask, cookie, path, src_path)])])
            self._reap()
            return self.broker.last_seq

    def notice(self, kind: str, watch: str | None = None, **fields: Any) -> None:
        """Send a notice (overflow, watch_lost, watch_restored, watch_degraded) to watch's subs."""
        with self._lock:
            if kind == "overflow":
                resync = frozenset({watch or ""}) if fields.get("resync") else frozenset()
                self.broker.overflow(watch, fields.get("reason", "kernel_queue"), resync)
            elif kind == "resynced":
                assert watch is not None
                self.broker.resynced(watch, fields["changes"], fields["duration_ms"])
            elif kind == "watch_lost":
                assert watch is not None
                self.broker.watch_lost(watch, self.watches[watch], fields["reason"])
            elif kind == "watch_degraded":
                assert watch is not None
                self.broker.watch_degraded(watch, fields["unwatched"], fields["reason"])
            else:
                assert kind == "watch_restored", kind
                assert watch is not None
                self.broker.watch_restored(watch, self.watches[watch])
            self._reap()

    def dropped(self, sid: str, first_seq: int, last_seq: int) -> None:
        """Tell subscription sid that its events first_seq..last_seq were discarded."""
        self.push_raw(sid, protocol.dropped(sid, last_seq - first_seq + 1, first_seq, last_seq))

    def push_raw(self, sid: str, line: bytes) -> None:
        """Write line, exactly as given, to the connection that holds subscription sid."""
        with self._lock:
            for conn in self._live():
                if sid in conn.subs:
                    self.broker.reply(conn, line)
                    self._reap()
                    return
        raise AssertionError(f"no live subscription {sid}")

    def _live(self) -> list[Connection]:
        """The broker's connections of the clients still connected."""
        return [c.conn for c in self.clients if not c.closed and c.conn is not None]

    # --- the server -------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return  # the listener was closed: stop() was called
            client = Client(sock)
            with self._lock:
                full = self.live_clients() >= self.max_clients
                self.clients.append(client)
                if full:
                    limit = self.max_clients
                    message = f"watchd serves at most {limit} clients (daemon.max_clients)"
                    client.write([protocol.error(ErrorCode.TOO_MANY_CLIENTS, message)])
                    self._hang_up(client)
                    continue
                client.conn = self.broker.connect(client, peer_of(sock))
                if self.greet:
                    hello = protocol.hello(self.version, self.pid, self.instance,
                                           self.broker.last_seq, features=self.features)
                    self.broker.reply(client.conn, hello)
                self._reap()
            self._spawn(self._serve, client)

    def _serve(self, client: Client) -> None:
        framer = protocol.LineFramer(self.max_line_bytes)
        while True:
            try:
                data = client.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                with self._lock:
                    self._hang_up(client)
                return
            try:
                lines = framer.feed(data)
            except protocol.LineTooLong as e:
                with self._lock:
                    for line in e.lines:
                        self._handle(client, line)
                    if client.conn is not None:
                        self.broker.reply(client.conn, e.reply())
                    self._hang_up(client)
                return
            for line in lines:
                if self.reply_delay:
                    time.sleep(self.reply_delay)
                with self._lock:
                    self._handle(client, line)
                    self._reap()

    def _handle(self, client: Client, line: bytes) -> None:
        """One request line, answered as the daemon answers it."""
        conn = client.conn
        if conn is None or client.closed:
            return
        try:
            self.requests.append(protocol.decode_message(line))
            request = protocol.decode_request(line)
            if self.on_request is not None:
                self.on_request(request)
            match request:
                case protocol.Ping():
                    self.broker.reply(conn, protocol.pong(request.id))
                case protocol.Status():
                    self.broker.reply(conn, protocol.status(request.id, self._status_fields()))
                case protocol.Subscribe():
                    self.broker.subscribe(conn, request)
                case protocol.Unsubscribe():
                    self.broker.unsubscribe(conn, request.subscription, request.id)
        except ProtocolError as e:
            self.broker.reply(conn, e.reply())

    def _status_fields(self) -> dict[str, Any]:
        stats = self.broker.stats()
        fields: dict[str, Any] = {
            "pid": self.pid,
            "instance": self.instance,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "seq": stats["seq"],
            "config": "/etc/watchd/watchd.toml",
            "reloads": 0,
            "last_reload_error": None,
            "clients": stats["clients"],
            "subscriptions": stats["subscriptions"],
            "events": stats["events"],
            "dropped": stats["dropped"],
            "overflows": stats["overflows"],
            "watches": [
                {"name": name, "path": path, "recursive": True, "state": "active", "directories": 1}
                for name, path in self.watches.items()
            ],
        }
        fields.update(self.status_extra)
        return fields

    def _reap(self) -> None:
        """Hang up on clients a write failed for (never from inside a broker call)."""
        for client in self.clients:
            if client.failed:
                self._hang_up(client)

    def _hang_up(self, client: Client) -> None:
        if client.closed:
            return
        client.closed = True
        if client.conn is not None:
            self.broker.disconnect(client.conn)
        # shutdown wakes the connection's reader thread; stop() closes the socket later.
        with contextlib.suppress(OSError):  # the client may have gone first
            client.sock.shutdown(socket.SHUT_RDWR)
