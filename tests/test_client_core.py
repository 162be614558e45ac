"""The client's sans-IO core with no socket: bytes in, messages and replies out."""

from __future__ import annotations

import dataclasses
import errno
import math
from typing import Any

import pytest

from watchd import protocol
from watchd.client import ClientError, ServerError
from watchd.client.core import (
    MAX_LINE_BYTES,
    PUSHED_TYPES,
    ClientCore,
    SubscribeRequest,
    SubscriptionState,
    check_hello,
    check_reply,
    subscribe_request,
)
from watchd.client.errors import closed_error, connect_error, long_line_error, timeout_error
from watchd.client.follow import Backoff, FollowCore, Resume, retryable
from watchd.client.frames import Message
from watchd.events import Kind
from watchd.protocol import Ping, Status

SOCK = "/run/test/watchd.sock"
HELLO = {"type": "hello", "protocol": 1, "server": "watchd", "version": "0.1.0", "pid": 1}


def line(obj: dict[str, Any]) -> bytes:
    return protocol.encode(obj)


def route(core: ClientCore, *objs: dict[str, Any]) -> None:
    """Receive objs as one chunk and route every message in it, as a transport does."""
    core.receive(b"".join(line(obj) for obj in objs))
    while (message := core.next_message()) is not None:
        core.router.feed(message)


def subscribed(core: ClientCore, sid: str) -> None:
    """Open subscription sid the way a transport does: request, reply, answer."""
    with core.exchange(subscribe_request(None, None, None, None, None, None), "subscribed") as ex:
        route(core, {"type": "subscribed", "id": ex.rid, "subscription": sid, "seq": 0})
        reply = core.router.take_reply(ex.rid)
        assert reply is not None
        ex.answer(reply)


# --- framing ------------------------------------------------------------------------------------


def test_a_line_that_trickles_in_comes_out_whole_with_its_newline() -> None:
    core = ClientCore(SOCK)
    for byte in line(HELLO)[:-1]:
        core.receive(bytes([byte]))
        assert core.next_message() is None
    core.receive(b"\n")
    message = core.next_message()
    assert message is not None
    assert message.raw == line(HELLO)
    assert message.data == HELLO
    assert core.next_message() is None


def test_several_lines_in_one_chunk_are_taken_one_at_a_time() -> None:
    core = ClientCore(SOCK)
    core.receive(line({"n": 1}) + line({"n": 2}) + b'{"n":')
    assert [core.next_message(), core.next_message(), core.next_message()] == [
        Message(b'{"n":1}\n', {"n": 1}),
        Message(b'{"n":2}\n', {"n": 2}),
        None,
    ]
    core.receive(b"3}\n")
    assert core.next_message() == Message(b'{"n":3}\n', {"n": 3})


def test_a_line_of_the_limit_passes_one_byte_more_fails() -> None:
    core = ClientCore(SOCK)
    padding = MAX_LINE_BYTES - len(b'{"p":""}')
    core.receive(b'{"p":"' + b"x" * padding + b'"}\n')
    message = core.next_message()
    assert message is not None
    assert len(message.data["p"]) == padding
    core.receive(b'{"p":"' + b"x" * (padding + 1) + b'"}\n')
    with pytest.raises(ClientError, match=f"sent a line over {MAX_LINE_BYTES} bytes"):
        core.next_message()


def test_lines_before_a_long_one_are_delivered_then_the_error_sticks() -> None:
    core = ClientCore(SOCK)
    core.receive(line({"n": 1}) + b"x" * (MAX_LINE_BYTES + 1))
    assert core.next_message() == Message(b'{"n":1}\n', {"n": 1})
    with pytest.raises(ClientError, match="is it really watchd's socket") as first:
        core.next_message()
    assert first.value.socket_path == SOCK
    with pytest.raises(ClientError) as again:
        core.next_message()
    assert again.value is first.value
    with pytest.raises(ClientError) as usable:
        core.check_usable()
    assert usable.value is first.value


