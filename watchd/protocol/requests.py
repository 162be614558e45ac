"""Requests, client -> server: decoded and validated for the daemon, encoded for clients."""

from __future__ import annotations

import math
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, TypeGuard

from watchd.events import KIND_LIST, Kind
from watchd.protocol.event_lines import ALWAYS_MEMBERS, EVENT_MEMBERS
from watchd.protocol.wire import (
    ErrorCode,
    JsonScalar,
    ProtocolError,
    encode,
    loads,
    show,
    type_name,
)


@dataclass(frozen=True, slots=True)
class Ping:
    """{"op":"ping"}."""

    id: JsonScalar = None


@dataclass(frozen=True, slots=True)
class Status:
    """{"op":"status"}."""

    id: JsonScalar = None


@dataclass(frozen=True, slots=True)
class Metrics:
    """{"op":"metrics"}: the Prometheus text exposition, as the peer may read it."""

    id: JsonScalar = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    """{"op":"subscribe"} with its filters; None means the filter was absent (matches all)."""

    id: JsonScalar = None
    watch: tuple[str, ...] | None = None
    events: frozenset[Kind] | None = None
    paths: tuple[str, ...] | None = None  # absolute and normalised
    glob: tuple[str, ...] | None = None
    since: int | None = None
    instance: str | None = None
    batch: bool = False  # events in frames ({"type":"events"}) instead of one line each
    # The event members wanted (see event_lines.EVENT_MEMBERS); None: all of them.
    fields: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """{"op":"unsubscribe","subscription":sid}."""

    id: JsonScalar
    subscription: str


Request = Ping | Status | Metrics | Subscribe | Unsubscribe

_MEMBER_LIST: Final = ", ".join(EVENT_MEMBERS)
_ALWAYS_LIST: Final = ", ".join(m for m in EVENT_MEMBERS if m in ALWAYS_MEMBERS)
_OPS: Final = ("ping", "status", "metrics", "subscribe", "unsubscribe")
_FIELDS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "ping": frozenset({"op", "id"}),
        "status": frozenset({"op", "id"}),
        "metrics": frozenset({"op", "id"}),
        "subscribe": frozenset(
            {
                "op", "id", "watch", "events", "paths", "glob", "since", "instance", "batch",
                "fields",
            }
        ),
        "unsubscribe": frozenset({"op", "id", "subscription"}),
    }
)



def _is_scalar(value: object) -> TypeGuard[JsonScalar]:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int | bool)


