"""Reading TOML into the configuration values: every problem named by file and key."""

from __future__ import annotations

import datetime
import difflib
import grp
import ipaddress
import math
import os
import pwd
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from types import MappingProxyType
from typing import Final

from watchd.config.model import WATCH_KEYS, Config, DaemonConfig, WatchConfig
from watchd.errors import ConfigError
from watchd.events import ALL_KINDS, KIND_LIST, Kind
from watchd.levels import LOG_LEVELS
from watchd.protocol import MAX_BATCH

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
_OCTAL_RE: Final = re.compile(r"(?:0o)?([0-7]{1,4})")
_MAX_ID: Final = 2**32 - 2  # (uid_t) -1 means "no change" to the kernel, so it is no id
# sun_path holds 108 bytes with the terminating NUL.
_MAX_SOCKET_PATH: Final = 107
# Each event held for `since` costs some 300-500 bytes (its line, its path, its record): 4 Mi of
# them is up to 2 GB. A larger history is more likely a typo than a plan, and would fail only
# later, when the events arrive, by the kernel's OOM killer.
MAX_REPLAY_BUFFER: Final = 4 * 1024 * 1024
# The journal keeps four segments: below this, one would hold few batches.
MIN_JOURNAL_BYTES: Final = 64 * 1024


def parse_config(text: str, path: str) -> Config:
    """Validate TOML text; path names the file in messages and becomes Config.path."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"invalid TOML: {e}") from e
    except RecursionError as e:
        raise ConfigError(path, "", "invalid TOML: values nested too deeply") from e
    r = _Reader(path)
    r.only_keys(doc, "", ("daemon", "watch", "forward"))
    daemon = _daemon(r, r.table(doc, "daemon"))
    watches = _watches(r, doc.get("watch", []))
    from watchd.config.forward import parse_forwards  # it reads with this module's _Reader

    forwards = parse_forwards(r, doc.get("forward", []), {w.name for w in watches})
    config = Config(path=path, daemon=daemon, watches=watches, forwards=forwards)
    state = daemon.state_directory
    watch = config.watching(state) if state else None
    if watch is not None:
        raise r.error("daemon.state_directory",
                      f"{show(state or '')} is inside the tree of watch {watch.name!r}: every "
                      "write of the journal would be reported as an event, and recorded again; "
                      "choose a directory outside every recursive watch")
    return config


def _type_name(value: object) -> str:
    """A TOML value's type as messages call it."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        return f"a string ({show(value)})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return "a date/time"
    return type(value).__name__


def show(value: str) -> str:
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
            raise self.error(key, f"must be an absolute path, got {show(path)}")
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
                key, f"unknown {kind} {show(value)}: no such {kind} on this system"
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
        raise r.error(key, f'expected an octal string such as "0660", got {show(value)}')
    mode = int(match.group(1), 8)
    if mode > 0o777:
        raise r.error(key, f"out of range: {value} (permission bits go up to 0777)")
    return mode


_HOSTNAME_RE: Final = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_LISTEN_EXAMPLE: Final = 'expected "HOST:PORT" such as "127.0.0.1:9311" or "[::1]:9311"'


def _listen_address(r: _Reader, value: object, key: str) -> tuple[str, int]:
    """An HTTP listening address, "HOST:PORT": an IPv4 address, a host name, or an IPv6
    address in brackets; the port 1 to 65535."""
    text = r.string(value, key)
    if "/" in text:
        raise r.error(key, f"{_LISTEN_EXAMPLE}, got {show(text)}: write the address alone, "
                           "without a scheme or path (the metrics are served at /metrics)")
    host, colon, port_text = text.rpartition(":")
    if not colon:
        raise r.error(key, f"{_LISTEN_EXAMPLE}, got {show(text)}: no port")
    if not (port_text.isascii() and port_text.isdecimal()) or not 0 < int(port_text) <= 65535:
        raise r.error(key, f"the port must be a number from 1 to 65535, got {show(port_text)} "
                           f"in {show(text)}")
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), int(port_text)
        except ValueError as e:
            raise r.error(key, f"{show(host[1:-1])} is not an IPv6 address") from e
    if not host:
        raise r.error(key, f"{_LISTEN_EXAMPLE}, got {show(text)}: no host; write 0.0.0.0 to "
                           "listen on every interface (anyone who reaches it sees every watch)")
    if ":" in host:
        raise r.error(key, f"{_LISTEN_EXAMPLE}, got {show(text)}: write an IPv6 address in "
                           "brackets")
    if host.replace(".", "").isdecimal():
        try:
            return str(ipaddress.IPv4Address(host)), int(port_text)
        except ValueError as e:
            raise r.error(key, f"{show(host)} is not an IPv4 address") from e
    if _HOSTNAME_RE.fullmatch(host) is None:
        raise r.error(key, f"{show(host)} is neither an IP address nor a host name; "
                           f"{_LISTEN_EXAMPLE}")
    return host, int(port_text)


