"""The wire protocol: request decoding and its messages, message builders, event lines, framing."""

from __future__ import annotations

import json
import os
import time

import pytest

from watchd import protocol
from watchd.events import ALL_KINDS, SYNTHETIC, Kind
from watchd.inotify.flags import IN_CREATE, IN_ISDIR
from watchd.protocol import (
    ErrorCode,
    EventEncoder,
    LineFramer,
    LineTooLong,
    Ping,
    ProtocolError,
    Status,
    Subscribe,
    Unsubscribe,
    decode_message,
    decode_request,
    encode,
    encode_request,
    event_prefix,
)


def refused(line: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_request(line)
    return info.value


# --- decoding requests -------------------------------------------------------------------------


def test_ping_status_unsubscribe_decode_with_their_ids() -> None:
    assert decode_request(b'{"op":"ping"}') == Ping(None)
    assert decode_request(b'{"op":"ping","id":7}') == Ping(7)
    assert decode_request(b'{"id":"a","op":"status"}') == Status("a")
    assert decode_request(b'{"op":"unsubscribe","subscription":"s1","id":null}') == Unsubscribe(
        None, "s1"
    )


@pytest.mark.parametrize("value", ["x", 1, -2.5, True, False, None])
def test_any_json_scalar_is_an_id(value: object) -> None:
    line = json.dumps({"op": "ping", "id": value}).encode()
    assert decode_request(line) == Ping(value)  # type: ignore[arg-type]


def test_subscribe_without_filters_matches_everything() -> None:
    assert decode_request(b'{"op":"subscribe"}') == Subscribe()


def test_subscribe_reads_every_filter() -> None:
    line = json.dumps(
        {
            "op": "subscribe",
            "id": 3,
            "watch": ["a", "b"],
            "events": ["create", "delete"],
            "paths": ["/srv/up/", "//srv/x/../y"],
            "glob": ["*.csv"],
            "since": 41,
            "instance": "abc",
            "batch": True,
        }
    ).encode()
    assert decode_request(line) == Subscribe(
        id=3,
        watch=("a", "b"),
        events=frozenset({Kind.CREATE, Kind.DELETE}),
        paths=("/srv/up", "/srv/y"),
        glob=("*.csv",),
        since=41,
        instance="abc",
        batch=True,
    )


def test_a_single_watch_name_may_be_a_string() -> None:
    assert decode_request(b'{"op":"subscribe","watch":"up"}') == Subscribe(watch=("up",))


def test_since_zero_is_accepted() -> None:
    assert decode_request(b'{"op":"subscribe","since":0}') == Subscribe(since=0)


def test_a_trailing_carriage_return_or_spaces_do_not_matter() -> None:
    assert decode_request(b' {"op":"ping"} \r') == Ping(None)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"", "not valid JSON: Expecting value at column 1"),
        (b'{"op":"ping"', "not valid JSON"),
        (b"\xff\xfe{}", "line is not UTF-8 (byte 0)"),
        (b"[1,2]", "a request must be a JSON object, got a list"),
        (b'"ping"', "a request must be a JSON object, got a string"),
        (b'{"op":"ping","id":NaN}', "NaN is not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b"1" * 5000, "not valid JSON"),
    ],
)
def test_bad_json(line: bytes, message: str) -> None:
    err = refused(line)
    assert err.code is ErrorCode.BAD_JSON
    assert message in err.message
    assert err.id is None


