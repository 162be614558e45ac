"""The line-delimited JSON wire protocol: framing, request decoding, message encoding; no I/O.

wire holds what every line shares (JSON, the version, error codes); requests the client's lines,
messages the server's replies and notices, event_lines the events and their frames (the hot
path), framing the
cutting of a byte stream into lines. Users import from here.
"""

from watchd.protocol.event_lines import (
    DEFAULT_MAX_BATCH,
    EVENT_HEAD,
    FRAME_END,
    MAX_BATCH,
    EventEncoder,
    event_prefix,
    frame_body,
    frame_head,
    frames,
    mask_names,
)
from watchd.protocol.framing import LineFramer, LineTooLong
from watchd.protocol.messages import (
    FEATURES,
    decode_message,
    dropped,
    hello,
    overflow,
    pong,
    resynced,
    status,
    subscribed,
    unsubscribed,
    watch_degraded,
    watch_lost,
    watch_restored,
)
from watchd.protocol.requests import (
    Ping,
    Request,
    Status,
    Subscribe,
    Unsubscribe,
    decode_request,
    encode_request,
    encode_subscribe,
    normalise_path,
)
from watchd.protocol.wire import (
    PROTOCOL_VERSION,
    ErrorCode,
    JsonScalar,
    ProtocolError,
    encode,
    error,
)
from watchd.reasons import LostReason, OverflowReason  # the values its notices carry

__all__ = [
    "DEFAULT_MAX_BATCH",
    "EVENT_HEAD",
    "FEATURES",
    "FRAME_END",
    "MAX_BATCH",
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
    "encode_subscribe",
    "error",
    "event_prefix",
    "frame_body",
    "frame_head",
    "frames",
    "hello",
    "mask_names",
    "normalise_path",
    "overflow",
    "pong",
    "resynced",
    "status",
    "subscribed",
    "unsubscribed",
    "watch_degraded",
    "watch_lost",
    "watch_restored",
]
