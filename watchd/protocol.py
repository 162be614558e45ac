"""The line-delimited JSON wire protocol: framing, request decoding, message encoding; no I/O."""

from __future__ import annotations

import enum
import json
import math
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from types import MappingProxyType
from typing import Final, TypeGuard

from watchd.errors import WatchdError
from watchd.events import Kind

PROTOCOL_VERSION: Final = 1

# A JSON scalar: what a request's "id" may be, echoed verbatim in the reply.
JsonScalar = str | int | float | bool | None


class ErrorCode(enum.StrEnum):
    """The "code" of an error message, exactly as on the wire."""

    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_OP = "unknown_op"
    UNKNOWN_WATCH = "unknown_watch"
    UNKNOWN_SUBSCRIPTION = "unknown_subscription"
    FORBIDDEN = "forbidden"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    SINCE_EXPIRED = "since_expired"
    LINE_TOO_LONG = "line_too_long"
    REQUEST_TIMEOUT = "request_timeout"
    TOO_MANY_CLIENTS = "too_many_clients"


class OverflowReason(enum.StrEnum):
    """Why an "overflow" notice was sent."""

    KERNEL_QUEUE = "kernel_queue"
    WATCHER_RESTART = "watcher_restart"
    WATCH_LIMIT = "watch_limit"


class LostReason(enum.StrEnum):
    """Why a "watch_lost" notice was sent."""

    DELETED = "deleted"
    UNMOUNTED = "unmounted"
    REMOVED = "removed"
    FORBIDDEN = "forbidden"


class ProtocolError(WatchdError):
    """A request or a line the server refuses; becomes an "error" message on the wire."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        id: JsonScalar = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.id = id
        self.extra: dict[str, object] = dict(extra or {})
        super().__init__(message)

    def reply(self) -> bytes:
        """This error as one wire line."""
        return error(self.code, self.message, self.id, **self.extra)


class LineTooLong(ProtocolError):
    """A line past the limit; `lines` holds the complete lines that came before it."""

    def __init__(self, limit: int, lines: list[bytes]) -> None:
        super().__init__(
            ErrorCode.LINE_TOO_LONG,
            f"line longer than {limit} bytes (daemon.max_line_bytes); closing the connection",
        )
        self.lines = lines


# --- requests -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    """{"op":"ping"}."""

    id: JsonScalar = None


@dataclass(frozen=True, slots=True)
class Status:
    """{"op":"status"}."""

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


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """{"op":"unsubscribe","subscription":sid}."""

    id: JsonScalar
    subscription: str


Request = Ping | Status | Subscribe | Unsubscribe

_OPS: Final = ("ping", "status", "subscribe", "unsubscribe")
_FIELDS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "ping": frozenset({"op", "id"}),
        "status": frozenset({"op", "id"}),
        "subscribe": frozenset(
            {"op", "id", "watch", "events", "paths", "glob", "since", "instance"}
        ),
        "unsubscribe": frozenset({"op", "id", "subscription"}),
    }
)
_KIND_LIST: Final = ", ".join(k.value for k in Kind)


def _reject_constant(name: str) -> object:
    # NaN and Infinity are Python extensions, not JSON; refusing them keeps replies valid JSON.
    raise ValueError(f"{name} is not valid JSON")


def _loads(line: bytes) -> object:
    """Parse one line as JSON; ProtocolError(BAD_JSON) on anything that is not."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(
            ErrorCode.BAD_JSON, f"line is not UTF-8 (byte {e.start}); send UTF-8 JSON"
        ) from e
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ProtocolError(
            ErrorCode.BAD_JSON, f"not valid JSON: {e.msg} at column {e.colno}"
        ) from e
    except (ValueError, RecursionError) as e:
        # ValueError: a constant refused above or an integer with too many digits;
        # RecursionError: nesting deeper than the parser can follow.
        raise ProtocolError(ErrorCode.BAD_JSON, f"not valid JSON: {e}") from e


