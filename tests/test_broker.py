"""The broker's policy: seq, one serialization, filters, ACL, replay, flow control and drops."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watchd import protocol
from watchd.broker import REPLAY_STEP, Broker, Connection, Filter, Peer
from watchd.config.parse import MAX_REPLAY_BUFFER
from watchd.events import KIND_BITS, SYNTHETIC, Kind
from watchd.inotify.flags import IN_ISDIR
from watchd.protocol import ErrorCode, ProtocolError, Subscribe

INSTANCE = "i-test"
ALICE = Peer(uid=1000, gid=1000, groups=frozenset({1000}), pid=4242)
BOB = Peer(uid=1001, gid=1001, groups=frozenset({1001, 50}), pid=4343)


class FakeSink:
    """Stands for a transport: records what is written; `open` says whether it is writable."""

    def __init__(self, pause_after_writes: int | None = None) -> None:
        self.chunks: list[bytes] = []
        self.writes = 0
        self.open = True
        # Like a transport whose buffer crosses its high-water mark after some writes.
        self.pause_after_writes = pause_after_writes

    def write(self, chunks: list[bytes]) -> None:
        assert self.open, "written to while paused"
        assert all(isinstance(c, bytes) for c in chunks)
        self.chunks.extend(chunks)
        self.writes += 1
        if self.pause_after_writes is not None and self.writes >= self.pause_after_writes:
            self.open = False

    def writable(self) -> bool:
        return self.open

    def messages(self) -> list[dict[str, Any]]:
        data = b"".join(self.chunks)
        assert not data or data.endswith(b"\n")
        return [json.loads(line) for line in data.splitlines()]

    def take(self) -> list[dict[str, Any]]:
        """The messages written since the last take."""
        out = self.messages()
        self.chunks.clear()
        return out


@dataclass(frozen=True)
class FakeWatch:
    """A configured watch: a name and who may see it (None: everyone)."""

    name: str
    users: frozenset[int] | None = None
    groups: frozenset[int] | None = None
    path: str = "/srv"

    def may_see(self, uid: int, gid: int, groups: frozenset[int]) -> bool:
        if self.users is None and self.groups is None:
            return True
        if self.users is not None and uid in self.users:
            return True
        return self.groups is not None and bool(self.groups & ({gid} | groups))


def item(
    kind: Kind, path: str, *, cookie: int = 0, src: str | None = None, is_dir: bool = False
) -> tuple[int, int, str, str | None]:
    return (KIND_BITS[kind] | (IN_ISDIR if is_dir else 0), cookie, path, src)


def publish(
    broker: Broker, watch: str, time: float, items: list[tuple[int, int, str, str | None]]
) -> None:
    """Publish one read of a watch."""
    broker.publish_reads(watch, [(time, items)])


def creates(*paths: str) -> list[tuple[int, int, str, str | None]]:
    return [item(Kind.CREATE, p) for p in paths]


def make_broker(
    *, client_queue: int = 100, replay_buffer: int = 1000, max_subscriptions: int = 8,
    watches: tuple[FakeWatch, ...] = (FakeWatch("a"), FakeWatch("b")),
) -> Broker:
    broker = Broker(instance=INSTANCE, client_queue=client_queue, replay_buffer=replay_buffer,
                    max_subscriptions=max_subscriptions)
    broker.set_watches(watches)
    return broker


def join(broker: Broker, peer: Peer = ALICE, **kw: Any) -> tuple[FakeSink, Connection]:
    sink = FakeSink(**kw)
    return sink, broker.connect(sink, peer)


def sub(broker: Broker, conn: Connection, **filters: Any) -> str:
    return broker.subscribe(conn, Subscribe(id=filters.pop("id", 1), **filters))


def events(messages: list[dict[str, Any]], sid: str | None = None) -> list[dict[str, Any]]:
    return [m for m in messages
            if m["type"] == "event" and (sid is None or m["subscription"] == sid)]


def seqs(messages: list[dict[str, Any]], sid: str | None = None) -> list[int]:
    return [m["seq"] for m in events(messages, sid)]


def paths(messages: list[dict[str, Any]], sid: str | None = None) -> list[str]:
    return [m["path"] for m in events(messages, sid)]


# --- seq and serialization ---------------------------------------------------------------------


def test_events_are_numbered_in_order_across_batches_and_watches() -> None:
    broker = make_broker()
    sink, conn = join(broker)
    sid = sub(broker, conn, id="x")
    publish(broker, "a", 1700000000.25, creates("/a/1", "/a/2"))
    publish(broker, "b", 1700000001.5, [item(Kind.DELETE, "/b/3")])
    publish(broker, "a", 1700000002.0, [])
    msgs = sink.messages()
    assert msgs[0] == {"type": "subscribed", "id": "x", "subscription": sid, "seq": 0}
    assert seqs(msgs) == [1, 2, 3]
    assert paths(msgs) == ["/a/1", "/a/2", "/b/3"]
    assert broker.last_seq == 3
    assert broker.events == 3
    assert broker.stats()["seq"] == 3


def test_event_line_carries_every_field() -> None:
    broker = make_broker()
    sink, conn = join(broker)
    sid = sub(broker, conn)
    publish(broker, "a", 1700000000.125, [
        item(Kind.MOVED_FROM, "/a/old", cookie=7, is_dir=True),
        item(Kind.MOVED_TO, "/a/new", cookie=7, src="/a/old", is_dir=True),
    ])
    moved_from, moved_to = events(sink.messages())
    assert moved_from == {
        "type": "event", "subscription": sid, "seq": 1, "time": 1700000000.125, "watch": "a",
        "kind": "moved_from", "path": "/a/old", "is_dir": True,
        "mask": ["IN_MOVED_FROM", "IN_ISDIR"], "cookie": 7,
    }
    assert moved_to["kind"] == "moved_to"
    assert moved_to["src_path"] == "/a/old"
    assert moved_to["cookie"] == 7
    assert moved_to["seq"] == 2


def test_item_without_a_kind_bit_gets_no_seq() -> None:
    broker = make_broker()
    sink, conn = join(broker)
    sub(broker, conn)
    publish(broker, "a", 1.0, [(IN_ISDIR, 0, "/a/x", None), item(Kind.CREATE, "/a/y")])
    assert [(m["seq"], m["path"]) for m in events(sink.messages())] == [(1, "/a/y")]
    assert broker.events == 1


def test_each_event_is_serialized_once_for_every_subscriber(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0
    real_tail = protocol.EventEncoder.tail

    def counting_tail(self: protocol.EventEncoder, *args: Any) -> bytes:
        nonlocal calls
        calls += 1
        return real_tail(self, *args)

    monkeypatch.setattr(protocol.EventEncoder, "tail", counting_tail)
    broker = make_broker()
    sink1, conn1 = join(broker)
    sink2, conn2 = join(broker)
    sink3, conn3 = join(broker)
    sid1 = sub(broker, conn1)
    sid2 = sub(broker, conn2)
    sid2b = sub(broker, conn2, glob=("*.txt",))  # the filtered path of the same connection
    sub(broker, conn3)
    sink3.open = False  # the queued path
    for sink in (sink1, sink2):
        sink.chunks.clear()
    publish(broker, "a", 1.0, creates("/a/1.txt", "/a/2.bin", "/a/3.txt"))
    assert calls == 3
    # The very same tail object follows each subscription's own prefix.
    assert sink1.chunks[0] == protocol.event_prefix(sid1)
    tails1 = sink1.chunks[1::2]
    assert len(tails1) == 3
    tails2 = [c for c in sink2.chunks if not c.startswith(protocol.EVENT_HEAD)]
    assert len(tails2) == 5
    assert all(any(t is u for u in tails1) for t in tails2)
    assert seqs(sink2.messages(), sid2) == [1, 2, 3]
    assert seqs(sink2.messages(), sid2b) == [1, 3]
    # Per connection, events stay in seq order across its subscriptions.
    assert seqs(sink2.messages()) == [1, 1, 2, 3, 3]
    sink3.open = True
    broker.resume(conn3)
    assert seqs(sink3.messages()) == [1, 2, 3]
    assert calls == 3


def test_one_write_per_connection_per_batch() -> None:
    broker = make_broker()
    sink1, conn1 = join(broker)
    sink2, conn2 = join(broker)
    sub(broker, conn1)
    sub(broker, conn1, events=[Kind.CREATE])
    sub(broker, conn2, paths=("/a",))
    before = (sink1.writes, sink2.writes)
    publish(broker, "a", 1.0, creates(*(f"/a/{i}" for i in range(50))))
    assert (sink1.writes, sink2.writes) == (before[0] + 1, before[1] + 1)
    assert len(events(sink1.messages())) == 100
    assert len(events(sink2.messages())) == 50


def test_reads_published_together_keep_their_times_and_cost_one_write() -> None:
    broker = make_broker()
    sink, conn = join(broker)
    sub(broker, conn)
    sink2, conn2 = join(broker)
    sub(broker, conn2, events=[Kind.DELETE])  # a filtered connection: one write as well
    before = (sink.writes, sink2.writes)
    broker.publish_reads("a", [(10.5, creates("/a/1", "/a/2")), (11.25, []),
                               (12.75, [item(Kind.DELETE, "/a/1")])])
    assert (sink.writes, sink2.writes) == (before[0] + 1, before[1] + 1)
    got = events(sink.messages())
    assert [(m["seq"], m["time"], m["path"]) for m in got] == [
        (1, 10.5, "/a/1"), (2, 10.5, "/a/2"), (3, 12.75, "/a/1")]
    assert [(m["seq"], m["kind"]) for m in events(sink2.messages())] == [(3, "delete")]
    # The replay history holds them as they were sent.
    sink3, conn3 = join(broker)
    sid3 = sub(broker, conn3, since=0)
    assert events(sink3.messages()) == [dict(m, subscription=sid3) for m in got]


# --- filters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["/a/x.csv", "/a/d/y.txt", "/b/z.csv", "/a/d"]),
        ({"watch": ("b",)}, ["/b/z.csv"]),
        ({"watch": ("a", "b")}, ["/a/x.csv", "/a/d/y.txt", "/b/z.csv", "/a/d"]),
        ({"events": frozenset({Kind.DELETE})}, ["/a/d"]),
        ({"events": frozenset({Kind.CREATE, Kind.CLOSE_WRITE})},
         ["/a/x.csv", "/a/d/y.txt", "/b/z.csv"]),
        ({"paths": ("/a/d",)}, ["/a/d/y.txt", "/a/d"]),
        ({"glob": ("*.csv",)}, ["/a/x.csv", "/b/z.csv"]),
        ({"glob": ("*.csv", "y.*")}, ["/a/x.csv", "/a/d/y.txt", "/b/z.csv"]),
        ({"watch": ("a",), "glob": ("*.csv",)}, ["/a/x.csv"]),
        ({"paths": ("/a",), "events": frozenset({Kind.CLOSE_WRITE}), "glob": ("y*",)},
         ["/a/d/y.txt"]),
        ({"paths": ("/a",), "events": frozenset({Kind.CREATE}), "glob": ("y*",)}, []),
    ],
)
def test_filters_and_their_conjunction(filters: dict[str, Any], expected: list[str]) -> None:
    broker = make_broker()
    sink, conn = join(broker)
    sid = sub(broker, conn, **filters)
    publish(broker, "a", 1.0, [item(Kind.CREATE, "/a/x.csv"),
                              item(Kind.CLOSE_WRITE, "/a/d/y.txt")])
    publish(broker, "b", 2.0, [item(Kind.CREATE, "/b/z.csv")])
    publish(broker, "a", 3.0, [item(Kind.DELETE, "/a/d", is_dir=True)])
    assert paths(sink.messages(), sid) == expected


@pytest.mark.parametrize(
    ("prefix", "path", "match"),
    [
        ("/a/b", "/a/b", True),
        ("/a/b", "/a/b/c", True),
        ("/a/b", "/a/b/c/d/e", True),
        ("/a/b", "/a/bc", False),
        ("/a/b", "/a/bc/d", False),
        ("/a/b", "/a", False),
        ("/a/b", "/", False),
        ("/", "/", True),
        ("/", "/anything/at/all", True),
    ],
)
def test_paths_filter_boundaries(prefix: str, path: str, match: bool) -> None:
    flt = Filter.of(Subscribe(paths=(prefix,)))
    assert flt.matches(KIND_BITS[Kind.CREATE], path) is match


def test_paths_filter_through_the_broker() -> None:
    broker = make_broker()
    sink, conn = join(broker)
    sid = sub(broker, conn, paths=("/a/b", "/a/x/y"))
    publish(broker, "a", 1.0, creates("/a/b", "/a/b/c", "/a/bc", "/a/x", "/a/x/y/z", "/a/x/yz"))
    assert paths(sink.messages(), sid) == ["/a/b", "/a/b/c", "/a/x/y/z"]


@pytest.mark.parametrize(
    ("patterns", "path", "match"),
    [
        (("*.csv",), "/d/a.csv", True),
        (("*.csv",), "/d/a.csv.tmp", False),
        (("*.csv",), "/d.csv/a", False),  # the base name only, not the directories
        (("*.CSV",), "/d/a.csv", False),  # case matters, as in fnmatchcase
        (("?.log",), "/d/a.log", True),
        (("?.log",), "/d/ab.log", False),
        (("[!.]*",), "/d/.hidden", False),
        (("[!.]*",), "/d/seen", True),
        (("report-[0-9]*",), "/d/report-7.pdf", True),
        (("*.txt", "*.md"), "/d/readme.md", True),
        (("*.txt", "*.md"), "/d/readme.rst", False),
        (("a*b",), "/x/a\nb", True),  # newlines in names are characters like any other
        (("[",), "/d/[", True),  # an unclosed bracket is a literal
    ],
)
def test_glob_on_the_base_name(patterns: tuple[str, ...], path: str, match: bool) -> None:
    flt = Filter.of(Subscribe(glob=patterns))
    assert flt.matches(KIND_BITS[Kind.CREATE], path) is match


def test_simple_filter_is_the_one_without_kind_path_or_glob() -> None:
    assert Filter.of(Subscribe()).simple
    assert Filter.of(Subscribe(watch=("a",))).simple
    assert Filter.of(Subscribe(paths=("/",))).simple
    assert Filter.of(Subscribe(events=frozenset(Kind))).simple
    assert not Filter.of(Subscribe(events=frozenset({Kind.CREATE}))).simple
    assert not Filter.of(Subscribe(paths=("/a",))).simple
    assert not Filter.of(Subscribe(glob=("*",))).simple


# --- ACL and watch names -------------------------------------------------------------------------


def acl_broker() -> Broker:
    return make_broker(watches=(FakeWatch("public"),
                                FakeWatch("private", users=frozenset({1000})),
                                FakeWatch("staff", groups=frozenset({50}))))


def test_naming_an_unknown_watch_is_refused_with_the_visible_names() -> None:
    broker = acl_broker()
    sink, conn = join(broker, BOB)
    with pytest.raises(ProtocolError) as info:
        sub(broker, conn, id=9, watch=("public", "nope"))
    assert info.value.code is ErrorCode.UNKNOWN_WATCH
    assert info.value.id == 9
    assert '"nope"' in info.value.message
    assert "public" in info.value.message
    assert "private" not in info.value.message  # names bob may not see are not revealed
    assert conn.subscriptions == ()
    assert sink.messages() == []


def test_naming_a_forbidden_watch_is_refused_as_unknown() -> None:
    broker = acl_broker()
    _, conn = join(broker, BOB)
    with pytest.raises(ProtocolError) as hidden:
        sub(broker, conn, id="f", watch=("private",))
    with pytest.raises(ProtocolError) as missing:
        sub(broker, conn, id="f", watch=("nonesuch",))
    # The same answer as for a name that is not configured: probing names tells nothing.
    assert hidden.value.code is missing.value.code is ErrorCode.UNKNOWN_WATCH
    assert hidden.value.id == "f"
    assert hidden.value.message == missing.value.message.replace("nonesuch", "private")
    # A supplementary group is enough where the watch allows that group.
    assert sub(broker, conn, watch=("staff",))


def test_subscribe_everything_never_receives_an_invisible_watch() -> None:
    broker = acl_broker()
    alice_sink, alice = join(broker, ALICE)
    bob_sink, bob = join(broker, BOB)
    sub(broker, alice)
    sub(broker, bob)
    for watch in ("public", "private", "staff"):
        publish(broker, watch, 1.0, creates(f"/{watch}/f"))
    assert paths(alice_sink.messages()) == ["/public/f", "/private/f"]
    assert paths(bob_sink.messages()) == ["/public/f", "/staff/f"]


def test_notices_respect_the_acl_and_the_watch_filter() -> None:
    broker = acl_broker()
    alice_sink, alice = join(broker, ALICE)
    bob_sink, bob = join(broker, BOB)
    sid_all = sub(broker, alice)
    sid_public = sub(broker, alice, watch=("public",))
    sid_bob = sub(broker, bob)
    alice_sink.take()
    bob_sink.take()
    broker.watch_lost("private", "/srv/private", "deleted")
    broker.watch_restored("private", "/srv/private")
    assert alice_sink.take() == [
        {"type": "watch_lost", "subscription": sid_all, "watch": "private",
         "path": "/srv/private", "reason": "deleted"},
        {"type": "watch_restored", "subscription": sid_all, "watch": "private",
         "path": "/srv/private"},
    ]
    assert bob_sink.take() == []
    broker.overflow("public", "kernel_queue")
    assert {(m["subscription"], m["watch"]) for m in alice_sink.take()} == {
        (sid_all, "public"), (sid_public, "public")}
    assert [m["subscription"] for m in bob_sink.take()] == [sid_bob]
    broker.overflow(None, "watcher_restart")
    assert len(alice_sink.take()) == 2
    assert bob_sink.take() == [{"type": "overflow", "subscription": sid_bob, "seq": 0,
                                "reason": "watcher_restart", "watch": None, "resync": False}]
    assert broker.overflows == 2  # occasions, not notices


def test_resync_flag_is_per_subscription_and_resynced_is_replayed_in_place() -> None:
    broker = acl_broker()
    alice_sink, alice = join(broker, ALICE)
    sid_all = sub(broker, alice)  # sees public and private
    sid_public = sub(broker, alice, watch=("public",))
    publish(broker, "public", 1.0, creates("/public/before"))
    alice_sink.take()
    # A restart with only "public" resynced: whoever also receives "private" must rescan.
    broker.overflow(None, "watcher_restart", frozenset({"public"}))
    flags = {m["subscription"]: m["resync"] for m in alice_sink.take()}
    assert flags == {sid_all: False, sid_public: True}
    publish(broker, "public", 1.0, [(0x100 | SYNTHETIC, 0, "/public/new", None)])
    broker.resynced("public", 1, 2.5)
    got = [m for m in alice_sink.take() if m["subscription"] == sid_public]
    assert [m["type"] for m in got] == ["event", "resynced"]
    assert got[0]["synthetic"] is True
    assert got[1] == {"type": "resynced", "subscription": sid_public, "seq": 2,
                      "watch": "public", "changes": 1, "duration_ms": 2.5}
    # A replay from before the loss meets both notices in their place among the events.
    replay_sink, late = join(broker, ALICE)
    sid = sub(broker, late, since=0, instance=broker.instance, watch=("public",))
    assert [(m["type"], m["seq"]) for m in replay_sink.messages()[1:]
            if m["subscription"] == sid] == [
        ("event", 1), ("overflow", 1), ("event", 2), ("resynced", 2)]


def test_set_watches_recomputes_the_acl() -> None:
    broker = make_broker(watches=(FakeWatch("a"), FakeWatch("b")))
    sink, conn = join(broker, BOB)
    sid_all = sub(broker, conn)
    sid_b = sub(broker, conn, watch=("b",))
    publish(broker, "b", 1.0, creates("/b/1"))
    # A reload forbids b to bob (and moves it, which bob must not learn) and drops a.
    broker.set_watches([FakeWatch("b", users=frozenset({1000}), path="/private/new")])
    publish(broker, "b", 2.0, creates("/b/2"))
    publish(broker, "a", 3.0, creates("/a/3"))
    # Another reload brings both back, open to all.
    broker.set_watches([FakeWatch("a"), FakeWatch("b")])
    publish(broker, "b", 4.0, creates("/b/4"))
    publish(broker, "a", 5.0, creates("/a/5"))
    msgs = sink.messages()
    assert paths(msgs, sid_all) == ["/b/1", "/b/4", "/a/5"]
    assert paths(msgs, sid_b) == ["/b/1", "/b/4"]
    # Each is told when it loses b to the ACL and when it gets it back (a is gone: the daemon
    # tells them "removed" before it reloads).
    notices = [(m["type"], m["subscription"], m["watch"], m.get("reason"))
               for m in msgs if m["type"] in ("watch_lost", "watch_restored")]
    assert notices == [
        ("watch_lost", sid_all, "b", "forbidden"), ("watch_lost", sid_b, "b", "forbidden"),
        ("watch_restored", sid_all, "b", None), ("watch_restored", sid_b, "b", None)]
    # The path bob knew, not where the reload moved the watch he may no longer see.
    assert [m["path"] for m in msgs if m["type"] == "watch_lost"] == ["/srv", "/srv"]
    # A watch a reload added is named in new subscriptions and seen by existing catch-alls.
    broker.set_watches([FakeWatch("a"), FakeWatch("b"), FakeWatch("c")])
    sid_c = sub(broker, conn, watch=("c",))
    publish(broker, "c", 6.0, creates("/c/6"))
    assert paths(sink.messages(), sid_c) == ["/c/6"]
    assert paths(sink.messages(), sid_all)[-1] == "/c/6"


# --- subscriptions -------------------------------------------------------------------------------


def test_too_many_subscriptions_is_per_connection() -> None:
    broker = make_broker(max_subscriptions=2)
    _, conn = join(broker)
    _, other = join(broker)
    sub(broker, conn)
    sub(broker, conn)
    with pytest.raises(ProtocolError) as info:
        sub(broker, conn, id=3)
    assert info.value.code is ErrorCode.TOO_MANY_SUBSCRIPTIONS
    assert info.value.id == 3
    assert "daemon.max_subscriptions" in info.value.message
    assert sub(broker, other)
    assert broker.stats()["subscriptions"] == 3


def test_unsubscribe_stops_delivery_and_refuses_foreign_sids() -> None:
    broker = make_broker()
    sink, conn = join(broker)
    _, other = join(broker)
    sid = sub(broker, conn)
    other_sid = sub(broker, other)
    with pytest.raises(ProtocolError) as info:
        broker.unsubscribe(conn, other_sid, "u1")
    assert info.value.code is ErrorCode.UNKNOWN_SUBSCRIPTION
    assert info.value.id == "u1"
    publish(broker, "a", 1.0, creates("/a/1"))
    broker.unsubscribe(conn, sid, "u2")
    publish(broker, "a", 2.0, creates("/a/2"))
    msgs = sink.messages()
    assert msgs[-1] == {"type": "unsubscribed", "id": "u2", "subscription": sid}
    assert paths(msgs) == ["/a/1"]
    with pytest.raises(ProtocolError):
        broker.unsubscribe(conn, sid, "u3")
    assert conn.subscriptions == ()


def test_sids_are_unique_across_connections() -> None:
    broker = make_broker()
    _, c1 = join(broker)
    _, c2 = join(broker)
    sids = [sub(broker, c) for c in (c1, c2, c1, c2)]
    assert len(set(sids)) == 4
    assert all(s.isascii() and s.isalnum() for s in sids)


def test_disconnect_releases_everything() -> None:
    broker = make_broker(client_queue=3)
    sink, conn = join(broker)
    sub(broker, conn)
    sub(broker, conn, glob=("*",))
    sink.take()
    sink.open = False
    publish(broker, "a", 1.0, creates(*(f"/a/{i}" for i in range(10))))
    assert conn.queued_events == 3
    assert broker.stats()["clients"] == 1
    broker.disconnect(conn)
    assert broker.stats()["clients"] == 0
    assert broker.stats()["subscriptions"] == 0
    assert conn.queued_events == 0
    assert not conn.queue
    sink.open = True
    broker.resume(conn)
    broker.reply(conn, protocol.pong(1))
    publish(broker, "a", 2.0, creates("/a/late"))
    broker.overflow(None, "kernel_queue")
    assert sink.chunks == []
    broker.disconnect(conn)  # twice is harmless


# --- replay --------------------------------------------------------------------------------------


def test_since_replays_then_goes_live_without_duplicates_or_gaps() -> None:
    broker = make_broker()
    _, first = join(broker)
    sub(broker, first)
    publish(broker, "a", 1.0, creates(*(f"/a/{i}" for i in range(1, 6))))
    publish(broker, "b", 1.0, creates("/b/6"))
    sink, conn = join(broker)
    sid = sub(broker, conn, id=5, since=2, watch=("a",), instance=INSTANCE)
    publish(broker, "a", 2.0, creates("/a/7"))
    msgs = sink.messages()
    assert msgs[0] == {"type": "subscribed", "id": 5, "subscription": sid, "seq": 6}
    assert seqs(msgs[1:], sid) == [3, 4, 5, 7]
    assert all(m["type"] == "event" for m in msgs[1:])


def test_since_equal_to_last_seq_replays_nothing() -> None:
    broker = make_broker()
    publish(broker, "a", 1.0, creates("/a/1", "/a/2"))
    sink, conn = join(broker)
    sub(broker, conn, since=2)
    assert [m["type"] for m in sink.messages()] == ["subscribed"]


def test_replay_applies_the_filters() -> None:
    broker = make_broker()
    publish(broker, "a", 1.0, [item(Kind.CREATE, "/a/x.csv"), item(Kind.DELETE, "/a/y.csv"),
                              item(Kind.CREATE, "/a/z.txt"), item(Kind.CREATE, "/b/q.csv")])
    sink, conn = join(broker)
    sid = sub(broker, conn, since=0, events=frozenset({Kind.CREATE}), glob=("*.csv",))
    assert seqs(sink.messages(), sid) == [1, 4]


def test_replay_respects_the_acl() -> None:
    broker = acl_broker()
    publish(broker, "private", 1.0, creates("/private/1"))
    publish(broker, "public", 1.0, creates("/public/2"))
    sink, conn = join(broker, BOB)
    sub(broker, conn, since=0)
    assert paths(sink.messages()) == ["/public/2"]


def test_overflow_markers_are_replayed_in_order() -> None:
    broker = make_broker()
    publish(broker, "a", 1.0, creates("/a/1", "/a/2"))
    broker.overflow("a", "kernel_queue")
    broker.overflow("b", "kernel_queue")  # not for a subscription to "a"
    publish(broker, "a", 2.0, creates("/a/3"))
    broker.overflow(None, "watcher_restart")
    publish(broker, "a", 3.0, creates("/a/4"))
    sink, conn = join(broker)
    sid = sub(broker, conn, since=1, watch=("a",))
    got = [(m["type"], m.get("seq"), m.get("watch")) for m in sink.messages()[1:]]
    assert got == [
        ("event", 2, "a"),
        ("overflow", 2, "a"),
        ("event", 3, "a"),
        ("overflow", 3, None),
        ("event", 4, "a"),
    ]
    assert all(m["subscription"] == sid for m in sink.messages())
    # A marker at since itself is replayed (the client may have gone before it arrived);
    # a since past it does not see it again.
    sink2, conn2 = join(broker)
    sub(broker, conn2, since=3)
    assert [m["type"] for m in sink2.messages()] == ["subscribed", "overflow", "event"]
    sink3, conn3 = join(broker)
    sub(broker, conn3, since=4)
    assert [m["type"] for m in sink3.messages()] == ["subscribed"]


def test_overflow_at_since_is_replayed_even_with_no_event_after() -> None:
    broker = make_broker()
    publish(broker, "a", 1.0, creates("/a/1"))
    broker.overflow("a", "kernel_queue")
    broker.overflow("a", "kernel_queue")  # the same occasion twice is held once
    sink, conn = join(broker)
    sub(broker, conn, since=1)
    assert [(m["type"], m["seq"]) for m in sink.messages()] == [("subscribed", 1),
                                                                 ("overflow", 1)]
    assert broker.overflows == 2


def test_every_resynced_is_replayed_even_alike() -> None:
    # One scan answered two resyncs announced (the watcher died between a notice and its
    # scan): a replay gives both `resynced`, as the live subscriber got them.
    broker = make_broker()
    publish(broker, "a", 1.0, creates("/a/1"))
    broker.overflow("a", "kernel_queue", frozenset({"a"}))
    broker.overflow(None, "watcher_restart", frozenset({"a"}))
    broker.resynced("a", 0, 1.0)
    broker.resynced("a", 0, 1.0)
    sink, conn = join(broker)
    sub(broker, conn, since=1)
    assert [(m["type"], m.get("reason")) for m in sink.messages()[1:]] == [
        ("overflow", "kernel_queue"), ("overflow", "watcher_restart"), ("resynced", None),
        ("resynced", None)]


def test_since_expired_names_the_oldest_seq_held() -> None:
    broker = make_broker(replay_buffer=4)
    publish(broker, "a", 1.0, creates(*(f"/a/{i}" for i in range(1, 11))))
    assert broker.stats()["oldest"] == 7
    _, conn = join(broker)
    with pytest.raises(ProtocolError) as info:
        sub(broker, conn, id="e", since=5)
    assert info.value.code is ErrorCode.SINCE_EXPIRED
    assert info.value.extra == {"oldest": 7}
    assert info.value.id == "e"
    line = json.loads(info.value.reply())
    assert line["oldest"] == 7
    assert line["code"] == "since_expired"
    # The boundary: since = oldest - 1 still has everything after it.
    sink, conn2 = join(broker)
    sub(broker, conn2, since=6)
    assert seqs(sink.messages()) == [7, 8, 9, 10]


def test_since_zero_works_until_the_history_wraps() -> None:
    broker = make_broker(replay_buffer=3)
    assert broker.stats()["oldest"] == 1
    sink, conn = join(broker)
    sub(broker, conn, since=0)  # nothing published yet
    publish(broker, "a", 1.0, creates("/a/1", "/a/2", "/a/3"))
    assert seqs(sink.messages()) == [1, 2, 3]
    sink2, conn2 = join(broker)
    sub(broker, conn2, since=0)
    assert seqs(sink2.messages()) == [1, 2, 3]
    publish(broker, "a", 1.0, creates("/a/4"))
    with pytest.raises(ProtocolError) as info:
        sub(broker, conn2, since=0)
    assert info.value.extra["oldest"] == 2


def test_since_of_another_instance_is_expired() -> None:
    broker = make_broker()
    publish(broker, "a", 1.0, creates("/a/1"))
    _, conn = join(broker)
    with pytest.raises(ProtocolError) as info:
        sub(broker, conn, since=1, instance="i-previous")
    assert info.value.code is ErrorCode.SINCE_EXPIRED
    assert "restarted" in info.value.message
    assert info.value.extra == {"oldest": 1}
    assert conn.subscriptions == ()


def test_since_past_the_last_seq_is_a_bad_request() -> None:
    broker = make_broker()
    publish(broker, "a", 1.0, creates("/a/1"))
    _, conn = join(broker)
    with pytest.raises(ProtocolError) as info:
        sub(broker, conn, id=1, since=2)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert "since" in info.value.message
    assert conn.subscriptions == ()


def test_a_replay_waits_for_the_client_to_read_and_keeps_seq_order() -> None:
    broker = make_broker(client_queue=2, replay_buffer=100)
    publish(broker, "a", 1.0, creates(*(f"/a/{i}" for i in range(1, 21))))
    sink, conn = join(broker)
    sink.open = False
    sid = sub(broker, conn, since=0)
    assert conn.queued_events == 0  # nothing of it is produced while the client does not read
    # Live events while the replay is under way: taken from the history in their turn.
    publish(broker, "a", 2.0, creates("/a/21"))
    broker.overflow("a", "kernel_queue")
    publish(broker, "a", 3.0, creates("/a/22"))
    assert conn.queued_events == 0
    sink.open = True
    broker.resume(conn)
    msgs = [m for m in sink.messages()
            if m.get("subscription") == sid and m["type"] != "subscribed"]
    assert [m["type"] for m in msgs[:20]] == ["event"] * 20
    assert [(m["type"], m.get("seq")) for m in msgs[19:]] == [
        ("event", 20), ("event", 21), ("overflow", 21), ("event", 22)]
    assert seqs(msgs) == list(range(1, 23))
    publish(broker, "a", 4.0, creates("/a/23"))  # live now
    assert seqs(sink.take(), sid)[-1] == 23
    assert not conn.replays


def test_a_replay_takes_bounded_steps_between_turns_of_the_loop() -> None:
    deferred: list[Any] = []
    broker = Broker(instance=INSTANCE, client_queue=100, replay_buffer=50_000,
                    max_subscriptions=8, defer=deferred.append)
    broker.set_watches((FakeWatch("a"), FakeWatch("b")))
    total = 3 * REPLAY_STEP
    publish(broker, "b", 1.0, creates(*(f"/b/{i}" for i in range(total))))
    sink, conn = join(broker)
    sub(broker, conn, since=0, watch=("a",))  # matches none of them: only looking costs
    assert len(deferred) == 1 and conn.replays
    turns = 0
    while deferred:
        deferred.pop()()
        turns += 1
    assert turns == 2 and not conn.replays
    assert [m["type"] for m in sink.take()] == ["subscribed"]


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_replay_from_anywhere_in_a_wrapped_history_is_exact(where: str) -> None:
    size = 2 * REPLAY_STEP + 7  # not a multiple of the step: the ring's seam falls mid-step
    deferred: list[Any] = []
    broker = Broker(instance=INSTANCE, client_queue=100, replay_buffer=size,
                    max_subscriptions=8, defer=deferred.append)
    broker.set_watches((FakeWatch("a"), FakeWatch("b")))
    total = 3 * size + 5  # the history has wrapped several times
    watch_of = {}
    seq = 0
    while seq < total:  # batches of uneven sizes, the watches taking turns
        n = min(total - seq, 997 if seq % 2 else 1409)
        watch = "ab"[(seq // 997) % 2]
        made = (f"/{watch}/{i}" for i in range(seq + 1, seq + n + 1))
        publish(broker, watch, 1.0, creates(*made))
        watch_of.update(dict.fromkeys(range(seq + 1, seq + n + 1), watch))
        seq += n
    oldest = total - size + 1
    assert broker.oldest == oldest
    since = {"start": oldest - 1, "middle": oldest + size // 2, "end": total - 1}[where]
    sink, conn = join(broker)
    sid = sub(broker, conn, since=since, watch=("a",))
    while deferred:
        deferred.pop(0)()
    wanted = [s for s in range(since + 1, total + 1) if watch_of[s] == "a"]
    msgs = sink.messages()
    assert seqs(msgs, sid) == wanted
    assert paths(msgs, sid) == [f"/a/{s}" for s in wanted]
    assert not conn.replays and not [m for m in msgs if m["type"] == "dropped"]
    publish(broker, "a", 2.0, creates("/a/live"))  # and then live
    assert seqs(sink.take(), sid)[-1] == total + 1


def test_a_wrapped_history_resized_keeps_its_newest_events_in_order() -> None:
    broker = make_broker(replay_buffer=7)
    publish(broker, "a", 1.0, creates(*(f"/a/{i}" for i in range(1, 20))))  # holds 13..19
    broker.set_limits(client_queue=100, replay_buffer=4, max_subscriptions=8)
    assert broker.oldest == 16
    broker.set_limits(client_queue=100, replay_buffer=9, max_subscriptions=8)
    assert broker.oldest == 16  # growing brings nothing back
    publish(broker, "a", 1.0, creates(*(f"/a/{i}" for i in range(20, 28))))
    assert broker.oldest == 19
    sink, conn = join(broker)
    sid = sub(broker, conn, since=18)
    assert seqs(sink.messages(), sid) == list(range(19, 28))


def test_the_history_takes_memory_as_events_arrive_not_for_its_limit() -> None:
    tracemalloc.start()
    try:
        broker = make_broker(replay_buffer=MAX_REPLAY_BUFFER)
        broker.set_limits(client_queue=100, replay_buffer=MAX_REPLAY_BUFFER - 1,
                          max_subscriptions=8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes for an empty history"


def test_a_history_filled_one_event_at_a_time_wraps_in_order() -> None:
    broker = make_broker(replay_buffer=5)
    for i in range(1, 13):  # one event per publish: held one by one, wrapping twice
        publish(broker, "a", 1.0, creates(f"/a/{i}"))
    assert (broker.oldest, broker.last_seq) == (8, 12)
    publish(broker, "a", 1.0, creates("/a/13", "/a/14"))  # then a batch across the seam
    sink, conn = join(broker)
    sid = sub(broker, conn, since=9)
    assert paths(sink.messages(), sid) == [f"/a/{i}" for i in range(10, 15)]


def test_what_the_history_forgets_before_a_replay_reaches_it_is_reported_dropped() -> None:
    broker = make_broker(client_queue=100, replay_buffer=10)
    publish(broker, "a", 1.0, creates(*(f"/a/{i}" for i in range(1, 11))))
    publish(broker, "b", 1.0, creates("/b/x"))  # seq 11, not for this subscription
    sink, conn = join(broker)
    sink.open = False
    sid = sub(broker, conn, since=1, watch=("a",))
    publish(broker, "a", 2.0, creates(*(f"/a/{i}" for i in range(12, 17))))  # forgets 2..6
    sink.open = True
    broker.resume(conn)
    msgs = [m for m in sink.messages()
            if m.get("subscription") == sid and m["type"] != "subscribed"]
    assert msgs[0]["type"] == "dropped"
    assert (msgs[0]["count"], msgs[0]["first_seq"], msgs[0]["last_seq"]) == (5, 2, 6)
    assert seqs(msgs) == [7, 8, 9, 10, 12, 13, 14, 15, 16]


# --- flow control and drops ----------------------------------------------------------------------


def test_slow_connection_drops_past_its_queue_and_is_told_exactly() -> None:
    broker = make_broker(client_queue=5)
    fast_sink, fast = join(broker)
    slow_sink, slow = join(broker)
    fast_sid = sub(broker, fast)
    slow_sid = sub(broker, slow)
    slow_sink.take()
    slow_sink.open = False
    for i in range(4):
        publish(broker, "a", float(i), creates(*(f"/a/{i}-{j}" for j in range(5))))
    assert slow_sink.chunks == []
    assert slow.queued_events == 5
    assert broker.dropped == 15
    assert seqs(fast_sink.messages(), fast_sid) == list(range(1, 21))  # unaffected
    slow_sink.open = True
    broker.resume(slow)
    msgs = slow_sink.take()
    assert seqs(msgs) == [1, 2, 3, 4, 5]
    assert msgs[5:] == [{"type": "dropped", "subscription": slow_sid, "count": 15,
                         "first_seq": 6, "last_seq": 20}]
    assert slow.queued_events == 0
    publish(broker, "a", 9.0, creates("/a/after"))
    assert seqs(slow_sink.take()) == [21]
    assert broker.stats()["dropped"] == 15


def test_the_drops_of_a_closed_connection_stay_counted() -> None:
    broker = make_broker(client_queue=2)
    slow_sink, slow = join(broker)
    _, other = join(broker, BOB)
    sub(broker, slow)
    sub(broker, other)
    slow_sink.open = False
    publish(broker, "a", 1.0, creates(*(f"/a/{i}" for i in range(5))))  # 3 dropped for slow
    assert broker.stats()["dropped"] == 3
    assert broker.stats_for(ALICE.uid, ["a"])["dropped"] == 3
    broker.disconnect(slow)
    assert broker.stats()["dropped"] == 3
    assert broker.stats_for(ALICE.uid, ["a"])["dropped"] == 3  # its own user's, still
    assert broker.stats_for(BOB.uid, ["a"])["dropped"] == 0  # and no one else's


def test_a_queue_reaching_near_full_is_signalled_once_to_whoever_takes_it() -> None:
    broker = make_broker(client_queue=10)
    sink, conn = join(broker)
    sub(broker, conn)
    sink.open = False
    near_full = broker.levels.near_full
    publish(broker, "a", 1.0, creates(*(f"/a/{i}" for i in range(near_full - 1))))
    assert not broker.near_full_reached
    publish(broker, "a", 1.0, creates("/a/last"))
    assert broker.near_full_reached
    assert broker.take_near_full()
    assert not broker.near_full_reached and not broker.take_near_full()


def test_dropped_notice_sits_at_the_gap_when_the_next_event_arrives() -> None:
    broker = make_broker(client_queue=3)
    sink, conn = join(broker)
    sub(broker, conn)
    sink.take()
    sink.open = False
    publish(broker, "a", 1.0, creates(*(f"/a/{i}" for i in range(1, 8))))  # 1-3 queued, 4-7 lost
    # The transport drained on its own; the next batch finds the sink writable.
    sink.open = True
    publish(broker, "a", 2.0, creates("/a/8", "/a/9"))
    got = [(m["type"], m.get("seq", m.get("first_seq"))) for m in sink.take()]
    assert got == [("event", 1), ("event", 2), ("event", 3), ("dropped", 4),
                   ("event", 8), ("event", 9)]


def test_dropped_notice_precedes_the_next_queued_line_of_its_subscription() -> None:
    broker = make_broker(client_queue=4)
    # The transport pauses again after one write: the queue drains one chunk at a time.
    sink, conn = join(broker)
    sid = sub(broker, conn)
    sink.take()
    sink.open = False
    publish(broker, "a", 1.0, creates(*(f"/a/{i}" for i in range(1, 7))))  # 1-4 queued, 5-6 lost
    sink.open = True
    sink.pause_after_writes = sink.writes + 1
    broker.resume(conn)  # drains all four in one chunk, then reports the gap (there is room)
    assert sink.open is False
    publish(broker, "a", 2.0, creates("/a/7"))
    broker.overflow("a", "kernel_queue")
    sink.open = True
    sink.pause_after_writes = None
    broker.resume(conn)
    msgs = sink.take()
    got = [(m["type"], m.get("seq", m.get("first_seq"))) for m in msgs]
    assert got == [("event", 1), ("event", 2), ("event", 3), ("event", 4), ("dropped", 5),
                   ("event", 7), ("overflow", 7)]
    assert msgs[4] == {"type": "dropped", "subscription": sid, "count": 2,
                       "first_seq": 5, "last_seq": 6}


def test_each_subscription_gets_its_own_dropped_range() -> None:
    broker = make_broker(client_queue=2)
    sink, conn = join(broker)
    sid_all = sub(broker, conn)
    sid_csv = sub(broker, conn, glob=("*.csv",))
    sink.take()
    sink.open = False
    # seq 1: both (2 queued, full). seq 2..5: dropped for whoever matches.
    publish(broker, "a", 1.0, creates("/a/1.csv", "/a/2.txt", "/a/3.csv", "/a/4.txt", "/a/5.txt"))
    assert broker.dropped == 4 + 1
    sink.open = True
    broker.resume(conn)
    notices = {m["subscription"]: (m["count"], m["first_seq"], m["last_seq"])
               for m in sink.take() if m["type"] == "dropped"}
    assert notices == {sid_all: (4, 2, 5), sid_csv: (1, 3, 3)}


def test_overflow_on_a_lagging_subscription_comes_after_its_dropped_notice() -> None:
    broker = make_broker(client_queue=1)
    sink, conn = join(broker)
    sub(broker, conn)
    sink.take()
    sink.open = False
    publish(broker, "a", 1.0, creates("/a/1", "/a/2", "/a/3"))
    broker.overflow("a", "kernel_queue")
    sink.open = True
    broker.resume(conn)
    assert [m["type"] for m in sink.take()] == ["event", "dropped", "overflow"]


def test_replies_are_never_dropped_and_keep_their_order() -> None:
    broker = make_broker(client_queue=2)
    sink, conn = join(broker)
    sid = sub(broker, conn)
    sink.take()
    sink.open = False
    publish(broker, "a", 1.0, creates("/a/1", "/a/2", "/a/3"))
    for i in range(50):
        broker.reply(conn, protocol.pong(i))
    publish(broker, "a", 2.0, creates("/a/4"))
    second = sub(broker, conn, id="s2")
    broker.unsubscribe(conn, sid, "bye")
    assert sink.chunks == []
    sink.open = True
    broker.resume(conn)
    msgs = sink.take()
    kinds = [m["type"] for m in msgs]
    assert kinds[:2] == ["event", "event"]
    assert [m["id"] for m in msgs if m["type"] == "pong"] == list(range(50))
    assert kinds[2:52] == ["pong"] * 50
    assert msgs[52] == {"type": "subscribed", "id": "s2", "subscription": second, "seq": 4}
    # The unsubscribed subscription is still told of its gap before it ends.
    assert msgs[53] == {"type": "dropped", "subscription": sid, "count": 2,
                        "first_seq": 3, "last_seq": 4}
    assert msgs[54] == {"type": "unsubscribed", "id": "bye", "subscription": sid}
    assert len(msgs) == 55


def test_queue_drains_in_chunks_while_the_sink_stays_writable() -> None:
    broker = make_broker(client_queue=10_000)
    sink, conn = join(broker)
    sub(broker, conn)
    sink.take()
    sink.open = False
    publish(broker, "a", 1.0, creates(*(f"/a/{i}" for i in range(2000))))
    sink.open = True
    sink.pause_after_writes = sink.writes + 2  # pauses after two chunks
    broker.resume(conn)
    first = sink.take()
    assert 0 < len(first) < 2000
    assert conn.queued_events == 2000 - len(first)
    sink.pause_after_writes = None
    sink.open = True
    broker.resume(conn)
    assert seqs(first + sink.take()) == list(range(1, 2001))
    assert conn.queued_events == 0


def test_gap_is_reported_as_soon_as_the_queue_has_room() -> None:
    broker = make_broker(client_queue=600)
    sink, conn = join(broker)
    sid = sub(broker, conn)
    sink.take()
    sink.open = False
    publish(broker, "a", 1.0, creates(*(f"/a/{i}" for i in range(1, 1001))))
    sink.open = True
    sink.pause_after_writes = sink.writes + 1  # the transport takes one chunk, then pauses
    broker.resume(conn)
    first = sink.take()
    assert 0 < len(first) < 600
    # Still paused, yet the notice already waits in line right behind the last queued event.
    assert json.loads(conn.queue[-1]) == {"type": "dropped", "subscription": sid, "count": 400,
                                          "first_seq": 601, "last_seq": 1000}
    sink.open = True
    sink.pause_after_writes = None
    publish(broker, "a", 2.0, creates("/a/1001"))
    msgs = first + sink.take()
    assert seqs(msgs) == [*range(1, 601), 1001]
    assert msgs[600]["type"] == "dropped"


def test_zero_client_queue_buffers_nothing_and_still_reports_every_gap() -> None:
    broker = make_broker(client_queue=0)
    sink, conn = join(broker)
    sid = sub(broker, conn)
    sink.take()
    sink.open = False
    publish(broker, "a", 1.0, creates("/a/1", "/a/2"))
    assert conn.queued_events == 0
    sink.open = True  # the transport drained; resume has not been called yet
    publish(broker, "a", 2.0, creates("/a/3"))
    assert sink.take() == [
        {"type": "dropped", "subscription": sid, "count": 2, "first_seq": 1, "last_seq": 2},
        json.loads(protocol.event_prefix(sid) + protocol.EventEncoder().tail(
            3, 2.0, "a", Kind.CREATE, "/a/3", KIND_BITS[Kind.CREATE], 0, None)),
    ]


def test_paused_fast_path_connection_queues_then_resumes_in_order() -> None:
    broker = make_broker()
    sink, conn = join(broker)
    sub(broker, conn)
    publish(broker, "a", 1.0, creates("/a/1"))
    sink.open = False
    publish(broker, "a", 2.0, creates("/a/2"))
    broker.reply(conn, protocol.pong("p"))
    publish(broker, "a", 3.0, creates("/a/3"))
    sink.open = True
    broker.resume(conn)
    got = [m.get("seq", m.get("id")) for m in sink.messages()[1:]]
    assert got == [1, 2, "p", 3]


def test_set_limits_resizes_the_history_and_the_queue() -> None:
    broker = make_broker(client_queue=2, replay_buffer=10)
    publish(broker, "a", 1.0, creates(*(f"/a/{i}" for i in range(1, 9))))
    broker.overflow("a", "kernel_queue")  # at seq 8
    broker.set_limits(client_queue=5, replay_buffer=3, max_subscriptions=1)
    assert broker.stats()["oldest"] == 6
    sink, conn = join(broker)
    sub(broker, conn, since=5)
    assert [(m["type"], m.get("seq")) for m in sink.messages()[1:]] == [
        ("event", 6), ("event", 7), ("event", 8), ("overflow", 8)]
    with pytest.raises(ProtocolError) as info:
        sub(broker, conn)
    assert info.value.code is ErrorCode.TOO_MANY_SUBSCRIPTIONS
    sink.take()
    sink.open = False
    publish(broker, "a", 2.0, creates(*(f"/a/{i}" for i in range(9, 17))))
    assert conn.queued_events == 5  # the new client_queue
    # Growing the history keeps what is held and holds more from now on.
    broker.set_limits(client_queue=5, replay_buffer=100, max_subscriptions=8)
    assert broker.stats()["oldest"] == 14  # the 3 newest held were 14..16
    publish(broker, "a", 3.0, creates("/a/17"))
    assert broker.stats()["oldest"] == 14


def test_raising_client_queue_lets_a_lagging_connection_report_its_gap() -> None:
    broker = make_broker(client_queue=1)
    sink, conn = join(broker)
    sid = sub(broker, conn)
    sink.take()
    sink.open = False
    publish(broker, "a", 1.0, creates("/a/1", "/a/2"))
    broker.set_limits(client_queue=10, replay_buffer=1000, max_subscriptions=8)
    publish(broker, "a", 2.0, creates("/a/3"))
    sink.open = True
    broker.resume(conn)
    msgs = sink.take()
    got = [(m["type"], m.get("seq", m.get("first_seq"))) for m in msgs]
    assert got == [("event", 1), ("dropped", 2), ("event", 3)]
    assert {m["subscription"] for m in msgs} == {sid}


def test_stats_counts() -> None:
    broker = make_broker()
    _, c1 = join(broker)
    _, c2 = join(broker)
    sub(broker, c1)
    sub(broker, c1, watch=("b",))
    sub(broker, c2)
    publish(broker, "a", 1.0, creates("/a/1", "/a/2"))
    broker.overflow(None, "watcher_restart")
    assert broker.stats() == {"clients": 2, "subscriptions": 3, "events": 2, "dropped": 0,
                              "overflows": 1, "seq": 2, "oldest": 1}
    assert broker.subscription_count == 3


# --- the contract under any interleaving ---------------------------------------------------------

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from(["a", "b"]), st.integers(0, 6)),
        st.tuples(st.just("pause"), st.integers(0, 2)),
        st.tuples(st.just("resume"), st.integers(0, 2)),
        st.tuples(st.just("drain"), st.integers(0, 2)),  # writable again, resume not yet called
        st.tuples(st.just("overflow"), st.sampled_from(["a", None])),
        st.tuples(st.just("reply"), st.integers(0, 2)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
# 0: nothing is queued, all is dropped; batch: each subscription in frames, or some of them
@given(ops=_OPS, client_queue=st.integers(0, 6), batch=st.lists(st.booleans(), min_size=4,
                                                               max_size=4))
def test_every_event_is_delivered_or_reported_exactly_once(
    ops: list[tuple[Any, ...]], client_queue: int, batch: list[bool],
) -> None:
    broker = make_broker(client_queue=client_queue)
    clients = [join(broker) for _ in range(3)]
    sids = [
        [sub(broker, clients[0][1], batch=batch[0])],
        [sub(broker, clients[1][1], watch=("a",), batch=batch[1]),
         sub(broker, clients[1][1], glob=("*0",), batch=batch[2])],
        [sub(broker, clients[2][1], events=frozenset({Kind.DELETE}), batch=batch[3])],
    ]
    published: list[tuple[int, str, str, Kind]] = []
    n = 0
    for op in ops:
        match op:
            case ("publish", watch, count):
                batch = []
                for _ in range(count):
                    n += 1
                    kind = Kind.DELETE if n % 3 == 0 else Kind.CREATE
                    path = f"/{watch}/{n}"
                    batch.append(item(kind, path))
                    published.append((n, watch, path, kind))
                publish(broker, watch, float(n), batch)
            case ("pause", i):
                clients[i][0].open = False
            case ("resume", i):
                clients[i][0].open = True
                broker.resume(clients[i][1])
            case ("drain", i):
                clients[i][0].open = True
            case ("overflow", watch):
                broker.overflow(watch, "kernel_queue")
            case ("reply", i):
                broker.reply(clients[i][1], protocol.pong(i))
    for sink, conn in clients:
        sink.open = True
        broker.resume(conn)

    wanted = {
        sids[0][0]: [s for s, _, _, _ in published],
        sids[1][0]: [s for s, w, _, _ in published if w == "a"],
        sids[1][1]: [s for s, _, p, _ in published if p.endswith("0")],
        sids[2][0]: [s for s, _, _, k in published if k is Kind.DELETE],
    }
    total_dropped = 0
    for (sink, conn), conn_sids in zip(clients, sids, strict=True):
        msgs = unframe(sink.messages())
        assert conn.queued_events == 0
        assert not conn.queue
        for sid in conn_sids:
            seen: list[int] = []  # delivered or reported, in stream order
            for m in msgs:
                if m.get("subscription") != sid:
                    continue
                if m["type"] == "event":
                    seen.append(m["seq"])
                elif m["type"] == "dropped":
                    gap = [s for s in wanted[sid] if m["first_seq"] <= s <= m["last_seq"]]
                    assert len(gap) == m["count"]
                    seen.extend(gap)
                    total_dropped += m["count"]
            assert seen == wanted[sid]
        assert [m["id"] for m in msgs if m["type"] == "pong"] == [
            i for op in ops if op[0] == "reply" for i in [op[1]]
            if clients[i][1] is conn]
    assert total_dropped == broker.dropped


def test_a_replay_that_ends_while_events_are_published_misses_none() -> None:
    broker = make_broker(client_queue=2)
    sink, conn = join(broker)
    sink.open = False
    live = sub(broker, conn)
    publish(broker, "a", 1.0, creates(*(f"/a/{i}" for i in range(1, 6))))  # live drops 3 of 5
    replayed = sub(broker, conn, since=0)
    sink.open = True  # the transport drained; the next publish is the first to look
    publish(broker, "a", 2.0, creates("/a/6"))
    msgs = sink.messages()
    assert seqs(msgs, replayed) == [1, 2, 3, 4, 5, 6]
    assert seqs(msgs, live) == [1, 2, 6]


# --- batched subscriptions ---------------------------------------------------------------------


def unframe(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with every frame replaced by its events, as event lines would carry them."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["type"] == "events":
            assert m["events"], "a frame is never empty"
            out += [{"type": "event", "subscription": m["subscription"], **e} for e in m["events"]]
        else:
            out.append(m)
    return out


def shape(messages: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """Each message's type and, for a frame, how many events it holds."""
    return [(m["type"], len(m["events"]) if m["type"] == "events" else 0) for m in messages]