def test_a_line_that_is_not_json_is_an_error_and_the_next_line_still_comes() -> None:
    core = ClientCore(SOCK)
    core.receive(b"not json\n" + line({"n": 2}))
    with pytest.raises(ClientError, match=f"{SOCK} sent a line watchd would not send"):
        core.next_message()
    assert core.next_message() == Message(b'{"n":2}\n', {"n": 2})


@pytest.mark.parametrize("before", [b"", b'{"type":"ev'], ids=["between-lines", "mid-line"])
def test_end_of_stream_is_a_closed_connection_for_good(before: bytes) -> None:
    core = ClientCore(SOCK)
    if before:
        core.receive(before)
    with pytest.raises(ClientError, match=rf"watchd closed the connection \({SOCK}\)") as info:
        core.receive(b"")
    assert not isinstance(info.value, ServerError)
    with pytest.raises(ClientError) as later:
        core.next_message()
    assert later.value is info.value


def test_end_of_stream_after_an_unasked_error_raises_that_error() -> None:
    core = ClientCore(SOCK)
    route(core, {"type": "error", "id": None, "code": "line_too_long", "message": "too long"})
    with pytest.raises(ServerError) as info:
        core.receive(b"")
    assert info.value.code == "line_too_long"


def test_close_is_remembered_but_an_earlier_failure_stays_the_reason() -> None:
    core = ClientCore(SOCK)
    core.close()
    with pytest.raises(ClientError, match=rf"this watchd connection \({SOCK}\) is closed"):
        core.check_usable()
    broken = ClientCore(SOCK)
    with pytest.raises(ClientError, match="closed the connection"):
        broken.receive(b"")
    broken.close()
    with pytest.raises(ClientError, match="closed the connection"):
        broken.check_usable()


# --- requests -----------------------------------------------------------------------------------


def test_request_lines_carry_fresh_ids_and_the_daemon_accepts_them() -> None:
    core = ClientCore(SOCK)
    subscribe = subscribe_request(
        "logs", ["create", "close_write"], [b"/srv/caf\xe9"], "*.csv", 0, "inst-1"
    )
    lines = []
    for request in (Ping(), Status(), core.unsubscribe("s1"), subscribe):
        with core.exchange(request, "any") as exchange:
            lines.append(exchange.line)
    assert lines == [
        b'{"op":"ping","id":1}\n',
        b'{"op":"status","id":2}\n',
        b'{"op":"unsubscribe","subscription":"s1","id":3}\n',
        # The caller's order and a lone watch name are kept; a name that is not UTF-8 is
        # escaped so that the daemon gets the same bytes back.
        b'{"op":"subscribe","id":4,"watch":"logs","events":["create","close_write"],'
        b'"paths":["/srv/caf\\udce9"],"glob":["*.csv"],"since":0,"instance":"inst-1"}\n',
    ]
    decoded = [protocol.decode_request(raw.rstrip(b"\n")) for raw in lines]
    assert [request.id for request in decoded] == [1, 2, 3, 4]
    assert decoded[3] == protocol.Subscribe(
        id=4,
        watch=("logs",),
        events=frozenset({Kind.CREATE, Kind.CLOSE_WRITE}),
        paths=("/srv/caf\udce9",),
        glob=("*.csv",),
        since=0,
        instance="inst-1",
    )


def test_a_subscribe_names_only_fields_the_daemon_knows() -> None:
    sent = [field.name for field in dataclasses.fields(SubscribeRequest)]
    known = [field.name for field in dataclasses.fields(protocol.Subscribe)]
    assert sent == [name for name in known if name in sent]


def test_subscribe_leaves_out_absent_filters() -> None:
    request = subscribe_request(None, None, None, None, None, None)
    assert request.line() == b'{"op":"subscribe","id":null}\n'
    listed = subscribe_request(("a", "b"), "create", "/x", ["*"], None, None)
    assert listed.line() == (
        b'{"op":"subscribe","id":null,"watch":["a","b"],"events":["create"],'
        b'"paths":["/x"],"glob":["*"]}\n'
    )


