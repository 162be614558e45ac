"""What a client sends, and the checks of what the daemon answers; no I/O.

A subscribe request keeps the filters as the caller gave them (the daemon alone validates
them); the other requests are protocol's. The checks turn a greeting or a reply that is not
what was due into a ClientError, and an error reply into a ServerError.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass

from watchd.client.errors import ClientError, JSONDict, ServerError
from watchd.client.frames import Message, wants_batch
from watchd.protocol import (
    PROTOCOL_VERSION,
    Metrics,
    Ping,
    Status,
    Unsubscribe,
    encode_request,
    encode_subscribe,
)

PathLikeArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]
# One path or several; bytes and PathLike are accepted so that names that are not UTF-8 work.
PathsArg = PathLikeArg | Iterable[PathLikeArg] | None


# --- the checks -----------------------------------------------------------------------------------


def check_hello(message: Message, socket_path: str) -> JSONDict:
    """The greeting, validated; an error greeting (too_many_clients) raises ServerError."""
    data = message.data
    kind = data.get("type")
    if kind == "error":
        raise ServerError(data, socket_path)
    if kind != "hello" or data.get("server") != "watchd":
        raise ClientError(
            f"{socket_path} did not greet like watchd; is it watchd's socket?", socket_path
        )
    if data.get("protocol") != PROTOCOL_VERSION:
        raise ClientError(
            f"watchd at {socket_path} speaks protocol {data.get('protocol')!r}, this client "
            f"speaks {PROTOCOL_VERSION}; use a client from the same watchd version",
            socket_path,
        )
    return data


def check_reply(message: Message, expected: str, socket_path: str) -> JSONDict:
    """The reply's object when it has the expected type; an error reply raises ServerError."""
    data = message.data
    if data.get("type") == "error":
        raise ServerError(data, socket_path)
    if data.get("type") != expected:
        raise ClientError(
            f"watchd at {socket_path} answered {data.get('type')!r} where {expected!r} was due",
            socket_path,
        )
    return data


def confirmation(reply: JSONDict) -> tuple[str, int]:
    """The subscription id and the daemon's last seq from a checked "subscribed" reply."""
    return str(reply["subscription"]), int(reply.get("seq", 0))


def subscribed(reply: JSONDict, request: SubscribeRequest) -> tuple[str, int, int | None]:
    """A Subscription's id, seq and last_seq from the confirmation of request."""
    # Until an event comes, the point to resume from is where the caller asked to start.
    return (*confirmation(reply), request.since)


# --- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    """A subscribe request with its filters as the caller gave them; None: left out.

    protocol.Subscribe is the daemon's view after validation (a set of kinds, normalised paths).
    The client sends what it was given instead, in the caller's order, so that the daemon alone
    validates and its errors ("events"[1]: unknown event kind ...) point into the caller's list.
    """

    id: int | None = None
    watch: str | tuple[str, ...] | None = None
    events: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None
    glob: tuple[str, ...] | None = None
    since: int | None = None
    instance: str | None = None
    batch: bool | None = None  # frames of events; asked for where the daemon offers them
    fields: tuple[str, ...] | None = None  # the event members wanted; None: all

    def line(self) -> bytes:
        """The wire line: op and id first, then the filters given, in protocol order."""
        # A name that is not UTF-8 (surrogateescape characters) is written as \udcXX, which
        # the daemon turns back into the same bytes.
        return encode_subscribe(
            self.id,
            watch=self.watch,
            events=self.events,
            paths=self.paths,
            glob=self.glob,
            since=self.since,
            instance=self.instance,
            batch=self.batch,
            fields=self.fields,
        )


# What the client sends: protocol's requests, and a subscribe as given.
ClientRequest = Ping | Status | Metrics | Unsubscribe | SubscribeRequest


def subscribe_request(  # noqa: PLR0917 -- the filters, in the documented order
    watch: str | Iterable[str] | None,
    events: str | Iterable[str] | None,
    paths: PathsArg,
    glob: str | Iterable[str] | None,
    since: int | None,
    instance: str | None,
    batch: bool = False,
    fields: str | Iterable[str] | None = None,
) -> SubscribeRequest:
    """A subscribe request from the public arguments; absent filters are left out."""
    path_list: tuple[str, ...] | None = None
    if paths is not None:
        many = [paths] if isinstance(paths, str | bytes | os.PathLike) else list(paths)
        # fsdecode keeps a name that is not UTF-8 as surrogateescape characters.
        path_list = tuple(os.fsdecode(path) for path in many)
    return SubscribeRequest(
        watch=watch if watch is None or isinstance(watch, str) else tuple(watch),
        events=None if events is None else tuple(str(kind) for kind in _as_tuple(events)),
        paths=path_list,
        glob=None if glob is None else _as_tuple(glob),
        since=since,
        instance=instance,
        batch=batch or None,
        fields=None if fields is None else _as_tuple(fields),
    )


def _as_tuple(value: str | Iterable[str]) -> tuple[str, ...]:
    # A lone string is one item, not a sequence of one-letter items.
    return (value,) if isinstance(value, str) else tuple(value)


def for_connection(request: SubscribeRequest, hello: JSONDict) -> SubscribeRequest:
    """The request as sent on a connection that greeted with hello.

    Frames are asked for where the daemon offers them, unless the caller chose; the
    subscription still hands out one event at a time.
    """
    if request.batch is None and wants_batch(hello):
        return dataclasses.replace(request, batch=True)
    return request


def request_line(request: ClientRequest) -> bytes:
    """The wire line of a request that carries its id."""
    if isinstance(request, SubscribeRequest):
        return request.line()
    return encode_request(request)