class _Fields:
    """Reads the fields of one request object, raising BAD_REQUEST that carry the request's id."""

    __slots__ = ("id", "obj")

    def __init__(self, obj: dict[str, object], id: JsonScalar) -> None:
        self.obj = obj
        self.id = id

    def bad(self, message: str) -> ProtocolError:
        return ProtocolError(ErrorCode.BAD_REQUEST, message, self.id)

    def string(self, name: str, *, required: bool = False) -> str | None:
        if name not in self.obj:
            if required:
                raise self.bad(f'"{name}": missing; expected a string')
            return None
        value = self.obj[name]
        if not isinstance(value, str):
            raise self.bad(f'"{name}": expected a string, got {type_name(value)}')
        if not value:
            raise self.bad(f'"{name}": must not be empty')
        return value

    def strings(self, name: str, *, single_ok: bool = False,
                absent: str = "match everything") -> tuple[str, ...] | None:
        if name not in self.obj:
            return None
        value = self.obj[name]
        if single_ok and isinstance(value, str):
            value = [value]
        expected = "a string or a list of strings" if single_ok else "a list of strings"
        if not isinstance(value, list):
            raise self.bad(f'"{name}": expected {expected}, got {type_name(value)}')
        if not value:
            raise self.bad(f'"{name}": must not be empty; leave it out to {absent}')
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.bad(f'"{name}"[{i}]: expected a string, got {type_name(item)}')
        return tuple(value)

    def kinds(self, name: str) -> frozenset[Kind] | None:
        items = self.strings(name)
        if items is None:
            return None
        kinds = set()
        for i, item in enumerate(items):
            try:
                kinds.add(Kind(item))
            except ValueError as e:
                raise self.bad(
                    f'"{name}"[{i}]: unknown event kind {show(item)}; expected one of {KIND_LIST}'
                ) from e
        return frozenset(kinds)

    def members(self, name: str) -> frozenset[str] | None:
        """Event members (a name listed twice counts once, as in the other lists); None when
        absent or naming them all (the same events)."""
        items = self.strings(name, absent="get every member")
        if items is None:
            return None
        for i, item in enumerate(items):
            if item in ("type", "subscription"):
                raise self.bad(f'"{name}"[{i}]: {show(item)} is not an event member: every '
                               f"event line carries it; expected some of {_MEMBER_LIST}")
            if item not in EVENT_MEMBERS:
                raise self.bad(f'"{name}"[{i}]: unknown event member {show(item)}; expected '
                               f"some of {_MEMBER_LIST}")
        if ALWAYS_MEMBERS.isdisjoint(items):
            raise self.bad(f'"{name}": name at least one member every event has '
                           f'({_ALWAYS_LIST}); "synthetic" and "src_path" are on some only')
        wanted = frozenset(items)
        return None if len(wanted) == len(EVENT_MEMBERS) else wanted

    def paths(self, name: str) -> tuple[str, ...] | None:
        items = self.strings(name)
        if items is None:
            return None
        out = []
        for i, item in enumerate(items):
            if not item.startswith("/"):
                raise self.bad(f'"{name}"[{i}]: must be an absolute path, got {show(item)}')
            if "\x00" in item:
                raise self.bad(f'"{name}"[{i}]: a path cannot contain NUL')
            out.append(normalise_path(item))
        return tuple(out)

    def boolean(self, name: str) -> bool:
        value = self.obj.get(name, False)
        if not isinstance(value, bool):
            raise self.bad(f'"{name}": expected true or false, got {type_name(value)}')
        return value

    def seq(self, name: str) -> int | None:
        if name not in self.obj:
            return None
        value = self.obj[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(f'"{name}": expected an integer seq, got {type_name(value)}')
        if value < 0:
            raise self.bad(f'"{name}": must be 0 or more, got {value}')
        return value


def normalise_path(path: str) -> str:
    """An absolute path without ".", "..", doubled or trailing slashes."""
    norm = posixpath.normpath(path)
    # POSIX lets "//" mean something else at the start; on Linux it is "/" like any other.
    return "/" + norm.lstrip("/")


def _request_id(obj: dict[str, object]) -> JsonScalar:
    value = obj.get("id")
    if _is_scalar(value):
        return value
    problem = "a number too large for a double" if isinstance(value, float) else type_name(value)
    raise ProtocolError(
        ErrorCode.BAD_REQUEST,
        f'"id": expected a JSON scalar (string, number, boolean or null), got {problem}',
    )


def decode_request(line: bytes) -> Request:
    """Decode and validate one request line (without its newline); raises ProtocolError."""
    obj = loads(line)
    if not isinstance(obj, dict):
        raise ProtocolError(
            ErrorCode.BAD_JSON, f"a request must be a JSON object, got {type_name(obj)}"
        )
    req_id = _request_id(obj)
    fields = _Fields(obj, req_id)
    op = fields.string("op", required=True) or ""
    if op not in _FIELDS:
        raise ProtocolError(
            ErrorCode.UNKNOWN_OP,
            f'"op": unknown operation {show(op)}; expected one of {", ".join(_OPS)}',
            req_id,
        )
    unknown = sorted(set(obj) - _FIELDS[op])
    if unknown:
        names = ", ".join(show(k) for k in unknown)
        allowed = ", ".join(f'"{k}"' for k in sorted(_FIELDS[op]))
        raise fields.bad(f'unknown field {names} for "{op}"; allowed: {allowed}')
    if op == "ping":
        return Ping(req_id)
    if op == "status":
        return Status(req_id)
    if op == "metrics":
        return Metrics(req_id)
    if op == "unsubscribe":
        sid = fields.string("subscription", required=True)
        assert sid is not None  # required=True raised otherwise
        return Unsubscribe(req_id, sid)
    return Subscribe(
        id=req_id,
        watch=fields.strings("watch", single_ok=True),
        events=fields.kinds("events"),
        paths=fields.paths("paths"),
        glob=fields.strings("glob"),
        since=fields.seq("since"),
        instance=fields.string("instance"),
        batch=fields.boolean("batch"),
        fields=fields.members("fields"),
    )


def encode_request(request: Request) -> bytes:
    """The wire line of a request (the inverse of decode_request); absent filters are left out."""
    obj: dict[str, object] = {}
    match request:
        case Ping():
            obj["op"] = "ping"
        case Status():
            obj["op"] = "status"
        case Metrics():
            obj["op"] = "metrics"
        case Unsubscribe():
            obj["op"] = "unsubscribe"
            obj["subscription"] = request.subscription
        case Subscribe():
            return encode_subscribe(
                request.id,
                watch=request.watch,
                events=None if request.events is None else sorted(request.events),
                paths=request.paths,
                glob=request.glob,
                since=request.since,
                instance=request.instance,
                batch=request.batch or None,
                fields=None if request.fields is None else [
                    m for m in EVENT_MEMBERS if m in request.fields
                ],
            )
    if request.id is not None:
        obj["id"] = request.id
    return encode(obj)


def encode_subscribe(
    id: JsonScalar,
    *,
    watch: str | Sequence[str] | None = None,
    events: Sequence[str] | None = None,
    paths: Sequence[str] | None = None,
    glob: Sequence[str] | None = None,
    since: int | None = None,
    instance: str | None = None,
    batch: bool | None = None,
    fields: Sequence[str] | None = None,
) -> bytes:
    """A subscribe line: op and id first, then the filters given (None: left out).

    Lists keep the order given, so that a client can send its caller's lists as they are and
    the daemon's errors ("events"[1]: unknown event kind ...) point into them.
    """
    obj: dict[str, object] = {"op": "subscribe", "id": id}
    filters: dict[str, object] = {
        "watch": watch,
        "events": events,
        "paths": paths,
        "glob": glob,
        "since": since,
        "instance": instance,
        "batch": batch,
        "fields": fields,
    }
    for name, value in filters.items():
        if value is not None:
            # Written as given otherwise, wrong types included: the daemon validates.
            obj[name] = list(value) if isinstance(value, tuple) else value
    return encode(obj)
