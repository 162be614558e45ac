"""The TOML configuration: parsed into frozen dataclasses, every problem named by file and key."""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import grp
import math
import os
import pwd
import re
import resource
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Final

from watchd.errors import ConfigError
from watchd.events import ALL_KINDS, DEFAULT_KINDS, KIND_LIST, Kind
from watchd.levels import DEFAULT_LOG_LEVEL, LOG_LEVELS

# Keys of [daemon] that bind the listening socket: a reload cannot change them.
RESTART_KEYS: Final = ("socket", "socket_mode", "socket_group")

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
_OCTAL_RE: Final = re.compile(r"(?:0o)?([0-7]{1,4})")
_MAX_ID: Final = 2**32 - 2  # (uid_t) -1 means "no change" to the kernel, so it is no id
# sun_path holds 108 bytes with the terminating NUL.
_MAX_SOCKET_PATH: Final = 107
# Connections root and the daemon's own user may open beyond daemon.max_clients, so that the
# others filling every slot cannot lock the administrator out.
RESERVED_CLIENTS: Final = 8
# File descriptors the daemon needs besides its clients: the listening socket, the watcher's
# pipes (two watchers for a moment while one is replaced), logging, the notify socket, stdio.
FD_RESERVE: Final = 64


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
    request_timeout: float = 10.0
    watcher_timeout: float = 10.0


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
class Config:
    """A whole configuration file."""

    path: str
    daemon: DaemonConfig
    watches: tuple[WatchConfig, ...]

    def watch(self, name: str) -> WatchConfig | None:
        """The watch of that name, if there is one."""
        for watch in self.watches:
            if watch.name == name:
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
    daemon_changed: bool


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file; raises ConfigError."""
    file = os.path.abspath(os.fspath(path))
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(file, "", f"cannot read the configuration file: {e.strerror or e}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            file, "", f"not UTF-8 text: byte 0x{data[e.start]:02x} on line {line}; save it as UTF-8"
        ) from e
    config = resolve_paths(parse_config(text, file))
    check_fd_limit(config)
    return config


def resolve_paths(config: Config) -> Config:
    """Resolve each watch's symbolic links, once, and refuse a pseudo file system as a root.

    The watcher then opens the resolved path following no link, so a link put in place of
    the directory (or of a parent) later is never followed; a reload resolves again.
    """
    from watchd.inotify.fs import pseudo_fs_at

    watches = []
    for i, watch in enumerate(config.watches):
        real = os.path.realpath(watch.path)
        pseudo = pseudo_fs_at(real)
        if pseudo is not None:
            raise ConfigError(
                config.path, f"watch[{i}].path",
                f"{_show(watch.path)} is on the pseudo file system {pseudo}, whose changes "
                f"inotify does not report; watch a directory of a real file system "
                f"(in watch {watch.name!r})")
        resolved = real if real != watch.path else ""
        watches.append(dataclasses.replace(watch, resolved=resolved))
    return dataclasses.replace(config, watches=tuple(watches))


def fds_needed(daemon: DaemonConfig) -> int:
    """The file descriptors the daemon needs at most with this configuration."""
    return daemon.max_clients + RESERVED_CLIENTS + FD_RESERVE


def check_fd_limit(config: Config) -> None:
    """Refuse a max_clients the hard RLIMIT_NOFILE cannot hold (the daemon raises its soft
    limit up to the hard one at start); raises ConfigError."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    need = fds_needed(config.daemon)
    if hard != resource.RLIM_INFINITY and hard < need:
        most = hard - RESERVED_CLIENTS - FD_RESERVE
        raise ConfigError(
            config.path,
            "daemon.max_clients",
            f"{config.daemon.max_clients} clients need {need} file descriptors, more than the "
            f"limit of this process allows (RLIMIT_NOFILE {hard}); lower max_clients to "
            f"{max(most, 0)} or less, or raise the limit (LimitNOFILE= in the unit, ulimit -Hn)",
        )


def parse_config(text: str, path: str) -> Config:
    """Validate TOML text; path names the file in messages and becomes Config.path."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"invalid TOML: {e}") from e
    except RecursionError as e:
        raise ConfigError(path, "", "invalid TOML: values nested too deeply") from e
    r = _Reader(path)
    r.only_keys(doc, "", ("daemon", "watch"))
    daemon = _daemon(r, r.table(doc, "daemon"))
    watches = _watches(r, doc.get("watch", []))
    return Config(path=path, daemon=daemon, watches=watches)


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
        daemon_changed=old.daemon != new.daemon,
    )


# --- validation -----------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    """A TOML value's type as messages call it."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        return f"a string ({_show(value)})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return "a date/time"
    return type(value).__name__