def _type_name(value: object) -> str:
    """How a JSON value is called in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _show(value: str) -> str:
    """A string value quoted for a message, cut short when long."""
    shown = encode_basestring_ascii(value)
    return shown if len(shown) <= 60 else shown[:56] + '..."'


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
            raise self.bad(f'"{name}": expected a string, got {_type_name(value)}')
        if not value:
            raise self.bad(f'"{name}": must not be empty')
        return value

    def strings(self, name: str, *, single_ok: bool = False) -> tuple[str, ...] | None:
        if name not in self.obj:
            return None
        value = self.obj[name]
        if single_ok and isinstance(value, str):
            value = [value]
        expected = "a string or a list of strings" if single_ok else "a list of strings"
        if not isinstance(value, list):
            raise self.bad(f'"{name}": expected {expected}, got {_type_name(value)}')
        if not value:
            raise self.bad(f'"{name}": must not be empty; leave it out to match everything')
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.bad(f'"{name}"[{i}]: expected a string, got {_type_name(item)}')
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
                    f'"{name}"[{i}]: unknown event kind {_show(item)}; expected one of {_KIND_LIST}'
                ) from e
        return frozenset(kinds)

    def paths(self, name: str) -> tuple[str, ...] | None:
        items = self.strings(name)
        if items is None:
            return None
        out = []
        for i, item in enumerate(items):
            if not item.startswith("/"):
                raise self.bad(f'"{name}"[{i}]: must be an absolute path, got {_show(item)}')
            if "\x00" in item:
                raise self.bad(f'"{name}"[{i}]: a path cannot contain NUL')
            out.append(normalise_path(item))
        return tuple(out)

    def seq(self, name: str) -> int | None:
        if name not in self.obj:
            return None
        value = self.obj[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(f'"{name}": expected an integer seq, got {_type_name(value)}')
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
    problem = "a number too large for a double" if isinstance(value, float) else _type_name(value)
    raise ProtocolError(
        ErrorCode.BAD_REQUEST,
        f'"id": expected a JSON scalar (string, number, boolean or null), got {problem}',
    )


def decode_request(line: bytes) -> Request:
    """Decode and validate one request line (without its newline); raises ProtocolError."""
    obj = _loads(line)
    if not isinstance(obj, dict):
        raise ProtocolError(
            ErrorCode.BAD_JSON, f"a request must be a JSON object, got {_type_name(obj)}"
        )
    req_id = _request_id(obj)
    fields = _Fields(obj, req_id)
    op = fields.string("op", required=True) or ""
    if op not in _FIELDS:
        raise ProtocolError(
            ErrorCode.UNKNOWN_OP,
            f'"op": unknown operation {_show(op)}; expected one of {", ".join(_OPS)}',
            req_id,
        )
    unknown = sorted(set(obj) - _FIELDS[op])
    if unknown:
        names = ", ".join(_show(k) for k in unknown)
        allowed = ", ".join(f'"{k}"' for k in sorted(_FIELDS[op]))
        raise fields.bad(f'unknown field {names} for "{op}"; allowed: {allowed}')
    if op == "ping":
        return Ping(req_id)
    if op == "status":
        return Status(req_id)
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
    )


def encode_request(request: Request) -> bytes:
    """The wire line of a request (the inverse of decode_request); absent filters are left out."""
    obj: dict[str, object] = {}
    match request:
        case Ping():
            obj["op"] = "ping"
        case Status():
            obj["op"] = "status"
        case Unsubscribe():
            obj["op"] = "unsubscribe"
            obj["subscription"] = request.subscription
        case Subscribe():
            obj["op"] = "subscribe"
            optional: dict[str, object] = {
                "watch": None if request.watch is None else list(request.watch),
                "events": None if request.events is None else sorted(request.events),
                "paths": None if request.paths is None else list(request.paths),
                "glob": None if request.glob is None else list(request.glob),
                "since": request.since,
                "instance": request.instance,
            }
            obj.update((k, v) for k, v in optional.items() if v is not None)
    if request.id is not None:
        obj["id"] = request.id
    return encode(obj)


# --- server -> client messages --------------------------------------------------------------------


def encode(obj: Mapping[str, object]) -> bytes:
    """One wire line: compact ASCII JSON and a newline."""
    # ensure_ascii turns surrogate-escaped (non-UTF-8) names into \udcXX escapes: still valid JSON.
    return (
        json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False) + "\n"
    ).encode("ascii")


def decode_message(line: bytes) -> dict[str, object]:
    """Decode one server -> client line; raises ProtocolError(BAD_JSON) on anything else."""
    obj = _loads(line)
    if not isinstance(obj, dict):
        raise ProtocolError(
            ErrorCode.BAD_JSON, f"a message must be a JSON object, got {_type_name(obj)}"
        )
    return obj


def hello(version: str, pid: int, instance: str, seq: int) -> bytes:
    """The greeting the server sends first on every connection."""
    return encode(
        {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "server": "watchd",
            "version": version,
            "pid": pid,
            "instance": instance,
            "seq": seq,
        }
    )


def pong(id: JsonScalar) -> bytes:
    """The reply to ping."""
    return encode({"type": "pong", "id": id})


def subscribed(id: JsonScalar, sid: str, seq: int) -> bytes:
    """The reply to a subscribe that succeeded; seq is the last seq assigned."""
    return encode({"type": "subscribed", "id": id, "subscription": sid, "seq": seq})


def unsubscribed(id: JsonScalar, sid: str) -> bytes:
    """The reply to an unsubscribe that succeeded."""
    return encode({"type": "unsubscribed", "id": id, "subscription": sid})


def status(id: JsonScalar, fields: Mapping[str, object]) -> bytes:
    """The reply to status: type and id, then the fields in the order given."""
    return encode({"type": "status", "id": id, **fields})


def error(code: ErrorCode, message: str, id: JsonScalar = None, **extra: object) -> bytes:
    """An error message; too_many_clients answers no request, so it alone carries no id."""
    obj: dict[str, object] = {"type": "error"}
    if code is not ErrorCode.TOO_MANY_CLIENTS:
        obj["id"] = id
    obj["code"] = code.value
    obj["message"] = message
    obj.update(extra)
    return encode(obj)


def overflow(sid: str, seq: int, reason: str, watch: str | None) -> bytes:
    """Events may have been lost before seq (reason: an OverflowReason value)."""
    return encode(
        {"type": "overflow", "subscription": sid, "seq": seq, "reason": reason, "watch": watch}
    )


def dropped(sid: str, count: int, first_seq: int, last_seq: int) -> bytes:
    """count events for a slow reader (seq first_seq..last_seq) were discarded."""
    return encode(
        {
            "type": "dropped",
            "subscription": sid,
            "count": count,
            "first_seq": first_seq,
            "last_seq": last_seq,
        }
    )


def watch_lost(sid: str, watch: str, path: str, reason: str) -> bytes:
    """The watch's root went away (reason: a LostReason value)."""
    return encode(
        {"type": "watch_lost", "subscription": sid, "watch": watch, "path": path, "reason": reason}
    )


