"""What status reports of the events: counted by the broker, read as each peer may see them."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from watchd.subscription import Connection


@dataclass(slots=True)
class Counters:
    """Events, overflows and drops: in all, and per watch ("" for every watch at once) or per
    user, for a status limited to some watches and to the peer's own connections."""

    # Events published per watch and kind bit: the one count the event path keeps (once per
    # batch); the totals are summed from it when asked for.
    kinds_of: dict[str, dict[int, int]] = field(default_factory=dict)
    overflows: int = 0  # overflow occasions, however many subscriptions were told
    overflows_of: dict[str, int] = field(default_factory=dict)
    # Event lines discarded for connections since closed, by the uid of their peer.
    dropped_gone_of: dict[int, int] = field(default_factory=dict)
    # For the metrics (watchd.metrics): overflow occasions per (watch or "", reason), and
    # events handed to a client's socket (one per subscription that received it).
    overflows_by: dict[tuple[str, str], int] = field(default_factory=dict)
    delivered: int = 0

    @property
    def events(self) -> int:
        """Events published."""
        return sum(self.events_of(self.kinds_of))

    def events_of(self, watches: Iterable[str]) -> Iterable[int]:
        """Events published by each of these watches."""
        kinds_of = self.kinds_of
        return (sum(kinds_of[w].values()) for w in watches if w in kinds_of)

    def overflow(self, watch: str | None, reason: str = "") -> None:
        """Count an overflow occasion of a watch (of every watch for None)."""
        self.overflows += 1
        self.overflows_of[watch or ""] = self.overflows_of.get(watch or "", 0) + 1
        key = (watch or "", reason)
        self.overflows_by[key] = self.overflows_by.get(key, 0) + 1

    def gone(self, conn: Connection) -> None:
        """A connection closed: its drops stay counted."""
        uid = conn.peer.uid
        self.dropped_gone_of[uid] = self.dropped_gone_of.get(uid, 0) + conn.dropped

    def dropped(self, conns: Iterable[Connection]) -> int:
        """Event lines discarded for slow connections, closed ones included."""
        return sum(self.dropped_gone_of.values()) + sum(conn.dropped for conn in conns)

    def stats(self, conns: Collection[Connection], last_seq: int, oldest: int,
              seen: tuple[int, Iterable[str]] | None = None) -> dict[str, int]:
        """The counters reported by status; `seen` (uid, visible watches) limits them to what
        that peer may read.

        Limited, counters of events and overflows cover the visible watches; clients,
        subscriptions and drops those of the peer's own user, so that nothing is told of the
        others' activity.
        """
        if seen is None:
            mine: Collection[Connection] = conns
            events, overflows = self.events, self.overflows
            gone = sum(self.dropped_gone_of.values())
        else:
            uid, visible = seen
            names = set(visible)
            mine = [conn for conn in conns if conn.peer.uid == uid]
            events = sum(self.events_of(names))
            overflows = sum(n for w, n in self.overflows_of.items() if w in names or not w)
            gone = self.dropped_gone_of.get(uid, 0)
        return {
            "clients": len(mine),
            "subscriptions": sum(len(conn.subs) for conn in mine),
            "events": events,
            "dropped": gone + sum(conn.dropped for conn in mine),
            "overflows": overflows,
            "seq": last_seq,
            "oldest": oldest,
        }