def burst(broker: Broker, count: int, at: float = 1.0, watch: str = "a") -> None:
    items = [item(Kind.CREATE if i % 3 else Kind.MOVED_TO, f"/{watch}/f{i}\n\"x\u00e9\udcff",
                  cookie=i, src=f"/{watch}/s{i}" if i % 3 == 0 else None, is_dir=i % 2 == 0)
             for i in range(count)]
    publish(broker, watch, at, items)


@pytest.mark.parametrize("filters", [{}, {"glob": ("f*",)}, {"events": frozenset(Kind)}])
def test_a_batched_subscriber_gets_what_a_line_subscriber_gets(filters: dict[str, Any]) -> None:
    broker = make_broker()
    line_sink, line_conn = join(broker)
    framed_sink, framed_conn = join(broker)
    line_sid = sub(broker, line_conn, **filters)
    framed_sid = sub(broker, framed_conn, batch=True, **filters)
    line_sink.take()
    framed_sink.take()
    burst(broker, 7)
    burst(broker, 1, at=2.0)
    lines = line_sink.take()
    frames = framed_sink.take()
    assert shape(frames) == [("events", 7), ("events", 1)]  # a lone event is a frame of one
    got = unframe(frames)
    for m in got:
        assert m.pop("subscription") == framed_sid
    for m in lines:
        assert m.pop("subscription") == line_sid
    assert got == lines
    assert [m["seq"] for m in got] == list(range(1, 9))