def _show(value: str) -> str:
    """A string from the file, quoted for a message and cut short when long."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:56] + "...'"


class _Reader:
    """Reads typed values out of the parsed document; every failure is a ConfigError."""

    __slots__ = ("file", "where")

    def __init__(self, file: str) -> None:
        self.file = file
        # Added to every problem inside a watch whose name is known, e.g. ' in watch "uploads"'.
        self.where = ""

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, key, problem + self.where)

    def only_keys(self, table: Mapping[str, object], prefix: str, allowed: Iterable[str]) -> None:
        allowed = sorted(allowed)
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(
                    prefix + key,
                    f"unknown key; the keys allowed here are {', '.join(allowed)}{hint}",
                )

    def table(self, doc: Mapping[str, object], key: str) -> Mapping[str, object]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table ([{key}]), got {_type_name(value)}")
        return value

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_type_name(value)}")
        return value

    def boolean(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_type_name(value)}")
        return value

    def positive_int(self, value: object, key: str) -> int:
        # bool is a subclass of int in Python, but `max_clients = true` is surely a mistake.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected a positive integer, got {_type_name(value)}")
        if value <= 0:
            raise self.error(key, f"must be greater than 0, got {value}")
        return value

    def positive_number(self, value: object, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number of seconds, got {_type_name(value)}")
        if not math.isfinite(value) or value <= 0:
            raise self.error(key, f"must be a finite number greater than 0, got {value}")
        return float(value)

    def absolute_path(self, value: object, key: str) -> str:
        path = self.string(value, key)
        if not path.startswith("/"):
            raise self.error(key, f"must be an absolute path, got {_show(path)}")
        if "\x00" in path:
            raise self.error(key, "a path cannot contain a NUL character")
        # POSIX lets a leading "//" mean something else; Linux does not, and normpath keeps it.
        return "/" + os.path.normpath(path).lstrip("/")

    def array(self, value: object, key: str, what: str) -> list[object]:
        if not isinstance(value, list):
            raise self.error(key, f"expected an array of {what}, got {_type_name(value)}")
        return value

    def identity(self, value: object, key: str, kind: str, lookup: Callable[[str], int]) -> int:
        """A uid or gid given as a number or a name ('user' or 'group' by kind)."""
        if isinstance(value, str) and value.isdecimal():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self.error(key, f"expected a {kind} name or number, got {_type_name(value)}")
        if isinstance(value, int):
            if not 0 <= value <= _MAX_ID:
                raise self.error(key, f"{kind} id out of range: {value}")
            return value
        try:
            return lookup(value)
        except KeyError as e:
            raise self.error(
                key, f"unknown {kind} {_show(value)}: no such {kind} on this system"
            ) from e

    def identities(
        self, value: object, key: str, kind: str, lookup: Callable[[str], int]
    ) -> frozenset[int]:
        items = self.array(value, key, f"{kind} names or ids")
        return frozenset(
            self.identity(item, f"{key}[{i}]", kind, lookup) for i, item in enumerate(items)
        )


def _uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def _socket_mode(r: _Reader, value: object, key: str) -> int:
    if not isinstance(value, str):
        hint = '; write it quoted, as in "0660"' if isinstance(value, int) else ""
        raise r.error(
            key, f'expected an octal string such as "0660", got {_type_name(value)}{hint}'
        )
    match = _OCTAL_RE.fullmatch(value)
    if match is None:
        raise r.error(key, f'expected an octal string such as "0660", got {_show(value)}')
    mode = int(match.group(1), 8)
    if mode > 0o777:
        raise r.error(key, f"out of range: {value} (permission bits go up to 0777)")
    return mode


def _daemon(r: _Reader, table: Mapping[str, object]) -> DaemonConfig:
    allowed = [f.name for f in fields(DaemonConfig)]
    r.only_keys(table, "daemon.", allowed)
    values: dict[str, object] = {}
    for key, value in table.items():
        full = f"daemon.{key}"
        if key == "socket":
            socket = r.absolute_path(value, full)
            if len(os.fsencode(socket)) > _MAX_SOCKET_PATH:
                raise r.error(
                    full,
                    f"path too long for a Unix socket ({len(os.fsencode(socket))} bytes, "
                    f"at most {_MAX_SOCKET_PATH}); choose a shorter one",
                )
            values[key] = socket
        elif key == "socket_mode":
            values[key] = _socket_mode(r, value, full)
        elif key == "socket_group":
            values[key] = r.identity(value, full, "group", _gid)
        elif key == "log_level":
            level = r.string(value, full)
            if level not in LOG_LEVELS:
                raise r.error(
                    full,
                    f"unknown log level {_show(level)}; expected one of {', '.join(LOG_LEVELS)}",
                )
            values[key] = level
        elif key in ("watcher_timeout", "request_timeout"):
            values[key] = r.positive_number(value, full)
        else:
            values[key] = r.positive_int(value, full)
    return DaemonConfig(**values)  # type: ignore[arg-type]  # each value was checked above


def _watches(r: _Reader, value: object) -> tuple[WatchConfig, ...]:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise r.error("watch", f"expected an array of tables ([[watch]]), got {_type_name(value)}")
    watches: list[WatchConfig] = []
    first_index: dict[str, int] = {}
    for i, table in enumerate(value):
        watch = _watch(r, table, f"watch[{i}]")
        if watch.name in first_index:
            first = first_index[watch.name]
            raise r.error(
                f"watch[{i}].name",
                f"duplicate name {_show(watch.name)}, already used by watch[{first}];"
                " every watch needs its own name",
            )
        first_index[watch.name] = i
        watches.append(watch)
    return tuple(watches)


def _events(r: _Reader, value: object, key: str) -> frozenset[Kind]:
    if value == "all":
        return ALL_KINDS
    items = r.array(value, key, 'event kinds (or the string "all")')
    if not items:
        raise r.error(key, 'must not be empty; leave it out for the default kinds, or use "all"')
    kinds: set[Kind] = set()
    for i, item in enumerate(items):
        name = r.string(item, f"{key}[{i}]")
        if name == "all":
            return ALL_KINDS
        try:
            kinds.add(Kind(name))
        except ValueError as e:
            raise r.error(
                f"{key}[{i}]",
                f'unknown event kind {_show(name)}; expected one of {KIND_LIST}, or "all"',
            ) from e
    return frozenset(kinds)


def _patterns(r: _Reader, value: object, key: str) -> tuple[str, ...]:
    items = r.array(value, key, "fnmatch patterns")
    patterns = []
    for i, item in enumerate(items):
        pattern = r.string(item, f"{key}[{i}]")
        if not pattern:
            raise r.error(f"{key}[{i}]", "an empty pattern matches nothing")
        if "/" in pattern:
            raise r.error(
                f"{key}[{i}]",
                f"patterns match a base name, which never contains '/'; got {_show(pattern)}",
            )
        patterns.append(pattern)
    return tuple(patterns)


def _watch(r: _Reader, table: Mapping[str, object], prefix: str) -> WatchConfig:
    r.where = ""
    if "name" not in table:
        raise r.error(f"{prefix}.name", "missing; every watch needs a name")
    name = r.string(table["name"], f"{prefix}.name")
    if _NAME_RE.fullmatch(name) is None:
        raise r.error(
            f"{prefix}.name",
            f"{_show(name)} is not a valid name: use letters, digits, '_', '.' and '-' only",
        )
    r.where = f" (in watch {name!r})"
    r.only_keys(table, f"{prefix}.", WATCH_KEYS)
    if "path" not in table:
        raise r.error(f"{prefix}.path", "missing; every watch needs an absolute path")
    values: dict[str, object] = {
        "name": name,
        "path": r.absolute_path(table["path"], f"{prefix}.path"),
    }
    for key, value in table.items():
        full = f"{prefix}.{key}"
        if key == "recursive":
            values[key] = r.boolean(value, full)
        elif key == "events":
            values[key] = _events(r, value, full)
        elif key in ("include", "exclude"):
            values[key] = _patterns(r, value, full)
        elif key == "allow_users":
            values[key] = r.identities(value, full, "user", _uid)
        elif key == "allow_groups":
            values[key] = r.identities(value, full, "group", _gid)
        elif key == "max_directories":
            values[key] = r.positive_int(value, full)
    r.where = ""
    return WatchConfig(**values)  # type: ignore[arg-type]  # each value was checked above


__all__ = [
    "FD_RESERVE",
    "RESERVED_CLIENTS",
    "RESTART_KEYS",
    "WATCH_KEYS",
    "Config",
    "ConfigDiff",
    "DaemonConfig",
    "WatchConfig",
    "check_fd_limit",
    "diff_config",
    "fds_needed",
    "load_config",
    "parse_config",
    "resolve_paths",
]
