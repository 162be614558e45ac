"""The configuration as values: frozen dataclasses for the file, and what a reload changes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Final

from watchd.events import DEFAULT_KINDS, Kind
from watchd.levels import DEFAULT_LOG_LEVEL
from watchd.protocol import DEFAULT_MAX_BATCH

# Keys of [daemon] that bind the listening socket or open the durable state: a reload cannot
# change them.
RESTART_KEYS: Final = ("socket", "socket_mode", "socket_group", "state_directory",
                       "journal_max_bytes", "journal_fsync_interval")
# Connections root and the daemon's own user may open beyond daemon.max_clients, so that the
# others filling every slot cannot lock the administrator out.
RESERVED_CLIENTS: Final = 8


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """The [daemon] table."""

    socket: str = "/run/watchd/watchd.sock"
    socket_mode: int = 0o660
    socket_group: int | None = None  # a gid, resolved from a name when the file gives one
    log_level: str = DEFAULT_LOG_LEVEL
    max_clients: int = 1024
    max_clients_per_user: int = 64
    max_subscriptions: int = 64
    max_patterns: int = 64  # glob patterns in one subscription
    max_paths: int = 256  # paths in one subscription
    client_queue: int = 10000
    replay_buffer: int = 65536
    max_line_bytes: int = 65536
    max_batch: int = DEFAULT_MAX_BATCH  # events in one frame of a batched subscription
    request_timeout: float = 10.0
    watcher_timeout: float = 10.0
    # Where the durable state lives (watchd.state): None for $STATE_DIRECTORY when systemd
    # sets it, else no durable state; "" for none at all.
    state_directory: str | None = None
    journal_max_bytes: int = 64 << 20
    journal_fsync_interval: float = 1.0
    # Where the Prometheus metrics are served over HTTP: (host, port), None for nowhere.
    metrics: tuple[str, int] | None = None

    def state_path(self, environ: Mapping[str, str]) -> str | None:
        """The state directory in effect: the key, else systemd's $STATE_DIRECTORY (its first
        entry), else None."""
        if self.state_directory is not None:
            return self.state_directory or None
        first = environ.get("STATE_DIRECTORY", "").split(":")[0]
        return first if first.startswith("/") else None


@dataclass(frozen=True, slots=True)
class WatchConfig:
    """One [[watch]] table."""

    name: str
    path: str
    recursive: bool = True
    events: frozenset[Kind] = DEFAULT_KINDS
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    allow_users: frozenset[int] | None = None  # uids
    allow_groups: frozenset[int] | None = None  # gids
    max_directories: int | None = None  # None: a fair share (Config.directory_budgets)
    # Keep an index of the tree, so that after a loss only the differences are published
    # (watchd.resync); false: an overflow notice alone, and no memory spent on the tree.
    resync: bool = True
    # Not a key of the file: `path` with its symbolic links resolved when the file was loaded,
    # where it differs from `path` (the watcher opens this one, following no link at all).
    resolved: str = ""

    @property
    def real_path(self) -> str:
        """The directory the watcher opens: `path`, its symbolic links resolved at load."""
        return self.resolved or self.path

    def may_see(self, uid: int, gid: int, groups: Iterable[int]) -> bool:
        """Whether a peer with these credentials may subscribe to this watch."""
        if uid == 0 or (self.allow_users is None and self.allow_groups is None):
            return True
        if self.allow_users is not None and uid in self.allow_users:
            return True
        if self.allow_groups is None:
            return False
        return gid in self.allow_groups or any(g in self.allow_groups for g in groups)


# The keys a [[watch]] table may have: WatchConfig's fields but those computed at load.
WATCH_KEYS: Final = tuple(f.name for f in fields(WatchConfig) if f.name != "resolved")


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    """One [[forward]] table: where a forwarder publishes which events (watchd.forward)."""

    name: str
    urls: tuple[str, ...]
    type: str = "nats"
    subject: str = "watchd.{host}.{watch}"
    stream: str = "WATCHD"
    watches: tuple[str, ...] | None = None  # None: every watch
    events: frozenset[Kind] | None = None  # None: each watch's own kinds
    create_stream: bool = False
    credentials: str | None = None  # a NATS credentials file
    token: str | None = None
    user: str | None = None
    password: str | None = None
    # Seconds the publishing connection may be quiet before we PING the server; no answer
    # within as long again, and the connection counts as lost (a half-open one).
    ping_interval: float = 30.0


# The keys a [[forward]] table may have ("url" is read into ForwardConfig.urls).
FORWARD_KEYS: Final = ("url", *(f.name for f in fields(ForwardConfig) if f.name != "urls"))


@dataclass(frozen=True, slots=True)
class Config:
    """A whole configuration file."""

    path: str
    daemon: DaemonConfig
    watches: tuple[WatchConfig, ...]
    forwards: tuple[ForwardConfig, ...] = ()

    def watch(self, name: str) -> WatchConfig | None:
        """The watch of that name, if there is one."""
        for watch in self.watches:
            if watch.name == name:
                return watch
        return None

    def watching(self, path: str) -> WatchConfig | None:
        """A recursive watch whose tree holds path (its events would report what is written
        there), if any."""
        for watch in self.watches:
            if watch.recursive and (path == watch.path or path.startswith(
                    watch.path.rstrip("/") + "/")):
                return watch
        return None

    def directory_budgets(self, max_user_watches: int | None) -> dict[str, int | None]:
        """How many directories each watch may watch, so that none starves the others.

        A watch's own max_directories, else a fair share: the kernel's limit less what the
        watches with a max_directories of their own take, divided equally among the others
        (at least 1). None where the kernel's limit is unknown and none is configured.
        """
        explicit = sum(w.max_directories or 0 for w in self.watches)
        shared = sum(1 for w in self.watches if w.max_directories is None)
        share = None
        if max_user_watches is not None and shared:
            share = max(1, (max_user_watches - explicit) // shared)
        return {w.name: w.max_directories or share for w in self.watches}


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    """What a reload changes."""

    added: tuple[WatchConfig, ...]
    removed: tuple[WatchConfig, ...]
    changed: tuple[tuple[WatchConfig, WatchConfig], ...]  # (old, new)
    restart_needed: tuple[str, ...]  # e.g. "daemon.socket": differs, but only a restart applies it

    def describe(self) -> str:
        """The changes, for the log."""
        parts = [f"{len(self.added)} added", f"{len(self.removed)} removed",
                 f"{len(self.changed)} changed"]
        if self.restart_needed:
            parts.append("needs restart: " + ", ".join(self.restart_needed))
        return ", ".join(parts)


def diff_config(old: Config, new: Config) -> ConfigDiff:
    """What differs between the running configuration and a reloaded one."""
    old_by_name = {w.name: w for w in old.watches}
    new_names = {w.name for w in new.watches}
    return ConfigDiff(
        added=tuple(w for w in new.watches if w.name not in old_by_name),
        removed=tuple(w for w in old.watches if w.name not in new_names),
        changed=tuple(
            (old_by_name[w.name], w)
            for w in new.watches
            if w.name in old_by_name and old_by_name[w.name] != w
        ),
        restart_needed=tuple(
            f"daemon.{key}"
            for key in RESTART_KEYS
            if getattr(old.daemon, key) != getattr(new.daemon, key)
        ),
    )