def test_a_request_that_cannot_be_encoded_leaves_no_reply_due() -> None:
    core = ClientCore(SOCK)
    with pytest.raises(ValueError, match="Out of range float"):
        core.exchange(subscribe_request(None, None, None, None, math.nan, None), "any")
    with core.exchange(Ping(), "pong") as exchange:
        route(core, {"type": "pong", "id": exchange.rid})
        reply = core.router.take_reply(exchange.rid)
        assert reply is not None
        assert exchange.answer(reply) == {"type": "pong", "id": exchange.rid}


# --- routing ------------------------------------------------------------------------------------

# What the core does with one incoming message, when subscription s1 is open and a ping (id 2)
# awaits its reply: "reply" (the ping's), "s1" (queued there), "dropped", "unsolicited", or an
# error. Message types the client does not know are routed by their shape, as the daemon may
# add some.
ROUTES: list[tuple[str, dict[str, Any], str]] = [
    *[
        (kind, {"type": kind, "subscription": "s1", "seq": 5}, "s1")
        for kind in sorted(PUSHED_TYPES)
    ],
    ("pushed type with an id", {"type": "event", "id": 2, "subscription": "s1"}, "s1"),
    ("unknown notice", {"type": "later_notice", "subscription": "s1"}, "s1"),
    ("event for no subscription", {"type": "event", "subscription": "s9"}, "dropped"),
    ("event with a sid not a string", {"type": "event", "subscription": 1}, "dropped"),
    ("the reply", {"type": "pong", "id": 2}, "reply"),
    ("an unknown reply", {"type": "later_reply", "id": 2}, "reply"),
    ("a reply naming a subscription", {"type": "unsubscribed", "id": 2, "subscription": "s1"},
     "reply"),
    ("an error the daemon could not place", {"type": "error", "id": None, "code": "bad_json"},
     "reply"),
    ("a reply out of step", {"type": "pong", "id": 7}, "out of step"),
]


@pytest.mark.parametrize(("incoming", "where"), [case[1:] for case in ROUTES],
                         ids=[case[0] for case in ROUTES])
def test_routing_with_a_request_pending(incoming: dict[str, Any], where: str) -> None:
    core = ClientCore(SOCK)
    subscribed(core, "s1")
    with core.exchange(Ping(), "pong") as exchange:
        assert exchange.rid == 2
        if where == "out of step":
            with pytest.raises(ClientError, match="answered request 7 where 2 was due"):
                route(core, incoming)
            return
        route(core, incoming)
        reply = core.router.take_reply(2)
    queued = core.router.pop("s1")
    got = "reply" if reply is not None else "s1" if queued is not None else "dropped"
    assert got == where
    assert core.router.unsolicited is None
    delivered = reply or queued
    if delivered is not None:
        assert delivered.data == incoming


@pytest.mark.parametrize(
    ("incoming", "unsolicited"),
    [
        ({"type": "error", "code": "too_many_clients", "message": "full"}, True),
        ({"type": "pong", "id": 1}, False),
        ({"type": "later_reply"}, False),
    ],
    ids=["an error", "a stray reply", "an unknown type"],
)
def test_routing_with_no_request_pending(incoming: dict[str, Any], unsolicited: bool) -> None:
    core = ClientCore(SOCK)
    route(core, incoming)
    assert (core.router.unsolicited is not None) == unsolicited
    assert core.router.take_reply(1) is None


def test_a_late_reply_to_an_abandoned_request_is_dropped() -> None:
    core = ClientCore(SOCK)
    with pytest.raises(TimeoutError), core.exchange(Ping(), "pong"):
        raise TimeoutError  # the caller gave up waiting
    with core.exchange(Status(), "status") as exchange:
        route(core, {"type": "pong", "id": 1}, {"type": "status", "id": 2, "seq": 0})
        assert core.router.take_reply(1) is None
        reply = core.router.take_reply(exchange.rid)
        assert reply is not None
        assert exchange.answer(reply)["id"] == 2