def test_a_frame_is_spliced_from_the_event_lines_bytes() -> None:
    broker = make_broker()
    line_sink, line_conn = join(broker)
    framed_sink, framed_conn = join(broker)
    sub(broker, line_conn)
    sub(broker, framed_conn, batch=True)
    line_sink.chunks.clear()
    framed_sink.chunks.clear()
    burst(broker, 3)
    head = b'{"type":"event","subscription":"s1",'
    objects = [b"{" + line[len(head):] for line in b"".join(line_sink.chunks).splitlines()]
    assert b"".join(framed_sink.chunks) == (
        b'{"type":"events","subscription":"s2","events":[' + b",".join(objects) + b"]}\n")


@pytest.mark.parametrize("filters", [{}, {"glob": ("f*",)}])
def test_frames_never_exceed_max_batch(filters: dict[str, Any]) -> None:
    broker = Broker(instance=INSTANCE, client_queue=100, replay_buffer=1000,
                    max_subscriptions=8, max_batch=3)
    broker.set_watches([FakeWatch("a")])
    sink, conn = join(broker)
    sub(broker, conn, batch=True, **filters)
    sink.take()
    burst(broker, 10)
    assert shape(sink.take()) == [("events", 3), ("events", 3), ("events", 3), ("events", 1)]
    sink.open = False  # what waits in the queue is framed as it drains: at most 3 as well
    burst(broker, 7, at=2.0)
    sink.open = True
    broker.resume(conn)
    msgs = sink.take()
    assert shape(msgs) == [("events", 3), ("events", 3), ("events", 1)]
    assert seqs(unframe(msgs)) == list(range(11, 18))


