"""What every line of the wire protocol shares: JSON, the version, error codes and errors."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii
from typing import Final

from watchd.errors import WatchdError

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
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    SINCE_EXPIRED = "since_expired"
    LINE_TOO_LONG = "line_too_long"
    REQUEST_TIMEOUT = "request_timeout"
    TOO_MANY_CLIENTS = "too_many_clients"


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


def encode(obj: Mapping[str, object]) -> bytes:
    """One wire line: compact ASCII JSON and a newline."""
    # ensure_ascii turns surrogate-escaped (non-UTF-8) names into \udcXX escapes: still valid JSON.
    return (
        json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False) + "\n"
    ).encode("ascii")


def error(code: ErrorCode, message: str, id: JsonScalar = None, **extra: object) -> bytes:
    """An error message; too_many_clients answers no request, so it alone carries no id."""
    obj: dict[str, object] = {"type": "error"}
    if code is not ErrorCode.TOO_MANY_CLIENTS:
        obj["id"] = id
    obj["code"] = code.value
    obj["message"] = message
    obj.update(extra)
    return encode(obj)


def _reject_constant(name: str) -> object:
    # NaN and Infinity are Python extensions, not JSON; refusing them keeps replies valid JSON.
    raise ValueError(f"{name} is not valid JSON")


def loads(line: bytes) -> object:
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


def type_name(value: object) -> str:
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


def show(value: str) -> str:
    """A string value quoted for a message, cut short when long."""
    shown = encode_basestring_ascii(value)
    return shown if len(shown) <= 60 else shown[:56] + '..."'