def test_an_unexpected_reply_type_says_what_was_due() -> None:
    core = ClientCore(SOCK)
    with core.exchange(Ping(), "pong") as exchange:
        route(core, {"type": "status", "id": 1})
        reply = core.router.take_reply(exchange.rid)
        assert reply is not None
        with pytest.raises(ClientError, match="answered 'status' where 'pong' was due"):
            exchange.answer(reply)


# --- subscriptions ------------------------------------------------------------------------------


def _subscribe(core: ClientCore) -> Any:
    return core.exchange(subscribe_request(None, None, None, None, None, None), "subscribed")


def test_lines_that_come_before_their_confirmation_are_kept() -> None:
    core = ClientCore(SOCK)
    with _subscribe(core) as exchange:
        route(
            core,
            {"type": "event", "subscription": "s5", "seq": 1},
            {"type": "subscribed", "id": 1, "subscription": "s5", "seq": 0},
            {"type": "event", "subscription": "s5", "seq": 2},
        )
        reply = core.router.take_reply(exchange.rid)
        assert reply is not None
        exchange.answer(reply)
    assert [core.router.pop("s5"), core.router.pop("s5")] == [
        Message(line({"type": "event", "subscription": "s5", "seq": s}), {
            "type": "event", "subscription": "s5", "seq": s
        })
        for s in (1, 2)
    ]


def test_early_lines_nobody_claims_are_dropped_once_no_subscribe_is_due() -> None:
    core = ClientCore(SOCK)
    with _subscribe(core) as first:
        second = _subscribe(core)
        route(
            core,
            {"type": "event", "subscription": "s6", "seq": 1},
            {"type": "subscribed", "id": 1, "subscription": "s5", "seq": 1},
        )
        reply = core.router.take_reply(first.rid)
        assert reply is not None
        first.answer(reply)
    # s6 may still be the second's: kept while its confirmation is due.
    assert core.router.is_open("s6")
    route(core, {"type": "error", "id": 2, "code": "unknown_watch", "message": "no"})
    reply = core.router.take_reply(second.rid)
    assert reply is not None
    with pytest.raises(ServerError, match="unknown_watch: no"), second:
        second.answer(reply)
    assert not core.router.is_open("s6")
    assert core.router.is_open("s5")


def test_a_subscribe_given_up_drops_its_early_lines() -> None:
    core = ClientCore(SOCK)
    exchange = _subscribe(core)
    route(core, {"type": "event", "subscription": "s7", "seq": 1})
    assert core.router.is_open("s7")
    with pytest.raises(TimeoutError), exchange:
        raise TimeoutError  # the caller gave up waiting
    assert not core.router.is_open("s7")
    # Its confirmation, when it comes late, opens nothing.
    route(core, {"type": "subscribed", "id": 1, "subscription": "s7", "seq": 0})
    route(core, {"type": "event", "subscription": "s7", "seq": 2})
    assert not core.router.is_open("s7")


def test_unsubscribe_stops_queueing_at_once() -> None:
    core = ClientCore(SOCK)
    subscribed(core, "s1")
    route(core, {"type": "event", "subscription": "s1", "seq": 1})
    request = core.unsubscribe("s1")
    assert request == protocol.Unsubscribe(None, "s1")
    assert not core.router.is_open("s1")
    assert core.router.pop("s1") is None
    route(core, {"type": "event", "subscription": "s1", "seq": 2})
    assert core.router.pop("s1") is None


def test_last_seq_follows_what_was_handed_out() -> None:
    state = SubscriptionState("s1", seq=3, since=1)
    assert (state.seq, state.last_seq) == (3, 1)
    for data, last in [
        ({"type": "event", "seq": 4}, 4),
        ({"type": "watch_lost", "watch": "w"}, 4),
        ({"type": "overflow", "seq": 9}, 9),
        ({"type": "event", "seq": "10"}, 9),
    ]:
        message = Message(line(data), data)
        assert state._note(message) is message
        assert state.last_seq == last
    assert state._note(None) is None
    assert state.last_seq == 9