def test_a_notice_ends_a_frame_and_keeps_its_place() -> None:
    broker = make_broker()
    sink, conn = join(broker)
    sid = sub(broker, conn, batch=True)
    sink.take()
    sink.open = False
    burst(broker, 3)
    broker.overflow("a", "kernel_queue")
    burst(broker, 2, at=2.0)
    broker.watch_lost("a", "/srv", "deleted")
    burst(broker, 1, at=3.0)
    sink.open = True
    broker.resume(conn)
    msgs = sink.take()
    assert shape(msgs) == [("events", 3), ("overflow", 0), ("events", 2), ("watch_lost", 0),
                           ("events", 1)]
    assert msgs[1]["seq"] == 3 and msgs[1]["subscription"] == sid
    assert seqs(unframe(msgs)) == [1, 2, 3, 4, 5, 6]


def test_a_batched_replay_arrives_in_frames_with_its_markers_in_place() -> None:
    broker = make_broker()
    burst(broker, 4)
    broker.overflow(None, "kernel_queue")
    burst(broker, 2, at=2.0)
    sink, conn = join(broker)
    sid = sub(broker, conn, batch=True, since=1)
    msgs = sink.take()
    assert shape(msgs) == [("subscribed", 0), ("events", 3), ("overflow", 0), ("events", 2)]
    assert seqs(unframe(msgs), sid) == [2, 3, 4, 5, 6]
    burst(broker, 1, at=3.0)  # and live ones after it, framed
    assert shape(sink.take()) == [("events", 1)]


