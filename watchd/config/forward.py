"""Reading the [[forward]] tables: where events are forwarded (watchd.forward)."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Collection, Mapping
from typing import Final
from urllib.parse import urlsplit

from watchd.config.model import FORWARD_KEYS, ForwardConfig
from watchd.config.parse import _events, _Reader, _type_name, show
from watchd.forward.subjects import template_problem
from watchd.forward.urls import shown

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
# JetStream stream names: no whitespace, '.', '*', '>' or path separators.
_STREAM_RE: Final = re.compile(r"[^\s.*>/\\]+")
TYPES: Final = ("nats",)
URL_SCHEMES: Final = ("nats", "tls")
# The forwarder publishes over a plain (or TLS) NATS connection of its own, not a WebSocket.
WEBSOCKET_SCHEMES: Final = ("ws", "wss")
EXTRA_HINT: Final = "pip install 'watchd[nats]'"
MIN_PING_INTERVAL_S: Final = 1.0


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def nats_installed() -> bool:
    """Whether the NATS client library can be imported."""
    return _importable("nats")


def parse_forwards(r: _Reader, value: object,
                   watches: Collection[str]) -> tuple[ForwardConfig, ...]:
    """The [[forward]] tables; `watches` are the names of the file's watches."""
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise r.error("forward",
                      f"expected an array of tables ([[forward]]), got {_type_name(value)}")
    out: list[ForwardConfig] = []
    first: dict[str, int] = {}
    for i, table in enumerate(value):
        forward = _forward(r, table, f"forward[{i}]", watches)
        if forward.name in first:
            raise r.error(f"forward[{i}].name",
                          f"duplicate name {show(forward.name)}, already used by "
                          f"forward[{first[forward.name]}]; every forward needs its own name")
        first[forward.name] = i
        out.append(forward)
    r.where = ""
    return tuple(out)


def _forward(r: _Reader, table: Mapping[str, object], prefix: str,
             watches: Collection[str]) -> ForwardConfig:
    r.where = ""
    if "name" not in table:
        raise r.error(f"{prefix}.name", "missing; every forward needs a name")
    name = r.string(table["name"], f"{prefix}.name")
    if _NAME_RE.fullmatch(name) is None:
        raise r.error(f"{prefix}.name", f"{show(name)} is not a valid name: use letters, "
                      "digits, '_', '.' and '-' only")
    r.where = f" (in forward {name!r})"
    r.only_keys(table, f"{prefix}.", FORWARD_KEYS)
    if "type" not in table:
        raise r.error(f"{prefix}.type", f"missing; the types are {', '.join(TYPES)}")
    kind = r.string(table["type"], f"{prefix}.type")
    if kind not in TYPES:
        raise r.error(f"{prefix}.type",
                      f"unknown type {show(kind)}; the types are {', '.join(TYPES)}")
    if not nats_installed():
        raise r.error(prefix, "forwarding to NATS needs the NATS client library, which is "
                      f"not installed: {EXTRA_HINT}")
    if "url" not in table:
        raise r.error(f"{prefix}.url", "missing; give the server's URL, as in "
                      "\"nats://nats.example:4222\", or a list of them")
    values: dict[str, object] = {"name": name, "urls": _urls(r, table["url"], f"{prefix}.url")}
    for key, item in table.items():
        full = f"{prefix}.{key}"
        if key in ("name", "type", "url"):
            continue
        if key == "subject":
            subject = r.string(item, full)
            problem = template_problem(subject)
            if problem is not None:
                raise r.error(full, f"{show(subject)} {problem}")
            values[key] = subject
        elif key == "stream":
            stream = r.string(item, full)
            if _STREAM_RE.fullmatch(stream) is None:
                raise r.error(full, f"{show(stream)} is not a valid stream name: no "
                              "whitespace, '.', '*', '>', '/' or '\\'")
            values[key] = stream
        elif key == "watches":
            values[key] = _watch_names(r, item, full, watches)
        elif key == "events":
            values[key] = _events(r, item, full)
        elif key == "create_stream":
            values[key] = r.boolean(item, full)
        elif key == "ping_interval":
            values[key] = _ping_interval(r, item, full)
        elif key == "credentials":
            path = r.absolute_path(item, full)
            if not os.access(path, os.R_OK):
                raise r.error(full, f"cannot read the credentials file {show(path)}")
            if not _importable("nkeys"):
                raise r.error(full, "a credentials file needs the nkeys library too, which "
                              "is not installed: pip install nkeys (or use token or "
                              "user/password)")
            values[key] = path
        else:  # token, user, password
            values[key] = r.string(item, full)
    _check_auth(r, values, prefix)
    r.where = ""
    return ForwardConfig(**values)  # type: ignore[arg-type]  # each value was checked above


def _ping_interval(r: _Reader, value: object, key: str) -> float:
    seconds = r.positive_number(value, key)
    # Shorter, the forwarder would PING on every tick and give up a connection whose server
    # merely took a moment to answer: connected only between the failures.
    if seconds < MIN_PING_INTERVAL_S:
        raise r.error(key, f"must be at least {MIN_PING_INTERVAL_S:g} s, got {seconds:g}")
    return seconds


def _urls(r: _Reader, value: object, key: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else r.array(value, key, "URLs")
    if not items:
        raise r.error(key, "must not be empty; give at least one server")
    urls = []
    for i, item in enumerate(items):
        where = key if isinstance(value, str) else f"{key}[{i}]"
        url = r.string(item, where)
        # A URL may hold a password: it is never part of a message (see shown).
        seen = show(shown(url, "***@"))
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  # raises ValueError on a bad port
        except ValueError as e:
            # The parser's words quote the part it failed on, which may be the password.
            # (The client library takes the URL's user and password as written, undecoded.)
            why = (" (check its port; a password holding '/', '?' or '#' goes in the "
                   "password key, not in the URL)") if "@" in url else f": {e}"
            raise r.error(where, f"{seen} is not a valid URL{why}; expected "
                          "nats://[USER:PASSWORD@]HOST:PORT") from None
        if parts.scheme in WEBSOCKET_SCHEMES:
            raise r.error(where, f"{seen}: WebSocket URLs are not supported; give the "
                          "server's NATS client port, as nats://HOST:PORT or tls://HOST:PORT")
        if parts.scheme not in URL_SCHEMES or not parts.hostname:
            raise r.error(where, f"{seen} is not a NATS server URL; expected "
                          "nats://HOST:PORT (or tls://HOST:PORT)")
        urls.append(url)
    return tuple(urls)


def _watch_names(r: _Reader, value: object, key: str, watches: Collection[str]) -> tuple[str, ...]:
    items = r.array(value, key, "watch names")
    if not items:
        raise r.error(key, "must not be empty; leave it out to forward every watch")
    names = []
    for i, item in enumerate(items):
        name = r.string(item, f"{key}[{i}]")
        if name not in watches:
            raise r.error(f"{key}[{i}]", f"no watch is named {show(name)}")
        names.append(name)
    return tuple(names)


def _check_auth(r: _Reader, values: Mapping[str, object], prefix: str) -> None:
    given = [k for k in ("credentials", "token", "user") if k in values]
    if len(given) > 1:
        raise r.error(f"{prefix}.{given[1]}", f"use one of credentials, token or "
                      f"user/password, not {' and '.join(given)}")
    if ("user" in values) != ("password" in values):
        missing = "password" if "user" in values else "user"
        raise r.error(f"{prefix}.{missing}", "missing; user and password go together")
