"""The broker's notices to subscribers: the markers held in the replay history (overflow,
resynced), and a watch's root lost, restored or left in part unwatched; no sockets.

A notice is queued on the connection behind the report of any gap of its subscription
(Subscription.notice), never dropped, and never told before older news.
"""

from __future__ import annotations

from collections.abc import Callable

from watchd import protocol
from watchd.counters import Counters
from watchd.replay import History, Marker
from watchd.subscription import Connection, Subscription


class Notices:
    """Queues a notice on every subscription a watch concerns, and pumps their connections."""

    def __init__(self, conns: dict[Connection, None], history: History, counts: Counters,
                 pump: Callable[[Connection], None]) -> None:
        self._conns = conns  # the broker's: every connection, in the order they came
        self._history = history
        self._counts = counts
        self._pump = pump

    def overflow(self, watch: str | None, reason: str,
                 resync: frozenset[str] = frozenset()) -> None:
        """Tell the subscribers of a watch (all, for None) that events may have been lost here;
        for the watches in `resync`, that the differences follow (see resynced)."""
        self._counts.overflow(watch, reason)
        self._mark(Marker(self._history.last_seq, watch, reason, resync))

    def resynced(self, watch: str, changes: int, duration_ms: float) -> None:
        """Tell a watch's subscribers that the synthetic events of its resync are all out."""
        self._mark(Marker(self._history.last_seq, watch, "", changes=changes,
                          duration_ms=duration_ms))

    def _mark(self, marker: Marker) -> None:
        """Hold a notice in the history and send it to the live subscribers concerned."""
        self._history.mark(marker)
        # A replay under way meets the marker in the history, in its place among the events.
        self._notify(marker.watch, lambda sub: marker.line(sub.sid, sub.visible),
                     live_only=True)

    def watch_lost(self, watch: str, path: str, reason: str) -> None:
        """Tell a watch's subscribers that its root went away (call before a reload removes it)."""
        self._notify(watch, lambda sub: protocol.watch_lost(sub.sid, watch, path, reason))

    def watch_restored(self, watch: str, path: str) -> None:
        """Tell a watch's subscribers that its root is watched again."""
        self._notify(watch, lambda sub: protocol.watch_restored(sub.sid, watch, path))

    def watch_degraded(self, watch: str, unwatched: int, reason: str) -> None:
        """Tell a watch's subscribers that a limit leaves some of its directories unwatched."""
        self._notify(watch, lambda sub: protocol.watch_degraded(sub.sid, watch, unwatched, reason))

    def _notify(
        self, watch: str | None, line_for: Callable[[Subscription], bytes], *,
        live_only: bool = False
    ) -> None:
        """Queue a notice to every subscription concerned by a watch (all of them for None);
        live_only leaves out replays under way."""
        for conn in self._conns:
            touched = False
            for sub in conn.subs.values():
                if live_only and sub.replay is not None:
                    continue
                if watch is None or watch in sub.visible:
                    sub.notice(line_for(sub))
                    touched = True
            if touched:
                self._pump(conn)