def test_a_slow_batched_subscriber_is_told_of_its_drops_between_frames() -> None:
    broker = make_broker(client_queue=5)
    sink, conn = join(broker)
    sid = sub(broker, conn, batch=True)
    sink.take()
    sink.open = False
    burst(broker, 9)
    sink.open = True
    broker.resume(conn)
    msgs = sink.take()
    assert shape(msgs) == [("events", 5), ("dropped", 0)]
    assert msgs[1] == {"type": "dropped", "subscription": sid, "count": 4, "first_seq": 6,
                       "last_seq": 9}
    assert conn.queued_events == 0


def test_line_and_batched_subscriptions_share_a_connection() -> None:
    broker = make_broker()
    sink, conn = join(broker)
    line_sid = sub(broker, conn)
    framed_sid = sub(broker, conn, batch=True)
    filtered_sid = sub(broker, conn, batch=True, glob=("f1*",))
    sink.take()
    burst(broker, 12)
    msgs = unframe(sink.take())
    assert seqs(msgs, line_sid) == seqs(msgs, framed_sid) == list(range(1, 13))
    assert paths(msgs, filtered_sid) == [p for p in paths(msgs, line_sid)
                                         if p.startswith("/a/f1")]


# --- what the metrics count ---------------------------------------------------------------------


