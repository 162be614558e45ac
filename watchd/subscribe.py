"""Opening and ending subscriptions: a subscribe's checks and limits, its sid, its `since`
replay; no sockets.

A part of the broker (watchd.broker hands its methods on as its own); what a subscription is
and how its filter matches are watchd.subscription's.
"""

from __future__ import annotations

from collections.abc import Callable

from watchd import protocol
from watchd.protocol import ErrorCode, JsonScalar, ProtocolError, Subscribe
from watchd.replay import History, Replays
from watchd.subscription import (
    Connection,
    FilterCache,
    Subscription,
    WatchInfo,
    check_watches,
    quote,
)


class Subscriptions:
    """Adds and ends the subscriptions of connections, within the limits in force."""

    def __init__(self, instance: str, history: History, replays: Replays,
                 pump: Callable[[Connection], None], routes_changed: Callable[[], None], *,
                 max_subscriptions: int, max_patterns: int, max_paths: int) -> None:
        self.instance = instance
        self.max_subscriptions = max_subscriptions
        self.max_patterns = max_patterns
        self.max_paths = max_paths
        self.watches: dict[str, WatchInfo] = {}  # the broker's, replaced when it takes new ones
        self._filters = FilterCache()
        self._history = history
        self._replays = replays
        self._pump = pump
        self._routes_changed = routes_changed
        self._sids = 0

    def subscribe(self, conn: Connection, req: Subscribe) -> str:
        """Add a subscription; queue `subscribed` then the replayed events; return its sid."""
        check_watches(conn.peer, req, self.watches)
        if len(conn.subs) >= self.max_subscriptions:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"this connection already holds {len(conn.subs)} subscriptions, the most allowed "
                "(daemon.max_subscriptions); unsubscribe one or open another connection",
                req.id,
            )
        if req.since is not None:
            self._history.check_since(req.since, req.instance, self.instance, req.id)
        flt = self._filters.get(req, self.max_patterns, self.max_paths)
        self._sids += 1
        sid = f"s{self._sids}"
        sub = Subscription(
            sid=sid,
            conn=conn,
            filter=flt,
            prefix=protocol.event_prefix(sid),
            visible=flt.visible(conn.peer, self.watches),
            frame=protocol.frame_head(sid) if req.batch else None,
        )
        conn.subs[sid] = sub
        self._routes_changed()
        conn.queue.append(protocol.subscribed(req.id, sid, self._history.last_seq))
        if req.since is not None:
            # The replay reads the history up to the newest event, live ones included, and only
            # then hands the subscription to publish: every seq after `since` once, in order.
            self._replays.start(sub, req.since)
        self._pump(conn)
        return sid

    def unsubscribe(self, conn: Connection, sid: str, req_id: JsonScalar) -> None:
        """End one of the connection's subscriptions and queue `unsubscribed`."""
        sub = conn.subs.pop(sid, None)
        if sub is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_SUBSCRIPTION,
                f'"subscription": {quote(sid)} is not a subscription of this connection',
                req_id,
            )
        self._routes_changed()
        if sub.replay is not None:
            self._replays.end(sub)
        # Its gap, if any, is still news to the client.
        sub.notice(protocol.unsubscribed(req_id, sid))
        self._pump(conn)