@pytest.mark.parametrize(
    ("request_obj", "message"),
    [
        ({}, '"op": missing; expected a string'),
        ({"op": 3}, '"op": expected a string, got an integer'),
        ({"op": "ping", "id": [1]}, '"id": expected a JSON scalar'),
        ({"op": "ping", "id": {"a": 1}}, "got an object"),
        ({"op": "ping", "extra": 1}, 'unknown field "extra" for "ping"; allowed: "id", "op"'),
        (
            {"op": "subscribe", "path": ["/a"]},
            'unknown field "path" for "subscribe"; allowed: "batch", "events", "fields", "glob",'
            ' "id", "instance", "op", "paths", "since", "watch"',
        ),
        ({"op": "unsubscribe"}, '"subscription": missing; expected a string'),
        ({"op": "unsubscribe", "subscription": 5}, '"subscription": expected a string, got an'),
        ({"op": "unsubscribe", "subscription": ""}, '"subscription": must not be empty'),
        ({"op": "subscribe", "watch": 5}, '"watch": expected a string or a list of strings'),
        ({"op": "subscribe", "watch": ["a", None]}, '"watch"[1]: expected a string, got null'),
        ({"op": "subscribe", "watch": []}, '"watch": must not be empty; leave it out'),
        ({"op": "subscribe", "events": "create"}, '"events": expected a list of strings'),
        (
            {"op": "subscribe", "events": ["create", "crete"]},
            '"events"[1]: unknown event kind "crete"; expected one of access, modify, attrib,'
            " close_write, close_nowrite, open, moved_from, moved_to, create, delete,"
            " delete_self, move_self",
        ),
        ({"op": "subscribe", "events": []}, '"events": must not be empty'),
        ({"op": "subscribe", "paths": ["/a", "b/c"]}, '"paths"[1]: must be an absolute path'),
        ({"op": "subscribe", "paths": ["/a\x00b"]}, '"paths"[0]: a path cannot contain NUL'),
        ({"op": "subscribe", "glob": [1]}, '"glob"[0]: expected a string, got an integer'),
        ({"op": "subscribe", "since": -1}, '"since": must be 0 or more, got -1'),
        ({"op": "subscribe", "since": 1.5}, '"since": expected an integer seq, got a number'),
        ({"op": "subscribe", "since": True}, '"since": expected an integer seq, got a boolean'),
        ({"op": "subscribe", "since": "4"}, '"since": expected an integer seq, got a string'),
        ({"op": "subscribe", "instance": 4}, '"instance": expected a string'),
        ({"op": "subscribe", "batch": 1}, '"batch": expected true or false, got an integer'),
        ({"op": "subscribe", "batch": "yes"}, '"batch": expected true or false, got a string'),
        ({"op": "subscribe", "batch": None}, '"batch": expected true or false, got null'),
    ],
)
def test_bad_request_names_the_field(request_obj: dict[str, object], message: str) -> None:
    err = refused(json.dumps(request_obj).encode())
    assert err.code is ErrorCode.BAD_REQUEST
    assert message in err.message


def test_unknown_op_lists_the_known_ones() -> None:
    err = refused(b'{"op":"subscibe","id":9}')
    assert err.code is ErrorCode.UNKNOWN_OP
    assert err.message == (
        '"op": unknown operation "subscibe"; expected one of ping, status, metrics, subscribe,'
        ' unsubscribe'
    )
    assert err.id == 9


def test_errors_carry_the_id_whenever_it_could_be_read() -> None:
    assert refused(b'{"op":"subscribe","id":"q1","since":-3}').id == "q1"
    assert refused(b'{"op":"x","id":2}').id == 2
    assert refused(b'{"op":"ping","id":[2]}').id is None


def test_an_id_too_large_for_a_double_is_refused() -> None:
    err = refused(b'{"op":"ping","id":1e400}')
    assert err.code is ErrorCode.BAD_REQUEST
    assert "too large" in err.message


def test_long_values_are_cut_short_in_messages() -> None:
    err = refused(json.dumps({"op": "subscribe", "events": ["x" * 5000]}).encode())
    assert len(err.message) < 400


def test_error_reply_is_a_wire_line() -> None:
    err = refused(b'{"op":"subscribe","id":"r","events":["crete"]}')
    line = err.reply()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert json.loads(line) == {
        "type": "error",
        "id": "r",
        "code": "bad_request",
        "message": err.message,
    }
    assert list(json.loads(line)) == ["type", "id", "code", "message"]


