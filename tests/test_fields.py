"""A subscription's "fields": the members of each event it asked for, and only those, in the
daemon's order; the same events as a subscription with every member, however they reach it
(written at once, queued while its connection is behind, replayed from the history; in lines
or in frames)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
from watchd.events import KIND_BITS, SYNTHETIC, Kind
from watchd.inotify.flags import IN_ISDIR
from watchd.protocol import ErrorCode, ProtocolError, decode_request, event_lines
from watchd.subscription import FILTER_CACHE

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


def test_a_set_of_fields_keeps_one_shape_while_filters_come_and_go() -> None:
    """Shapes are told apart by identity: a set keeps its own for good, another set never gets
    it, however many filters the cache has dropped meanwhile."""
    broker = make_broker(max_subscriptions=64)
    _, conn = join(broker)
    first = conn.subs[sub(broker, conn, fields=frozenset({"path"}))].filter.fields
    for i in range(FILTER_CACHE + 5):  # evicts the first filter from the cache
        sid = sub(broker, conn, id=i, glob=(f"x{i}",), fields=frozenset({"seq", "path"}))
        broker.unsubscribe(conn, sid, i)
    again = conn.subs[sub(broker, conn, glob=("y",), fields=frozenset({"path"}))].filter.fields
    other = conn.subs[sub(broker, conn, fields=frozenset({"kind"}))].filter.fields
    assert again is first and first is not None
    assert other is not first and other is not None and other.names == ("kind",)


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
    assert protocol.project(tail, protocol.Fields.of(["src_path", "time", "path"])) == (
        b'"time":1700000000.12345,"path":"/a/\\udcff \\"q\\"","src_path":"/a/\\u00e9"}\n')


# Names that look like the marks the projection cuts at, quotes, escapes, non-ASCII and
# undecodable bytes: whatever a path or a watch name holds, no member is cut in the wrong place.
TRICKY = st.lists(st.sampled_from(
    ["a", '"', "\\", ",", ":", '","kind":', ',"src_path":x', "é", "\udcff", "😀", "\n", "]"]),
    max_size=8).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    watch=TRICKY.filter(bool),
    path=TRICKY,
    src=st.none() | TRICKY,
    kind=st.sampled_from(list(Kind)),
    flags=st.sampled_from([0, IN_ISDIR, SYNTHETIC, IN_ISDIR | SYNTHETIC]),
    cookie=st.sampled_from([0, 1, 2**32 - 1, 2**40]),
    time=st.floats(1e9, 4e9),
    names=st.sets(st.sampled_from(protocol.EVENT_MEMBERS), min_size=1),
)
def test_the_projection_is_the_decoded_event_less_the_others(
        watch: str, path: str, src: str | None, kind: Kind, flags: int, cookie: int,
        time: float, names: set[str]) -> None:
    """Byte for byte what encoding the decoded event's kept members gives (the reference)."""
    if protocol.ALWAYS_MEMBERS.isdisjoint(names):
        names.add("path")
    tail = protocol.EventEncoder().tail(
        7, time, watch, kind.value, "/w/" + path, KIND_BITS[kind] | flags, cookie,
        None if src is None else "/w/" + src)
    order = protocol.Fields.of(names)
    event = json.loads(b"{" + tail)
    want = json.dumps({k: v for k, v in event.items() if k in names}, separators=(",", ":"))
    assert protocol.project(tail, order) == want[1:].encode("ascii") + b"\n"