# Keys of [daemon] that count events, with their most and what to do about a larger value.
_EVENT_COUNTS: Final[Mapping[str, tuple[int, str]]] = MappingProxyType({
    "replay_buffer": (MAX_REPLAY_BUFFER,
                      "choose a smaller history (each event held costs some 300-500 bytes)"),
    "max_batch": (MAX_BATCH, "larger frames save a client nothing and may pass its line limit"),
})


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
                    f"unknown log level {show(level)}; expected one of {', '.join(LOG_LEVELS)}",
                )
            values[key] = level
        elif key == "state_directory":
            # "" turns durable state off, even where systemd sets $STATE_DIRECTORY.
            values[key] = "" if value == "" else r.absolute_path(value, full)
        elif key == "journal_max_bytes":
            size = values[key] = r.positive_int(value, full)
            if size < MIN_JOURNAL_BYTES:
                raise r.error(full, f"{size} bytes is less than the least allowed "
                                    f"({MIN_JOURNAL_BYTES}); choose a larger journal")
        elif key == "metrics":
            values[key] = None if value == "" else _listen_address(r, value, full)
        elif key in ("watcher_timeout", "request_timeout", "journal_fsync_interval"):
            values[key] = r.positive_number(value, full)
        elif key in _EVENT_COUNTS:
            most, advice = _EVENT_COUNTS[key]
            count = values[key] = r.positive_int(value, full)
            if count > most:
                raise r.error(full, f"{count} events is more than the most allowed ({most}); "
                              + advice)
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
                f"duplicate name {show(watch.name)}, already used by watch[{first}];"
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
                f'unknown event kind {show(name)}; expected one of {KIND_LIST}, or "all"',
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
                f"patterns match a base name, which never contains '/'; got {show(pattern)}",
            )
        patterns.append(pattern)
    return tuple(patterns)


# How each key of a [[watch]] table but name and path is read: a new key of WatchConfig gets
# its line here (tests check that every key of WATCH_KEYS has one).
_WATCH_VALUES: Final[Mapping[str, Callable[[_Reader, object, str], object]]] = MappingProxyType({
    "recursive": _Reader.boolean,
    "events": _events,
    "include": _patterns,
    "exclude": _patterns,
    "allow_users": lambda r, value, key: r.identities(value, key, "user", _uid),
    "allow_groups": lambda r, value, key: r.identities(value, key, "group", _gid),
    "max_directories": _Reader.positive_int,
    "resync": _Reader.boolean,
})


def _watch(r: _Reader, table: Mapping[str, object], prefix: str) -> WatchConfig:
    r.where = ""
    if "name" not in table:
        raise r.error(f"{prefix}.name", "missing; every watch needs a name")
    name = r.string(table["name"], f"{prefix}.name")
    if _NAME_RE.fullmatch(name) is None:
        raise r.error(
            f"{prefix}.name",
            f"{show(name)} is not a valid name: use letters, digits, '_', '.' and '-' only",
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
        if key not in ("name", "path"):
            values[key] = _WATCH_VALUES[key](r, value, f"{prefix}.{key}")
    r.where = ""
    return WatchConfig(**values)  # type: ignore[arg-type]  # each value was checked above