def test_protocol_error_extra_fields_go_on_the_wire() -> None:
    err = ProtocolError(ErrorCode.SINCE_EXPIRED, "too old", id=4, extra={"oldest": 17})
    assert json.loads(err.reply()) == {
        "type": "error",
        "id": 4,
        "code": "since_expired",
        "message": "too old",
        "oldest": 17,
    }


@pytest.mark.parametrize(
    "request_",
    [
        Ping(None),
        Ping(1.5),
        Status("s"),
        Unsubscribe(False, "s9"),
        Subscribe(),
        Subscribe(
            id=None,
            watch=("a",),
            events=frozenset(ALL_KINDS),
            paths=("/", "/x/y"),
            glob=("*", "[ab]?"),
            since=0,
            instance="i",
            batch=True,
        ),
    ],
)
def test_encode_request_round_trips(request_: protocol.Request) -> None:
    line = encode_request(request_)
    assert line.endswith(b"\n")
    assert decode_request(line.rstrip(b"\n")) == request_


def test_encode_subscribe_writes_op_and_id_first_and_keeps_the_order_given() -> None:
    line = protocol.encode_subscribe(4, watch="logs", events=("modify", "create"), since=0)
    assert line == (
        b'{"op":"subscribe","id":4,"watch":"logs","events":["modify","create"],"since":0}\n'
    )
    assert decode_request(line.rstrip(b"\n")) == Subscribe(
        id=4, watch=("logs",), events=frozenset({Kind.MODIFY, Kind.CREATE}), since=0
    )


# --- messages from the server -------------------------------------------------------------------


def test_encode_is_one_compact_ascii_line() -> None:
    assert encode({"a": "é", "b": [1, None]}) == b'{"a":"\\u00e9","b":[1,null]}\n'


def test_hello_has_the_contract_keys_in_order() -> None:
    line = protocol.hello("0.1.0", 42, "inst", 0)
    assert line == (
        b'{"type":"hello","protocol":1,"server":"watchd","version":"0.1.0",'
        b'"pid":42,"instance":"inst","seq":0,"durable":false,"features":["batch","fields"]}\n'
    )
    assert protocol.hello("0.1.0", 42, "inst", 7, durable=True).endswith(
        b'"seq":7,"durable":true,"features":["batch","fields"]}\n')


def test_batch_false_is_the_default_and_is_left_out_when_encoded() -> None:
    assert decode_request(b'{"op":"subscribe","batch":false}') == Subscribe()
    assert encode_request(Subscribe(id=1)) == b'{"op":"subscribe","id":1}\n'
    assert protocol.encode_subscribe(1, batch=True) == b'{"op":"subscribe","id":1,"batch":true}\n'


def test_a_frame_is_its_events_objects_spliced_from_their_lines() -> None:
    enc = protocol.EventEncoder()
    names = ["/w/a\nb", '/w/"q"\\', "/w/\udcff\u00e9", "/w/\n\",\""]
    tails = [enc.tail(i + 1, 5.25, "w", "create", name, 0x100, 0, None) for i, name in
             enumerate(names)]
    tails.append(enc.tail(9, 5.5, "w", "moved_to", "/w/to", 0x80, 7, "/w/\nfrom"))
    line_objects = [json.loads(protocol.event_prefix("s3") + tail) for tail in tails]
    frame = b"".join(protocol.frames(protocol.frame_head("s3"), tails, 10))
    assert frame.endswith(b"]}\n") and frame.count(b"\n") == 1
    got = json.loads(frame)
    assert list(got) == ["type", "subscription", "events"]
    assert got["type"] == "events" and got["subscription"] == "s3"
    assert [{"type": "event", "subscription": "s3", **e} for e in got["events"]] == line_objects
    # Key order too: an event object is the line without its type and subscription.
    assert [list(e) for e in got["events"]] == [list(o)[2:] for o in line_objects]