def watch_restored(sid: str, watch: str, path: str) -> bytes:
    """The watch's root is back and watched again."""
    return encode({"type": "watch_restored", "subscription": sid, "watch": watch, "path": path})


def watch_degraded(sid: str, watch: str, unwatched: int, reason: str) -> bytes:
    """Directories of the watch are left unwatched (reason: the limit reached)."""
    return encode({"type": "watch_degraded", "subscription": sid, "watch": watch,
                   "unwatched": unwatched, "reason": reason})


# --- events: the hot path -------------------------------------------------------------------------

EVENT_HEAD: Final = b'{"type":"event","subscription":"'
IN_ISDIR: Final = 0x40000000

# The bits named in an event's "mask", in ascending order (kernel ABI values).
_MASK_NAMES: Final = (
    (0x00000001, "IN_ACCESS"),
    (0x00000002, "IN_MODIFY"),
    (0x00000004, "IN_ATTRIB"),
    (0x00000008, "IN_CLOSE_WRITE"),
    (0x00000010, "IN_CLOSE_NOWRITE"),
    (0x00000020, "IN_OPEN"),
    (0x00000040, "IN_MOVED_FROM"),
    (0x00000080, "IN_MOVED_TO"),
    (0x00000100, "IN_CREATE"),
    (0x00000200, "IN_DELETE"),
    (0x00000400, "IN_DELETE_SELF"),
    (0x00000800, "IN_MOVE_SELF"),
    (0x00002000, "IN_UNMOUNT"),
    (0x00004000, "IN_Q_OVERFLOW"),
    (0x00008000, "IN_IGNORED"),
    (IN_ISDIR, "IN_ISDIR"),
)
_KNOWN_BITS: Final = sum(bit for bit, _ in _MASK_NAMES)


