"""Every request, reply and error code of protocol v1, against the real daemon."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from tests.harness import Line, config, is_event, wait_for, watch
from watchd.config.model import RESERVED_CLIENTS

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def daemon(start_daemon, watched: Path):
    return start_daemon(config(daemon_extra="max_subscriptions = 2\nmax_line_bytes = 1024",
                               watches=watch("w", watched) + watch("other", watched / "sub")))


def test_hello_comes_first_with_every_field(daemon) -> None:
    line = daemon.connect()
    hello = line.hello
    assert hello["protocol"] == 1
    assert hello["server"] == "watchd"
    assert hello["version"]
    assert hello["pid"] == daemon.proc.pid
    assert isinstance(hello["instance"], str) and hello["instance"]
    assert hello["seq"] == 0
    assert hello["features"] == ["batch", "fields"]
    assert list(hello) == ["type", "protocol", "server", "version", "pid", "instance", "seq",
                           "durable", "features"]
    assert hello["durable"] is False  # no state directory in this configuration


def test_instance_is_new_at_every_start(start_daemon, watched: Path) -> None:
    text = config(watches=watch("w", watched))
    first = start_daemon(text)
    instance = first.connect().hello["instance"]
    assert first.stop() == 0
    second = start_daemon(text)
    assert second.connect().hello["instance"] != instance


def test_ping_echoes_any_scalar_id(daemon) -> None:
    line = daemon.connect()
    for ident in (7, "abc", 1.5, True, None):
        assert line.request({"op": "ping", "id": ident}) == {"type": "pong", "id": ident}
    assert line.request({"op": "ping"}) == {"type": "pong", "id": None}


def test_status_has_the_contract_fields(daemon, watched: Path) -> None:
    reply = daemon.connect().request({"op": "status", "id": "s"})
    assert reply["type"] == "status"
    assert reply["id"] == "s"
    for key in ("pid", "instance", "uptime_s", "seq", "config", "reloads", "last_reload_error",
                "clients", "subscriptions", "events", "dropped", "overflows", "watches"):
        assert key in reply, key
    assert reply["config"] == daemon.config
    assert reply["reloads"] == 0
    assert reply["last_reload_error"] is None
    assert reply["clients"] >= 1
    by_name = {w["name"]: w for w in reply["watches"]}
    assert by_name["w"] == {**by_name["w"], "path": str(watched), "recursive": True,
                            "state": "active", "directories": 1}
    assert by_name["other"]["state"] == "pending"


def test_replies_come_in_request_order(daemon) -> None:
    line = daemon.connect()
    line.send(b"".join(json.dumps({"op": op, "id": i}).encode() + b"\n"
                       for i, op in enumerate(["ping", "status", "ping", "nope", "ping"])))
    replies = [line.recv() for _ in range(5)]
    assert [r["id"] for r in replies] == [0, 1, 2, 3, 4]
    assert [r["type"] for r in replies] == ["pong", "status", "pong", "error", "pong"]


def test_subscribe_and_unsubscribe(daemon, watched: Path) -> None:
    line = daemon.connect()
    reply = line.request({"op": "subscribe", "id": 1})
    assert reply["type"] == "subscribed" and reply["id"] == 1
    sid = reply["subscription"]
    assert isinstance(reply["seq"], int)
    (watched / "a").touch()
    got = line.until(is_event(watched / "a"))
    assert got[-1]["subscription"] == sid
    assert line.request({"op": "unsubscribe", "id": 2, "subscription": sid}) == {
        "type": "unsubscribed", "id": 2, "subscription": sid}
    (watched / "b").touch()
    # After unsubscribe nothing more arrives for it: a ping round trip proves the stream is idle.
    assert line.request({"op": "ping", "id": 3})["type"] == "pong"
    assert not [m for m in line.pushed if m.get("path") == str(watched / "b")]


@pytest.mark.parametrize(("raw", "code"), [
    (b"this is not json\n", "bad_json"),
    (b"[1, 2]\n", "bad_json"),
    (b"\xff\xfe\n", "bad_json"),
    (b'{"id": 1}\n', "bad_request"),
    (b'{"op": 5, "id": 1}\n', "bad_request"),
    (b'{"op": "subscribe", "id": 1, "events": ["crete"]}\n', "bad_request"),
    (b'{"op": "subscribe", "id": 1, "paths": ["relative"]}\n', "bad_request"),
    (b'{"op": "subscribe", "id": 1, "since": -1}\n', "bad_request"),
    (b'{"op": "unsubscribe", "id": 1}\n', "bad_request"),
    (b'{"op": "frobnicate", "id": 1}\n', "unknown_op"),
    (b'{"op": "subscribe", "id": 1, "watch": "nope"}\n', "unknown_watch"),
    (b'{"op": "unsubscribe", "id": 1, "subscription": "s999"}\n', "unknown_subscription"),
])
def test_error_codes_keep_the_connection_usable(daemon, raw: bytes, code: str) -> None:
    line = daemon.connect()
    line.send(raw)
    reply = line.recv()
    assert reply["type"] == "error"
    assert reply["code"] == code
    assert isinstance(reply["message"], str) and len(reply["message"]) > 10
    if b'"id": 1' in raw:
        assert reply["id"] == 1
    assert line.request({"op": "ping", "id": "after"}) == {"type": "pong", "id": "after"}


def test_too_many_subscriptions(daemon) -> None:
    line = daemon.connect()
    for i in range(2):
        assert line.request({"op": "subscribe", "id": i})["type"] == "subscribed"
    reply = line.request({"op": "subscribe", "id": 9})
    assert reply["code"] == "too_many_subscriptions"
    assert reply["id"] == 9


def test_since_expired_for_another_instance(daemon) -> None:
    line = daemon.connect()
    reply = line.request({"op": "subscribe", "id": 1, "since": 0, "instance": "not-this-one"})
    assert reply["code"] == "since_expired"
    assert "oldest" in reply


def test_line_too_long_closes_the_connection(daemon) -> None:
    line = daemon.connect()
    line.send(b'{"op":"ping","id":"' + b"x" * 2000 + b'"}\n')
    reply = line.recv()
    assert reply["code"] == "line_too_long"
    with pytest.raises(EOFError):
        line.recv()
    # The daemon itself is fine.
    assert daemon.connect().request({"op": "ping"})["type"] == "pong"


def test_too_many_clients(start_watching) -> None:
    daemon = start_watching("max_clients = 2")
    # The daemon's own user (ours) has the slots kept for root beyond max_clients.
    kept = [daemon.connect() for _ in range(2 + RESERVED_CLIENTS)]
    extra = daemon.line()
    reply = extra.recv()
    assert reply["type"] == "error"
    assert reply["code"] == "too_many_clients"
    with pytest.raises(EOFError):
        extra.recv()
    kept[0].close()

    # A slot frees up once a client leaves.
    def can_connect() -> bool:
        with contextlib.closing(Line(daemon.socket)) as probe:
            return probe.recv()["type"] == "hello"
    wait_for(can_connect, what="a free client slot")
    assert kept[1].request({"op": "ping"})["type"] == "pong"