def test_frames_split_at_max_batch() -> None:
    enc = protocol.EventEncoder()
    tails = [enc.tail(i, 1.0, "w", "create", f"/w/{i}", 0x100, 0, None) for i in range(1, 8)]
    chunks = protocol.frames(protocol.frame_head("s1"), tails, 3)
    lines = b"".join(chunks).splitlines()
    assert [[e["seq"] for e in json.loads(line)["events"]] for line in lines] == [
        [1, 2, 3], [4, 5, 6], [7]]


def test_replies_carry_the_id_even_when_null() -> None:
    assert protocol.pong(None) == b'{"type":"pong","id":null}\n'
    assert protocol.pong("x") == b'{"type":"pong","id":"x"}\n'
    assert protocol.subscribed(1, "s1", 5) == (
        b'{"type":"subscribed","id":1,"subscription":"s1","seq":5}\n'
    )
    assert protocol.unsubscribed(None, "s1") == (
        b'{"type":"unsubscribed","id":null,"subscription":"s1"}\n'
    )
    assert protocol.status(2, {"pid": 1, "watches": []}) == (
        b'{"type":"status","id":2,"pid":1,"watches":[]}\n'
    )


def test_error_builder() -> None:
    assert protocol.error(ErrorCode.UNKNOWN_WATCH, "no watch 'x'", 3) == (
        b'{"type":"error","id":3,"code":"unknown_watch","message":"no watch \'x\'"}\n'
    )
    assert protocol.error(ErrorCode.SINCE_EXPIRED, "m", oldest=9) == (
        b'{"type":"error","id":null,"code":"since_expired","message":"m","oldest":9}\n'
    )


def test_too_many_clients_answers_no_request_so_has_no_id() -> None:
    assert protocol.error(ErrorCode.TOO_MANY_CLIENTS, "full") == (
        b'{"type":"error","code":"too_many_clients","message":"full"}\n'
    )


def test_error_codes_are_the_wire_codes() -> None:
    assert {c.value for c in ErrorCode} == {
        "bad_json",
        "bad_request",
        "unknown_op",
        "unknown_watch",
        "unknown_subscription",
        "too_many_subscriptions",
        "since_expired",
        "line_too_long",
        "request_timeout",
        "too_many_clients",
    }


def test_notices() -> None:
    assert protocol.overflow("s", 7, protocol.OverflowReason.KERNEL_QUEUE, "up", True) == (
        b'{"type":"overflow","subscription":"s","seq":7,"reason":"kernel_queue","watch":"up",'
        b'"resync":true}\n'
    )
    assert protocol.overflow("s", 7, "watcher_restart", None) == (
        b'{"type":"overflow","subscription":"s","seq":7,"reason":"watcher_restart","watch":null,'
        b'"resync":false}\n'
    )
    assert protocol.resynced("s", 9, "up", 3, 12.5) == (
        b'{"type":"resynced","subscription":"s","seq":9,"watch":"up","changes":3,'
        b'"duration_ms":12.5}\n'
    )
    assert protocol.dropped("s", 3, 10, 12) == (
        b'{"type":"dropped","subscription":"s","count":3,"first_seq":10,"last_seq":12}\n'
    )
    assert protocol.watch_lost("s", "up", "/srv/up", protocol.LostReason.DELETED) == (
        b'{"type":"watch_lost","subscription":"s","watch":"up","path":"/srv/up",'
        b'"reason":"deleted"}\n'
    )
    assert protocol.watch_restored("s", "up", "/srv/up") == (
        b'{"type":"watch_restored","subscription":"s","watch":"up","path":"/srv/up"}\n'
    )


def test_decode_message() -> None:
    assert decode_message(b'{"type":"pong","id":null}') == {"type": "pong", "id": None}
    for garbage in (b"nope", b"[]", b"\xc3"):
        with pytest.raises(ProtocolError) as info:
            decode_message(garbage)
        assert info.value.code is ErrorCode.BAD_JSON


# --- events -------------------------------------------------------------------------------------