def mask_names(mask: int) -> list[str]:
    """The IN_* names of the bits set in mask, in ascending bit order (unknown bits left out)."""
    return [name for bit, name in _MASK_NAMES if mask & bit]


def _mask_fragment(mask: int) -> str:
    """The JSON of the "is_dir" and "mask" members for one mask value."""
    is_dir = "true" if mask & IN_ISDIR else "false"
    names = ",".join(f'"{name}"' for name in mask_names(mask))
    return f'"is_dir":{is_dir},"mask":[{names}]'


# Cached event fragments: far more than watches times the masks a watch produces.
_FRAGMENTS_MAX: Final = 4096


def _time_json(time: float) -> str:
    # Microseconds are what the clock is good for; fewer digits on the wire.
    return repr(round(float(time), 6))


def event_tail(  # noqa: PLR0917 -- positional on the hot path: one call per event
    seq: int,
    time: float,
    watch_json: str,
    kind: str,
    path: str,
    mask: int,
    cookie: int,
    src_path: str | None,
) -> bytes:
    """An event line after its sid; watch_json is the name as a JSON string literal (quoted).

    A whole line is EVENT_HEAD + sid + this. EventEncoder.tail does the same with caches.
    """
    src = "" if src_path is None else ',"src_path":' + encode_basestring_ascii(src_path)
    return (
        f'","seq":{seq},"time":{_time_json(time)},"watch":{watch_json},"kind":"{kind}",'
        f'"path":{encode_basestring_ascii(path)},{_mask_fragment(mask)},"cookie":{cookie}{src}}}\n'
    ).encode("ascii")