def test_filters_asking_the_same_fields_share_one_cut_per_event(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """However many filters ask for fields, each event is cut once and joined once per set of
    fields: a user's many subscriptions cost no more per event than as many glob tests."""
    cuts: list[bytes] = []
    real = event_lines.members

    def counting(tail: bytes) -> list[bytes]:
        cuts.append(tail)
        return real(tail)

    monkeypatch.setattr(event_lines, "members", counting)
    broker = make_broker(max_subscriptions=64)
    sink, conn = join(broker)
    for i in range(60):  # 60 filters, 2 sets of fields, frames and lines
        sub(broker, conn, id=i, glob=(f"f{i}*", "g*"), batch=i % 2 == 0,
            fields=frozenset({"path"} if i % 3 else {"kind", "path"}))
    publish(broker, "a", 1.0, creates(*(f"/a/g{i}" for i in range(10))))
    assert len(cuts) == 10
    got = [m for m in unframe(sink.take()) if m["type"] == "event"]
    assert len(got) == 60 * 10


@pytest.mark.parametrize(("fields", "problem"), [
    ("kind", '"fields": expected a list of strings, got a string'),
    ([], '"fields": must not be empty; leave it out to get every member'),
    (["kind", 3], '"fields"[1]: expected a string, got an integer'),
    (["kind", "size"], '"fields"[1]: unknown event member "size"; expected some of seq, time, '
                       "watch, kind, path, is_dir, mask, synthetic, cookie, src_path"),
    (["path", "type"], '"fields"[1]: "type" is not an event member: every event line carries'),
    (["src_path", "synthetic"], '"fields": name at least one member every event has'),
])
def test_bad_fields_are_bad_requests(fields: object, problem: str) -> None:
    line = protocol.encode({"op": "subscribe", "id": 5, "fields": fields}).rstrip(b"\n")
    with pytest.raises(ProtocolError) as raised:
        decode_request(line)
    assert raised.value.code is ErrorCode.BAD_REQUEST and raised.value.id == 5
    assert str(raised.value).startswith(problem)


def test_a_member_listed_twice_counts_once() -> None:
    req = decode_request(b'{"op":"subscribe","fields":["path","kind","path"]}')
    assert req.fields == frozenset({"path", "kind"})


def test_every_member_is_the_same_as_none() -> None:
    """Asking for all of them is asking for nothing less: the shared, unshaped path."""
    line = protocol.encode({"op": "subscribe", "fields": list(protocol.EVENT_MEMBERS)})
    req = decode_request(line.rstrip(b"\n"))
    assert req.fields is None
    shaped = decode_request(b'{"op":"subscribe","fields":["path","seq"]}')
    assert protocol.encode_request(shaped) == (
        b'{"op":"subscribe","id":null,"fields":["seq","path"]}\n')


# --- every path at once, against a subscriber with every member ----------------------------------

NAME_PARTS = ["a", "b", ".csv", "é", "\udcff", '"', "\\", ',"seq":', "😀", "\n", " "]


def random_items(rnd: random.Random, n: int) -> list[tuple[int, int, str, str | None]]:
    items = []
    for _ in range(n):
        name = "".join(rnd.choice(NAME_PARTS) for _ in range(rnd.randint(1, 5)))
        kind = rnd.choice(list(Kind))
        moved = kind is Kind.MOVED_TO and rnd.random() < 0.5
        it = item(kind, "/srv/" + name, cookie=rnd.randint(1, 2**32 - 1) if moved else 0,
                  src="/srv/" + name + ".old" if moved else None, is_dir=rnd.random() < 0.3)
        if rnd.random() < 0.1:
            it = (it[0] | SYNTHETIC, *it[1:])
        items.append(it)
    return items


def random_shape(rnd: random.Random) -> tuple[frozenset[str] | None, dict[str, Any]]:
    fields = None
    if rnd.random() < 0.7:
        fields = frozenset(m for m in protocol.EVENT_MEMBERS if rnd.random() < 0.4) | {
            rnd.choice(sorted(protocol.ALWAYS_MEMBERS))}
    filters: dict[str, Any] = rnd.choice(
        [{}, {"events": frozenset(rnd.sample(list(Kind), 3))}, {"glob": ("*.csv",)},
         {"watch": ("a",)}])
    return fields, filters


def wanted(event: dict[str, Any], filters: dict[str, Any]) -> bool:
    return (("events" not in filters or Kind(event["kind"]) in filters["events"])
            and ("glob" not in filters or event["path"].endswith(".csv"))
            and ("watch" not in filters or event["watch"] in filters["watch"]))


@pytest.mark.parametrize("seed", range(20))
def test_each_subscription_gets_the_projection_of_every_event_it_matches(seed: int) -> None:
    """Subscriptions with and without fields on four connections, in lines and frames, some
    replaying `since`, connections paused and resumed, overflow notices between: each gets the
    events a subscriber with every member got, matched by its filters, as objects of exactly
    its members, in that order."""
    rnd = random.Random(seed)
    broker = make_broker(client_queue=100_000, replay_buffer=100_000, max_subscriptions=64)
    reference, ref_conn = join(broker)
    sub(broker, ref_conn, id=0)
    conns = [join(broker) for _ in range(4)]
    subs: list[tuple[str, frozenset[str] | None, dict[str, Any], int]] = []
    when = 1700000000.0
    for _ in range(60):
        r = rnd.random()
        if r < 0.15:
            fields, filters = random_shape(rnd)
            since = rnd.choice([None, None, 0, max(0, broker.last_seq - rnd.randint(0, 20))])
            _, conn = rnd.choice(conns)
            sid = sub(broker, conn, batch=rnd.random() < 0.5, fields=fields, since=since,
                      **filters)
            subs.append((sid, fields, filters, broker.last_seq if since is None else since))
        elif r < 0.3:
            sink, conn = rnd.choice(conns)
            sink.open = not sink.open
            if sink.open:
                broker.resume(conn)
        elif r < 0.35:
            broker.overflow(rnd.choice(["a", None]), "kernel_queue")
        else:
            when += rnd.random()
            broker.publish_reads(rnd.choice("ab"), [
                (when + i * 1e-5, random_items(rnd, rnd.randint(1, 40)))
                for i in range(rnd.randint(1, 3))])
    for sink, conn in conns:
        sink.open = True
        broker.resume(conn)
    assert broker.dropped == 0
    every = [m for m in unframe(reference.take()) if m["type"] == "event"]
    got: dict[str, list[dict[str, Any]]] = {}
    for sink, _ in conns:
        data = b"".join(sink.chunks)
        data.decode("ascii")  # escapes, never raw non-ASCII
        for m in unframe([json.loads(line) for line in data.splitlines()]):
            if m["type"] == "event":
                got.setdefault(m.pop("subscription"), []).append(m)
    for sid, fields, filters, after in subs:
        want = [{k: v for k, v in e.items() if k != "subscription"
                 and (fields is None or k == "type" or k in fields)}
                for e in every if e["seq"] > after and wanted(e, filters)]
        assert [list(e) for e in got.get(sid, [])] == [list(e) for e in want], sid
        assert got.get(sid, []) == want, sid