def test_event_line_has_the_contract_shape_and_order() -> None:
    enc = EventEncoder()
    tail = enc.tail(12, 1700000000.25, "uploads", "create", "/srv/up/a.csv", IN_CREATE, 0, None)
    line = event_prefix("s3") + tail
    assert line.endswith(b"}\n")
    assert line.count(b"\n") == 1
    obj = json.loads(line)
    assert obj == {
        "type": "event",
        "subscription": "s3",
        "seq": 12,
        "time": 1700000000.25,
        "watch": "uploads",
        "kind": "create",
        "path": "/srv/up/a.csv",
        "is_dir": False,
        "mask": ["IN_CREATE"],
        "cookie": 0,
    }
    assert list(obj) == [
        "type",
        "subscription",
        "seq",
        "time",
        "watch",
        "kind",
        "path",
        "is_dir",
        "mask",
        "cookie",
    ]


def test_moved_to_carries_src_path_last() -> None:
    tail = EventEncoder().tail(1, 1.0, "w", "moved_to", "/a/new", 0x80 | IN_ISDIR, 77, "/a/old")
    obj = json.loads(event_prefix("s") + tail)
    assert obj["is_dir"] is True
    assert obj["mask"] == ["IN_MOVED_TO", "IN_ISDIR"]
    assert obj["cookie"] == 77
    assert list(obj)[-1] == "src_path"
    assert obj["src_path"] == "/a/old"


def test_synthetic_event_has_an_empty_mask_and_says_so() -> None:
    mask = 0x100 | 0x40000000 | SYNTHETIC
    tail = protocol.EventEncoder().tail(5, 1.5, "w", "create", "/w/d", mask, 0, None)
    event = json.loads(protocol.event_prefix("s") + tail)
    assert event["mask"] == [] and event["synthetic"] is True and event["is_dir"] is True
    plain = json.loads(protocol.event_prefix("s") + (protocol.EventEncoder().tail(
        5, 1.5, "w", "create", "/w/d", 0x100, 0, None)))
    assert "synthetic" not in plain


def test_mask_names_in_ascending_bit_order_unknown_bits_left_out() -> None:
    mask = IN_ISDIR | 0x8000 | 0x4000 | 0x2000 | 0x400 | 0x1 | 0x1000_0000
    tail = EventEncoder().tail(1, 1.0, "w", "access", "/x", mask, 0, None)
    assert json.loads(event_prefix("s") + tail)["mask"] == [
        "IN_ACCESS",
        "IN_DELETE_SELF",
        "IN_UNMOUNT",
        "IN_Q_OVERFLOW",
        "IN_IGNORED",
        "IN_ISDIR",
    ]


def test_non_utf8_names_survive_as_surrogate_escapes() -> None:
    raw = b"/srv/up/caf\xe9-\xff\xfe.txt"
    path = os.fsdecode(raw)
    tail = EventEncoder().tail(1, 1.0, "w", "create", path, IN_CREATE, 0, os.fsdecode(b"/o\x80"))
    line = event_prefix("s") + tail
    line.decode("ascii")  # escaped, so plain ASCII on the wire
    obj = json.loads(line)
    assert os.fsencode(obj["path"]) == raw
    assert os.fsencode(obj["src_path"]) == b"/o\x80"


def test_names_needing_escapes_are_escaped() -> None:
    tail = EventEncoder().tail(1, 1.0, 'w"\\', "create", '/a"b\\c\nd\té', IN_CREATE, 0, None)
    obj = json.loads(event_prefix("s") + tail)
    assert obj["watch"] == 'w"\\'
    assert obj["path"] == '/a"b\\c\nd\té'


