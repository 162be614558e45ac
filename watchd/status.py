"""What the daemon says about itself: the status reply (as each peer may read it) and the STATUS=
line systemd shows."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from watchd import __version__
from watchd.channel import Phase
from watchd.inotify import read_limits
from watchd.server import trusted

if TYPE_CHECKING:  # for hints only: status reads the parts the daemon wires
    from watchd.broker import Broker, Peer
    from watchd.resync import Resyncer
    from watchd.state import State
    from watchd.supervisor import Supervisor
    from watchd.watchstate import Watches, WatchState

# fs.inotify.max_user_watches is read again at most this often: reading /proc costs more than
# the rest of a status reply, and anyone may ask for thousands of them.
LIMITS_READ_S = 1.0


@dataclass(slots=True)
class ReloadRecord:
    """The daemon's start and its reloads since, as status reports them."""

    reloads: int = 0
    last_reload_error: str | None = None
    restart_needed: tuple[str, ...] = ()
    started: float = field(default_factory=time.monotonic)


def watch_status(ws: WatchState, resync: Resyncer | None = None) -> dict[str, Any]:
    """One watch in a status reply."""
    out: dict[str, Any] = {
        "name": ws.config.name,
        "path": ws.config.path,
        # The directory the watcher opens: path with its symbolic links resolved at load.
        "real_path": ws.config.real_path,
        "recursive": ws.config.recursive,
        "state": ws.state,
        "directories": ws.directories,
        "inotify_watches": ws.directories,
    }
    if resync is not None:
        out.update(resync.status(ws.config.name))  # tracked, resyncs
    if ws.state == Phase.DEGRADED:
        out["unwatched"] = ws.unwatched
        out["problem"] = ws.limit_message
    return out


class Status:
    """Reads the daemon's parts into a status reply or a STATUS= line."""

    def __init__(self, *, instance: str, config_path: str, broker: Broker, watches: Watches,
                 supervisor: Supervisor, clients: Collection[object],
                 history: ReloadRecord, resync: Resyncer | None = None,
                 state: State | None = None,
                 forwarders: Callable[[], list[dict[str, Any]]] = list) -> None:
        self.instance = instance
        self.config_path = config_path
        self.broker = broker
        self.watches = watches
        self.supervisor = supervisor
        self.clients = clients
        self.history = history
        self.resync = resync
        self.state = state
        self.forwarders = forwarders  # see watchd.forward.supervise.Forwarders.status
        self.max_user_watches: tuple[float, int | None] = (-math.inf, None)  # (read at, value)

    def fields(self, peer: Peer | None = None) -> dict[str, Any]:
        """The status reply as this peer may read it (None: everything, for the operator).

        A peer other than root or the daemon's user is shown only the watches it may see, and
        totals over those watches and over its own user's connections: what the ACLs hide must
        not show through a name, a path or a count.
        """
        h = self.history
        # Root and the daemon's own user are shown everything; see docs/security.md.
        if peer is None or trusted(peer):
            shown = list(self.watches)
            stats = self.broker.stats()
            reload_error = h.last_reload_error
            view = "full"
        else:
            shown = [ws for ws in self.watches if peer.sees(ws.config)]
            stats = self.broker.stats_for(peer.uid, (ws.config.name for ws in shown))
            # The message may quote any watch of the file.
            reload_error = (None if h.last_reload_error is None
                            else "the last reload was refused; the daemon's log says why")
            view = "limited"
        watcher = self.supervisor.watcher
        return {
            "pid": os.getpid(),
            "instance": self.instance,
            "uptime_s": round(time.monotonic() - h.started, 3),
            "seq": self.broker.last_seq,
            "config": self.config_path,
            "reloads": h.reloads,
            "last_reload_error": reload_error,
            "view": view,
            "clients": stats["clients"],
            "subscriptions": stats["subscriptions"],
            "events": stats["events"],
            "dropped": stats["dropped"],
            "overflows": stats["overflows"],
            "watches": [watch_status(ws, self.resync) for ws in shown],
            "version": __version__,
            "watcher": {
                "pid": watcher.pid if watcher is not None else None,
                "restarts": self.supervisor.policy.restarts,
                "crashes_in_a_row": self.supervisor.policy.crashes_in_a_row,
            },
            "inotify_watches": sum(ws.directories for ws in shown),
            "max_user_watches": self.user_watch_limit(),
            "restart_needed": list(h.restart_needed),
            **self.state_fields(full=view == "full"),
            # Their lag counts events of the watches they forward: shown in full only.
            "forwarders": self.forwarders() if view == "full" else [],
        }

    def state_fields(self, *, full: bool) -> dict[str, Any]:
        """Durable state: where, how large, and the seq a restart resumed at. The sizes grow
        with every watch's events, so a peer with a limited view is not shown them."""
        state = self.state
        if state is None:
            return {"state_directory": None, "durable": False, "journal_bytes": None,
                    "state_bytes": None, "restored_from": None}
        out = state.status()
        if not full:
            out["journal_bytes"] = out["state_bytes"] = None
        return out

    def user_watch_limit(self) -> int | None:
        """fs.inotify.max_user_watches, read again at most every LIMITS_READ_S."""
        now = time.monotonic()
        read_at, value = self.max_user_watches
        if now - read_at >= LIMITS_READ_S:
            value = read_limits().max_user_watches
            self.max_user_watches = (now, value)
        return value

    def line(self) -> str:
        """One line for systemd's STATUS= and the log."""
        states = [ws.state for ws in self.watches]
        parts = [f"{len(states)} watches ({states.count(Phase.ACTIVE)} active"]
        for phase in (Phase.DEGRADED, Phase.PENDING):
            if states.count(phase):
                parts[-1] += f", {states.count(phase)} {phase}"
        parts[-1] += ")"
        parts.append(f"{self.watches.directories()} directories")
        parts.append(f"{len(self.clients)} clients")
        parts.append(f"{self.broker.events} events")
        restarts = self.supervisor.policy.restarts
        if restarts:
            parts.append(f"{restarts} watcher restarts")
        if self.supervisor.restarting:
            parts.append("watcher restarting")
        for ws in self.watches:
            if ws.state == Phase.DEGRADED:
                # A limit (max_directories or the kernel's) or unreadable directories.
                why = ws.limit or "unreadable directories"
                parts.append(f"{ws.unwatched} directories unwatched on {ws.config.name} ({why})")
        if error := self.history.last_reload_error:
            parts.append(f"last reload failed: {error}")
        return "; ".join(parts)
