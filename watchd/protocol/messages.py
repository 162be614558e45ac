"""Messages, server -> client: replies to requests and the notices of a subscription."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from watchd.protocol.wire import (
    PROTOCOL_VERSION,
    ErrorCode,
    JsonScalar,
    ProtocolError,
    encode,
    loads,
    type_name,
)

# What this server understands beyond protocol v1's base, listed in hello's "features":
# "batch": a subscribe may ask for its events in frames ({"type":"events"}); "fields": it may
# ask for some members of each event only.
FEATURES: Final = ("batch", "fields")


def decode_message(line: bytes) -> dict[str, object]:
    """Decode one server -> client line; raises ProtocolError(BAD_JSON) on anything else."""
    obj = loads(line)
    if not isinstance(obj, dict):
        raise ProtocolError(
            ErrorCode.BAD_JSON, f"a message must be a JSON object, got {type_name(obj)}"
        )
    return obj


def hello(version: str, pid: int, instance: str, seq: int, *, durable: bool = False,
          features: Sequence[str] = FEATURES) -> bytes:
    """The greeting the server sends first on every connection; durable: whether the daemon
    keeps its instance, seqs and replay history across a restart; features: the extensions
    of protocol 1 it offers."""
    return encode(
        {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "server": "watchd",
            "version": version,
            "pid": pid,
            "instance": instance,
            "seq": seq,
            "durable": durable,
            "features": list(features),
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


def metrics(id: JsonScalar, view: str, text: str) -> bytes:
    """The reply to metrics: the view it was made for ("full" or "limited", as in status)
    and the Prometheus text exposition."""
    return encode({"type": "metrics", "id": id, "view": view, "text": text})


def overflow(sid: str, seq: int, reason: str, watch: str | None, resync: bool = False) -> bytes:
    """Events may have been lost before seq (reason: an OverflowReason value); resync: the
    differences follow as synthetic events, up to a `resynced` notice."""
    return encode(
        {"type": "overflow", "subscription": sid, "seq": seq, "reason": reason, "watch": watch,
         "resync": resync}
    )


def resynced(sid: str, seq: int, watch: str, changes: int, duration_ms: float) -> bytes:
    """The synthetic events of a resync of `watch` are all out (up to seq)."""
    return encode({"type": "resynced", "subscription": sid, "seq": seq, "watch": watch,
                   "changes": changes, "duration_ms": duration_ms})


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