def test_kinds_and_deliveries_are_counted_on_every_way_out() -> None:
    broker = make_broker(client_queue=100)
    plain_sink, plain = join(broker)
    sub(broker, plain)  # no filter: the fast way
    framed_sink, framed = join(broker)
    sub(broker, framed, batch=True)
    filtered_sink, filtered = join(broker, BOB)
    sub(broker, filtered, events=["create"])  # a filter: the general way
    sub(broker, filtered, events=["create"], batch=True, id=2)
    assert broker.publish_reads("a", [(1.0, creates("/a/1", "/a/2"))]) is not None
    publish(broker, "a", 2.0, [item(Kind.DELETE, "/a/1")])
    counts = broker.counts
    assert counts.kinds_of == {"a": {KIND_BITS[Kind.CREATE]: 2, KIND_BITS[Kind.DELETE]: 1}}
    assert broker.delivered == 3 + 3 + 2 + 2
    # A connection that is behind has its events queued: counted once they are written.
    plain_sink.open = False
    publish(broker, "b", 3.0, creates("/b/1"))
    assert broker.delivered == 10 + 1 + 2
    plain_sink.open = True
    broker.resume(plain)
    assert broker.delivered == 14
    assert len(events(plain_sink.messages())) == 4
    # A replay is counted as it is written too.
    replay_sink, replayer = join(broker)
    sub(broker, replayer, since=0)
    assert len(events(replay_sink.messages())) == 4
    assert broker.delivered == 18
    # No subscriber written to at once: no first write to time.
    for sink in (plain_sink, framed_sink, filtered_sink, replay_sink):
        sink.open = False
    assert broker.publish_reads("a", [(4.0, creates("/a/3"))]) is None


