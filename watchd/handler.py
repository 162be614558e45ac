"""What the daemon does for its clients: who may connect, the greeting, and each request.

`RequestHandler` is what watchd.server calls a `Handler` (and watchd.requests a `LineHandler`):
the server frames lines and writes replies; the broker keeps subscriptions; this decides what a
line asks for and who is let in.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from watchd import __version__, protocol
from watchd.config.model import RESERVED_CLIENTS
from watchd.server import trusted

if TYPE_CHECKING:  # for hints only: the daemon wires these parts together
    from watchd.broker import Broker, Connection, Peer
    from watchd.config.model import DaemonConfig
    from watchd.holdback import HoldBack
    from watchd.metrics import Metrics
    from watchd.server import ClientProtocol
    from watchd.status import Status

log = logging.getLogger("watchd")

# What accept fails with when the process or the system is out of descriptors or memory.
ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class RequestHandler:
    """Admits connections and answers their requests (see watchd.server.Handler)."""

    def __init__(self, *, broker: Broker, instance: str, settings: Callable[[], DaemonConfig],
                 clients: Collection[ClientProtocol], status: Status, hold: HoldBack,
                 durable: Callable[[], bool] = lambda: False,
                 metrics: Metrics | None = None) -> None:
        self.broker = broker
        self.metrics = metrics
        self.instance = instance
        self.settings = settings  # the daemon's current settings: a reload replaces them
        self.clients = clients
        self.status = status
        self.hold = hold
        # Whether what is published now survives a restart (it stops when the state's disk
        # fills up: connections from then on are told so).
        self.durable = durable
        self.accept_failing = False  # out of descriptors: logged once until an accept works

    def may_connect(self, peer: Peer) -> str | None:
        """None to serve a new connection from peer, or why not.

        Root and the daemon's own user have RESERVED_CLIENTS slots beyond max_clients and no
        per-user cap, so that the others filling every slot never lock the administrator out.
        """
        if self.accept_failing:
            self.accept_failing = False
            log.info("accepting connections again")
        d = self.settings()
        if trusted(peer):
            if len(self.clients) < d.max_clients + RESERVED_CLIENTS:
                return None
            return ("the daemon serves its maximum number of clients (daemon.max_clients, and "
                    "the slots kept for root); try again later")
        if len(self.clients) >= d.max_clients:
            return ("the daemon serves its maximum number of clients (daemon.max_clients); "
                    "try again later")
        mine = sum(1 for c in self.clients if c.conn is not None and c.conn.peer.uid == peer.uid)
        if mine >= d.max_clients_per_user:
            return (f"uid {peer.uid} already holds {mine} connections, the most one user may "
                    "(daemon.max_clients_per_user); close one and try again")
        return None

    def on_loop_exception(self, loop: asyncio.AbstractEventLoop,
                          context: dict[str, Any]) -> None:
        """asyncio reports each failed accept (and retries a second later): one line per run
        of failures instead of a traceback for each."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in ACCEPT_RESOURCE_ERRORS:
            if not self.accept_failing:
                self.accept_failing = True
                soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                log.error("cannot accept new connections: %s (open file limit %d, %d clients); "
                          "retrying every second until resources are freed",
                          exc.strerror, soft, len(self.clients))
            return
        loop.default_exception_handler(context)

    def request_timeout(self) -> float:
        """Seconds a started request line may take to be finished."""
        return self.settings().request_timeout

    def greet(self, conn: Connection) -> None:
        """The hello every connection gets first."""
        self.broker.reply(conn, protocol.hello(__version__, os.getpid(), self.instance,
                                               self.broker.last_seq, durable=self.durable()))

    def handle_line(self, conn: Connection, line: bytes) -> None:
        """Answer one request line; a bad one gets an error reply, never an exception."""
        try:
            request = protocol.decode_request(line)
            if isinstance(request, protocol.Ping):
                self.broker.reply(conn, protocol.pong(request.id))
            elif isinstance(request, protocol.Status):
                self.broker.reply(conn, protocol.status(request.id, self.status.fields(conn.peer)))
            elif isinstance(request, protocol.Metrics):
                self.reply_metrics(conn, request.id)
            elif isinstance(request, protocol.Subscribe):
                self.broker.subscribe(conn, request)
                self.hold.review()  # a newcomer is not behind: no reason to hold back
            else:
                self.broker.unsubscribe(conn, request.subscription, request.id)
        except protocol.ProtocolError as e:
            self.broker.reply(conn, e.reply())

    def reply_metrics(self, conn: Connection, req_id: protocol.JsonScalar) -> None:
        """The metrics as this peer may read them (see watchd.metrics)."""
        if self.metrics is None:
            raise protocol.ProtocolError(protocol.ErrorCode.UNKNOWN_OP,
                                         '"op": this daemon keeps no metrics', req_id)
        view, text = self.metrics.text(conn.peer)
        self.broker.reply(conn, protocol.metrics(req_id, view, text))

    def review_hold_back(self) -> None:
        """A subscriber's levels changed: the hold-back looks again when the turn is done."""
        self.hold.review_soon()

    def flow_time(self) -> float:
        """Now on the flow clock (see watchd.flow)."""
        return self.hold.flow_time()