class EventEncoder:
    """Serializes events once for every subscriber, caching what repeats.

    An event line is the same text around three values of its own (seq, path, cookie). What
    depends on the watch and the mask (kind, is_dir, mask) is formatted once per pair and kept;
    the time once per watcher read, which its events share (formatting the float alone took
    longer than all the rest together); and the two joined once per read and mask, so that an
    event costs one small f-string.
    """

    __slots__ = ("_fragments", "_read", "_time", "_time_text", "_watch")

    def __init__(self) -> None:
        # (watch, mask) -> (text from "watch" to the path's opening, text from after the path
        # to the cookie's value)
        self._fragments: dict[tuple[str, int], tuple[str, str]] = {}
        self._time = math.nan  # equal to no time: the first event formats its own
        self._time_text = ""
        self._watch = ""
        # mask -> the fragments of the current read's watch, the first with the time before it
        self._read: dict[int, tuple[str, str]] = {}

    def tail(  # noqa: PLR0917 -- positional on the hot path: one call per event
        self,
        seq: int,
        time: float,
        watch: str,
        kind: str,
        path: str,
        mask: int,
        cookie: int,
        src_path: str | None,
    ) -> bytes:
        """An event line after its sid (watch is the plain name); see event_tail."""
        if time != self._time or watch != self._watch:
            if time != self._time:
                self._time = time
                self._time_text = _time_json(time)
            self._watch = watch
            self._read = {}
        # Only the named bits matter, which also bounds the caches.
        mask &= _KNOWN_BITS
        parts = self._read.get(mask)
        if parts is None:
            before, after = self._fragment(watch, kind, mask)
            parts = self._read[mask] = (f',"time":{self._time_text}{before}', after)
        before, after = parts
        if src_path is None:
            line = f'","seq":{seq}{before}{encode_basestring_ascii(path)}{after}{cookie}}}\n'
            return line.encode("ascii")
        return (
            f'","seq":{seq}{before}{encode_basestring_ascii(path)}{after}{cookie},'
            f'"src_path":{encode_basestring_ascii(src_path)}}}\n'
        ).encode("ascii")

    def _fragment(self, watch: str, kind: str, mask: int) -> tuple[str, str]:
        parts = self._fragments.get((watch, mask))
        if parts is None:
            if len(self._fragments) >= _FRAGMENTS_MAX:
                self._fragments.clear()  # watches renamed by many reloads: start afresh
            parts = self._fragments[watch, mask] = (
                f',"watch":{encode_basestring_ascii(watch)},"kind":"{kind}","path":',
                f',{_mask_fragment(mask)},"cookie":',
            )
        return parts


def event_line(sid: str, tail: bytes) -> bytes:
    """A whole event line for one subscription (sids are ASCII tokens that need no escaping)."""
    return EVENT_HEAD + sid.encode("ascii") + tail


# --- framing --------------------------------------------------------------------------------------


class LineFramer:
    """Splits a byte stream into lines, refusing any line longer than max_line_bytes."""

    __slots__ = ("_broken", "_limit", "_parts", "_size")

    def __init__(self, max_line_bytes: int) -> None:
        self._limit = max_line_bytes
        # The unfinished line as a list of chunks: joined once when its newline arrives, so a
        # line that trickles in byte by byte costs linear, not quadratic, copying.
        self._parts: list[bytes] = []
        self._size = 0
        self._broken = False

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished line held so far."""
        return self._size

    def feed(self, data: bytes) -> list[bytes]:
        """The lines completed by data, without "\\n" or a trailing "\\r"; raises LineTooLong.

        The limit counts the bytes before the newline. After LineTooLong the framer refuses all
        input: the connection is to be closed.
        """
        if self._broken:
            raise LineTooLong(self._limit, [])
        lines: list[bytes] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            piece = data[start:end]
            if self._parts:
                self._parts.append(piece)
                size = self._size + len(piece)
                line = b"".join(self._parts) if size <= self._limit else b""
                self._parts.clear()
                self._size = 0
            else:
                size = len(piece)
                line = piece
            if size > self._limit:
                self._broken = True
                raise LineTooLong(self._limit, lines)
            lines.append(line[:-1] if line.endswith(b"\r") else line)
            start = end + 1
        if start < len(data):
            rest = data[start:]
            self._size += len(rest)
            if self._size > self._limit:
                self._broken = True
                self._parts.clear()
                self._size = 0
                raise LineTooLong(self._limit, lines)
            self._parts.append(rest)
        return lines


__all__ = [
    "EVENT_HEAD",
    "IN_ISDIR",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "EventEncoder",
    "JsonScalar",
    "LineFramer",
    "LineTooLong",
    "LostReason",
    "OverflowReason",
    "Ping",
    "ProtocolError",
    "Request",
    "Status",
    "Subscribe",
    "Unsubscribe",
    "decode_message",
    "decode_request",
    "dropped",
    "encode",
    "encode_request",
    "error",
    "event_line",
    "event_tail",
    "hello",
    "mask_names",
    "normalise_path",
    "overflow",
    "pong",
    "status",
    "subscribed",
    "unsubscribed",
    "watch_lost",
    "watch_restored",
]
