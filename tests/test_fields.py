"""A subscription's "fields": the members of each event it asked for, and only those, in the
daemon's order; the same events as a subscription with every member, however they reach it
(written at once, queued while its connection is behind, replayed from the history; in lines
or in frames)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_broker import (
    FakeSink,
    creates,
    item,
    join,
    make_broker,
    publish,
    sub,
    unframe,
)
from watchd import protocol
from watchd.broker import Broker
from watchd.events import SYNTHETIC, Kind
from watchd.protocol import ErrorCode, ProtocolError, decode_request

FIELDS = frozenset({"kind", "path", "src_path"})


def reads(broker: Broker, start: float = 1.0) -> None:
    """Creates, a move (src_path and a cookie), a synthetic create, a delete."""
    publish(broker, "a", start, creates("/a/f1", "/a/f2"))
    publish(broker, "a", start + 1, [item(Kind.MOVED_FROM, "/a/f1", cookie=9),
                                     item(Kind.MOVED_TO, "/a/g1", cookie=9, src="/a/f1")])
    publish(broker, "a", start + 2, [(int(item(Kind.CREATE, "/a/s")[0]) | SYNTHETIC, 0,
                                      "/a/s", None)])
    publish(broker, "a", start + 3, [item(Kind.DELETE, "/a/f2")])


def events_of(sink: FakeSink) -> list[dict[str, Any]]:
    """Event messages, frames taken apart; without the subscription (it differs)."""
    out = []
    for m in unframe(sink.take()):
        if m["type"] == "event":
            m.pop("subscription")
            out.append(m)
    return out


def projected(events: list[dict[str, Any]], fields: frozenset[str]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k == "type" or k in fields} for e in events]


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("filters", [{}, {"events": frozenset({Kind.CREATE, Kind.MOVED_TO})}])
def test_live_events_carry_the_members_asked_for(batch: bool, filters: dict[str, Any]) -> None:
    broker = make_broker()
    full_sink, full = join(broker)
    shaped_sink, shaped = join(broker)
    sub(broker, full, **filters)
    sub(broker, shaped, batch=batch, fields=FIELDS, **filters)
    full_sink.take()
    shaped_sink.take()
    reads(broker)
    want = events_of(full_sink)
    got = events_of(shaped_sink)
    assert got == projected(want, FIELDS)
    # Every member in the daemon's order; src_path only where it applies.
    moved = [e for e in got if e["kind"] == "moved_to"]
    assert list(moved[0]) == ["type", "kind", "path", "src_path"]
    assert all(list(e) == ["type", "kind", "path"] for e in got if e["kind"] != "moved_to")
    assert len(got) == (6 if not filters else 4)


@pytest.mark.parametrize("batch", [False, True])
def test_a_connection_behind_gets_the_same_shape_once_it_drains(batch: bool) -> None:
    broker = make_broker()
    full_sink, full = join(broker)
    shaped_sink, shaped = join(broker)
    sub(broker, full)
    sub(broker, shaped, batch=batch, fields=FIELDS, events=frozenset(Kind))
    full_sink.take()
    shaped_sink.take()
    shaped_sink.open = False  # its transport paused: what comes is queued
    reads(broker)
    assert shaped.queue
    shaped_sink.open = True
    broker.resume(shaped)
    assert events_of(shaped_sink) == projected(events_of(full_sink), FIELDS)


@pytest.mark.parametrize("batch", [False, True])
def test_a_since_replay_has_the_same_shape(batch: bool) -> None:
    broker = make_broker()
    full_sink, full = join(broker)
    sub(broker, full)
    reads(broker)
    want = events_of(full_sink)
    sink, conn = join(broker)
    sub(broker, conn, batch=batch, fields=frozenset({"seq", "time", "synthetic"}), since=0)
    got = events_of(sink)
    assert got == projected(want, frozenset({"seq", "time", "synthetic"}))
    assert [e.get("synthetic") for e in got] == [None, None, None, None, True, None]


def test_subscriptions_asking_the_same_share_one_filter_and_others_differ() -> None:
    broker = make_broker()
    _, conn = join(broker)
    first = sub(broker, conn, fields=frozenset({"kind", "path"}))
    again = sub(broker, conn, fields=frozenset({"path", "kind"}), id=2)
    other = sub(broker, conn, fields=frozenset({"seq", "path"}), id=3)
    full = sub(broker, conn, id=4)
    filters = {sid: conn.subs[sid].filter for sid in (first, again, other, full)}
    assert filters[first] is filters[again]
    assert filters[other] is not filters[first]
    assert filters[full].simple and not filters[first].simple


def test_notices_are_not_shaped() -> None:
    broker = make_broker()
    sink, conn = join(broker)
    sid = sub(broker, conn, fields=frozenset({"path"}))
    sink.take()
    broker.overflow("a", "kernel_queue")
    [notice] = sink.take()
    assert notice["type"] == "overflow" and notice["subscription"] == sid
    assert notice["watch"] == "a" and "seq" in notice


def test_the_projection_keeps_the_encoders_text() -> None:
    tail = protocol.EventEncoder().tail(
        12, 1700000000.12345, "w", "moved_to", "/a/\udcff \"q\"", 0x80, 7, "/a/é")
    assert protocol.project(tail, frozenset({"time", "path", "src_path"})) == (
        b'"time":1700000000.12345,"path":"/a/\\udcff \\"q\\"","src_path":"/a/\\u00e9"}\n')


@pytest.mark.parametrize(("fields", "problem"), [
    ("kind", '"fields": expected a list of strings, got a string'),
    ([], '"fields": must not be empty; leave it out to get every member'),
    (["kind", 3], '"fields"[1]: expected a string, got an integer'),
    (["kind", "size"], '"fields"[1]: unknown event member "size"; expected some of seq, time, '
                       "watch, kind, path, is_dir, mask, synthetic, cookie, src_path"),
    (["path", "path"], '"fields"[1]: "path" is listed twice'),
    (["src_path", "synthetic"], '"fields": name at least one member every event has'),
])
def test_bad_fields_are_bad_requests(fields: object, problem: str) -> None:
    line = protocol.encode({"op": "subscribe", "id": 5, "fields": fields}).rstrip(b"\n")
    with pytest.raises(ProtocolError) as raised:
        decode_request(line)
    assert raised.value.code is ErrorCode.BAD_REQUEST and raised.value.id == 5
    assert str(raised.value).startswith(problem)


def test_every_member_is_the_same_as_none() -> None:
    """Asking for all of them is asking for nothing less: the shared, unshaped path."""
    line = protocol.encode({"op": "subscribe", "fields": list(protocol.EVENT_MEMBERS)})
    req = decode_request(line.rstrip(b"\n"))
    assert req.fields is None
    shaped = decode_request(b'{"op":"subscribe","fields":["path","seq"]}')
    assert protocol.encode_request(shaped) == (
        b'{"op":"subscribe","id":null,"fields":["seq","path"]}\n')