# --- greeting and replies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("greeting", "error", "match"),
    [
        ({"type": "error", "code": "too_many_clients", "message": "full"}, ServerError,
         "too_many_clients: full"),
        ({**HELLO, "server": "other"}, ClientError, "did not greet like watchd"),
        ({"type": "pong"}, ClientError, "did not greet like watchd"),
        ({**HELLO, "protocol": 2}, ClientError, "speaks protocol 2, this client speaks 1"),
    ],
    ids=["error", "another server", "not a hello", "another protocol"],
)
def test_a_greeting_not_from_this_watchd_is_refused(
    greeting: dict[str, Any], error: type[ClientError], match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        check_hello(Message(line(greeting), greeting), SOCK)
    assert type(info.value) is error
    assert info.value.socket_path == SOCK


def test_hello_and_replies_that_fit_are_returned() -> None:
    assert check_hello(Message(line(HELLO), HELLO), SOCK) is HELLO
    pong = {"type": "pong", "id": 1}
    assert check_reply(Message(line(pong), pong), "pong", SOCK) is pong
    error = {"type": "error", "id": 1, "code": "since_expired", "message": "gone", "oldest": 5}
    with pytest.raises(ServerError) as info:
        check_reply(Message(line(error), error), "subscribed", SOCK)
    assert (info.value.code, info.value.message, info.value.reply) == ("since_expired", "gone",
                                                                       error)


# --- following: the cursor, the backoff, what is retried -----------------------------------------


def follow_core(since: int | None = None, instance: str | None = None,
                backoff: Backoff | None = None, clock: list[float] | None = None) -> FollowCore:
    now = clock if clock is not None else [0.0]
    return FollowCore(since, instance, backoff or Backoff(), clock=lambda: now[0])


def event(seq: int) -> Message:
    data = {"type": "event", "subscription": "a1", "seq": seq, "kind": "create",
            "path": f"/w/{seq}"}
    return Message(line(data), data)


def notice(kind: str, seq: int | None = None, **fields: Any) -> Message:
    data: dict[str, Any] = {"type": kind, "subscription": "a1", **fields}
    if seq is not None:
        data["seq"] = seq
    return Message(line(data), data)


def admitted(core: FollowCore, *messages: Message) -> list[dict[str, Any]]:
    return [m.data for m in messages if core.admit(m)]


def test_backoff_grows_to_its_cap_with_jitter_below_the_step() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, factor=2.0, jitter=0.5)
    assert [backoff.delay(n, 0.0) for n in range(1, 7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    # The random fraction takes off up to `jitter` of the step, never adds to it.
    assert backoff.delay(3, 0.999) == pytest.approx(0.4 * 0.5005)
    assert backoff.delay(10**6, 0.0) == 1.0  # a very long outage does not overflow
    assert Backoff(jitter=0.0).delay(2, 0.7) == pytest.approx(0.2)


@pytest.mark.parametrize("fields", [
    {"initial": 0.0}, {"initial": 2.0, "maximum": 1.0}, {"factor": 0.5}, {"jitter": 1.5},
])
def test_backoff_refuses_nonsense(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Backoff needs"):
        Backoff(**fields)


def test_a_follower_never_hands_out_a_seq_twice() -> None:
    core = follow_core()
    first = admitted(core, event(1), event(2), event(3))
    assert [m["seq"] for m in first] == [1, 2, 3]
    # A resumption from 3 after a reconnect sends nothing at or below it again.
    assert admitted(core, event(2), event(3), event(4)) == [event(4).data]
    assert core.last_seq == 4


def test_notices_at_the_resume_seq_come_once() -> None:
    # Overflow and resynced carry the seq of the event before them; a since replay from that seq
    # sends them again, so they are told apart by their content.
    core = follow_core()
    hello = {**HELLO, "instance": "i1", "seq": 0}
    core.subscribed(hello, "a1", 0)
    over = notice("overflow", 2, reason="kernel_queue", watch="w", resync=True)
    first = admitted(core, event(1), event(2), over)
    assert first == [event(1).data, event(2).data, over.data]
    later = {**hello, "seq": 3}
    assert core.greeted(later) == Resume(2, "i1")
    core.subscribed(later, "a2", 3)  # the replay from 2: the overflow again, once
    again = notice("overflow", 2, reason="kernel_queue", watch="w", resync=True)
    other = notice("overflow", 2, reason="watcher_restart", watch=None, resync=True)
    resynced = notice("resynced", 3, watch="w", changes=1, duration_ms=1.0)
    assert admitted(core, again, other, event(3), resynced) == [
        other.data, event(3).data, resynced.data]
    assert not core.admit(notice("overflow", 1, reason="kernel_queue", watch="w", resync=False))


def test_alike_notices_on_one_connection_are_two_occasions() -> None:
    # A second loss before any event: a consumer that rescanned at the first must rescan again.
    core = follow_core()
    lost = notice("overflow", 4, reason="kernel_queue", watch="w", resync=False)
    assert admitted(core, event(4), lost, lost) == [event(4).data, lost.data, lost.data]
    resynced = notice("resynced", 5, watch="w", changes=0, duration_ms=1.0)
    assert admitted(core, event(5), resynced, resynced) == [event(5).data] + [resynced.data] * 2


def test_each_copy_of_a_notice_at_the_resume_seq_comes_once() -> None:
    # Two resyncs announced and answered by one scan: a `resynced` each, alike. A replay from
    # their seq sends both again: each copy is dropped once, and a third (new) passes.
    core = follow_core()
    hello = {**HELLO, "instance": "i1", "seq": 0}
    core.subscribed(hello, "a1", 0)
    resynced = notice("resynced", 5, watch="w", changes=3, duration_ms=1.0)
    assert admitted(core, event(5), resynced, resynced) == [event(5).data] + [resynced.data] * 2
    core.subscribed({**hello, "seq": 5}, "a2", 5)  # the replay from 5
    assert admitted(core, resynced, resynced, resynced) == [resynced.data]


def test_notices_without_a_seq_always_pass() -> None:
    core = follow_core(since=10, instance="i1")
    dropped = notice("dropped", count=2, first_seq=11, last_seq=12)
    lost = notice("watch_lost", watch="w", path="/w", reason="deleted")
    assert admitted(core, dropped, lost, lost) == [dropped.data, lost.data, lost.data]


def test_the_same_instance_resumes_with_since_and_instance() -> None:
    core = follow_core(since=7, instance="i1")
    hello = {**HELLO, "instance": "i1", "seq": 9}
    assert core.greeted(hello) == Resume(7, "i1")
    core.subscribed(hello, "a1", 9)
    assert not core.pending  # a durable daemon resumes: nothing to rescan
    assert admitted(core, event(8), event(9)) == [event(8).data, event(9).data]


def test_without_a_cursor_the_first_connection_subscribes_live() -> None:
    core = follow_core()
    hello = {**HELLO, "instance": "i1", "seq": 5}
    assert core.greeted(hello) == Resume(None, None)
    core.subscribed(hello, "a1", 5)
    assert core.instance == "i1"
    assert not core.pending
    # A since given without an instance is sent as it is; the instance is learnt from hello.
    bare = follow_core(since=3)
    assert bare.greeted(hello) == Resume(3, None)


@pytest.mark.parametrize(("known", "hello"), [
    ("i1", {"instance": "i2", "seq": 0}),  # another daemon
    ("i1", {"instance": "i1", "seq": 2}),  # the same instance, without the seqs we saw
    (None, {"instance": "i2", "seq": 2}),  # a since given alone, that this daemon never reached
])
def test_a_daemon_that_cannot_resume_us_gives_an_overflow_to_rescan(
    known: str | None, hello: dict[str, Any]
) -> None:
    core = follow_core(since=4, instance=known)
    greeting = {**HELLO, **hello}
    assert core.greeted(greeting) == Resume(None, None)
    core.subscribed(greeting, "b7", 6)
    assert [m.data for m in core.pending] == [{
        "type": "overflow", "subscription": "b7", "seq": 6, "reason": "daemon_restart",
        "watch": None, "resync": False}]
    assert core.pending[0].raw == line(core.pending[0].data)
    assert core.instance == greeting["instance"]
    assert core.last_seq == 6
    # Live events follow; the overflow stands for every seq up to its own.
    assert admitted(core, event(6), event(7)) == [event(7).data]


def test_since_expired_gives_an_overflow_and_a_live_subscription() -> None:
    core = follow_core(since=4, instance="i1")
    hello = {**HELLO, "instance": "i1", "seq": 90}
    assert core.greeted(hello) == Resume(4, "i1")
    assert core.since_expired() == Resume(None, None)
    core.subscribed(hello, "a2", 90)
    assert [(m.data["reason"], m.data["seq"], m.data["resync"]) for m in core.pending] == [
        ("since_expired", 90, False)]


def test_a_lost_resumption_is_kept_until_a_subscription_succeeds() -> None:
    core = follow_core(since=4, instance="i1")
    core.greeted({**HELLO, "instance": "i2", "seq": 0})
    # The subscribe failed (the daemon went away again): the next connection still owes it.
    core.failed(closed_error(SOCK), 0.0)
    hello = {**HELLO, "instance": "i2", "seq": 1}
    assert core.greeted(hello) == Resume(None, None)
    core.subscribed(hello, "a1", 1)
    assert [m.data["reason"] for m in core.pending] == ["daemon_restart"]


def test_transient_failures_back_off_and_others_raise() -> None:
    clock = [100.0]
    core = follow_core(backoff=Backoff(initial=1.0, maximum=4.0, jitter=0.0), clock=clock)
    gone = connect_error(SOCK, FileNotFoundError(errno.ENOENT, "No such file or directory"))
    assert [core.failed(gone, 0.0) for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert core.wait_left() == 4.0
    clock[0] += 3.0
    assert core.wait_left() == 1.0
    core.subscribed({**HELLO, "instance": "i1"}, "a1", 0)
    assert core.failures == 0
    assert core.failed(closed_error(SOCK), 0.0) == 1.0
    denied = connect_error(SOCK, PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(ClientError) as info:
        core.failed(denied, 0.0)
    assert info.value is denied


def test_give_up_after_raises_the_last_error() -> None:
    clock = [0.0]
    core = follow_core(backoff=Backoff(give_up_after=10.0), clock=clock)
    core.failed(closed_error(SOCK), 0.0)
    clock[0] = 9.9
    core.failed(closed_error(SOCK), 0.0)
    clock[0] = 10.0
    last = closed_error(SOCK)
    with pytest.raises(ClientError) as info:
        core.failed(last, 0.0)
    assert info.value is last


@pytest.mark.parametrize(("error", "retried"), [
    (closed_error(SOCK), True),
    (timeout_error(SOCK, 1.0), True),
    (connect_error(SOCK, ConnectionRefusedError(errno.ECONNREFUSED, "refused")), True),
    (connect_error(SOCK, FileNotFoundError(errno.ENOENT, "missing")), True),
    (ServerError({"type": "error", "code": "too_many_clients", "message": "full"}), True),
    (connect_error(SOCK, PermissionError(errno.EACCES, "denied")), False),
    (connect_error(SOCK, NotADirectoryError(errno.ENOTDIR, "not a directory")), False),
    (ServerError({"type": "error", "code": "unknown_watch", "message": "no"}), False),
    (ServerError({"type": "error", "code": "bad_request", "message": "no"}), False),
    (ServerError({"type": "error", "code": "since_expired", "message": "no"}), False),
    (long_line_error(SOCK), False),
    (ClientError("did not greet like watchd"), False),
])
def test_what_a_follower_retries(error: ClientError, retried: bool) -> None:
    assert retryable(error) is retried