def test_time_is_rounded_to_ten_microseconds() -> None:
    tail = EventEncoder().tail(1, 1700000000.1234567, "w", "create", "/x", IN_CREATE, 0, None)
    assert b'"time":1700000000.12346,' in tail
    now = time.time()
    tail = EventEncoder().tail(1, now, "w", "create", "/x", IN_CREATE, 0, None)
    sent = json.loads(event_prefix("s") + tail)["time"]
    assert abs(sent - now) <= 5e-6 + 1e-9
    # At most 15 significant digits: what parsers convert exactly on their fast path.
    text = tail.split(b'"time":')[1].split(b",")[0]
    assert len(text.replace(b".", b"").lstrip(b"0")) <= 15


def test_encoder_caches_give_the_same_bytes_as_a_fresh_encoder() -> None:
    enc = EventEncoder()
    for seq in range(3):  # the second and third calls hit the caches
        for mask in (IN_CREATE, IN_CREATE | IN_ISDIR, 0x2):
            args = (seq, 2.5, "up", "create", "/p", mask, seq, None if seq else "/q")
            assert enc.tail(*args) == EventEncoder().tail(*args)


# --- framing ------------------------------------------------------------------------------------


def test_framer_splits_lines_and_keeps_the_rest() -> None:
    f = LineFramer(100)
    assert f.feed(b"") == []
    assert f.feed(b"a\nbb\n\nccc") == [b"a", b"bb", b""]
    assert f.buffered == 3
    assert f.feed(b"c") == []
    assert f.feed(b"\r\nd") == [b"cccc"]
    assert f.feed(b"\n") == [b"d"]
    assert f.buffered == 0


def test_framer_strips_only_a_trailing_carriage_return() -> None:
    f = LineFramer(100)
    assert f.feed(b"a\rb\r\n\r\r\n") == [b"a\rb", b"\r"]
    # A "\r\n" split across two chunks is still one line ending.
    assert f.feed(b"x\r") == []
    assert f.feed(b"\n") == [b"x"]


def test_framer_accepts_a_line_of_exactly_the_limit() -> None:
    f = LineFramer(10)
    assert f.feed(b"0123456789\n") == [b"0123456789"]
    assert f.feed(b"01234") == []
    assert f.feed(b"56789\n") == [b"0123456789"]


def test_framer_refuses_a_complete_line_over_the_limit_keeping_earlier_lines() -> None:
    f = LineFramer(10)
    with pytest.raises(LineTooLong) as info:
        f.feed(b"ok\n01234567890\nlater\n")
    assert info.value.code is ErrorCode.LINE_TOO_LONG
    assert info.value.lines == [b"ok"]
    assert "longer than 10 bytes (daemon.max_line_bytes)" in info.value.message


def test_framer_refuses_an_unfinished_line_once_it_passes_the_limit() -> None:
    f = LineFramer(10)
    assert f.feed(b"012345") == []
    with pytest.raises(LineTooLong) as info:
        f.feed(b"67890")
    assert info.value.lines == []
    assert f.buffered == 0  # nothing more is held for a connection about to close


def test_framer_is_unusable_after_a_line_too_long() -> None:
    f = LineFramer(4)
    with pytest.raises(LineTooLong):
        f.feed(b"12345")
    with pytest.raises(LineTooLong):
        f.feed(b"ok\n")


def test_line_too_long_is_a_protocol_error_with_a_wire_reply() -> None:
    f = LineFramer(4)
    with pytest.raises(ProtocolError) as info:
        f.feed(b"12345\n")
    assert json.loads(info.value.reply())["code"] == "line_too_long"


def test_framer_is_linear_for_a_line_in_many_small_chunks() -> None:
    # Re-joining the buffer on every chunk would copy about 20 GB here and take minutes.
    n = 200_000
    f = LineFramer(n)
    deadline = time.monotonic() + 10
    for _ in range(n):
        assert f.feed(b"x") == []
    assert f.feed(b"\n") == [b"x" * n]
    assert time.monotonic() < deadline


def test_framer_is_linear_for_many_lines_in_one_chunk() -> None:
    data = b"{}\n" * 300_000
    deadline = time.monotonic() + 10
    assert LineFramer(10).feed(data) == [b"{}"] * 300_000
    assert time.monotonic() < deadline