# Without Counter's private C helper (an interpreter other than CPython, a later CPython), the
# kinds are counted all the same. In a process of its own: the helper is looked up at import.
_WITHOUT_HELPER = """
import collections, json
del collections._count_elements
from watchd import fanout
from watchd.broker import Broker, Peer
from watchd.events import KIND_BITS, Kind
from watchd.protocol import Subscribe

class Sink:
    def write(self, chunks): pass
    def writable(self): return True

class Watch:
    name, path = "a", "/srv"
    def may_see(self, uid, gid, groups): return True

broker = Broker(instance="i", client_queue=100, replay_buffer=100, max_subscriptions=8)
broker.set_watches([Watch()])
broker.subscribe(broker.connect(Sink(), Peer(uid=0, gid=0, groups=frozenset(), pid=1)),
                 Subscribe(id=1))
create, delete = KIND_BITS[Kind.CREATE], KIND_BITS[Kind.DELETE]
broker.publish_reads("a", [(1.0, [(create, 0, "/srv/1", None), (create, 0, "/srv/2", None),
                                  (delete, 0, "/srv/1", None)])])
print(json.dumps({"fallback": fanout._count_elements is fanout.count_into,
                  "kinds": broker.counts.kinds_of["a"]}))
"""


def test_kinds_are_counted_without_counters_private_helper() -> None:
    done = subprocess.run([sys.executable, "-c", _WITHOUT_HELPER], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["fallback"] is True
    assert result["kinds"] == {str(KIND_BITS[Kind.CREATE]): 2, str(KIND_BITS[Kind.DELETE]): 1}


def test_overflows_are_counted_by_watch_and_reason() -> None:
    broker = make_broker()
    broker.overflow("a", protocol.OverflowReason.KERNEL_QUEUE)
    broker.overflow(None, protocol.OverflowReason.WATCHER_RESTART)
    broker.overflow("a", protocol.OverflowReason.KERNEL_QUEUE)
    assert broker.counts.overflows_by == {("a", "kernel_queue"): 2, ("", "watcher_restart"): 1}
