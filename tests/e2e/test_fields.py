"""A subscription's "fields" with the real daemon: the events of a subscription with every
member, each with only the members asked for; through the wire, frames and the client library."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_batch import Reader
from tests.harness import config, watch
from watchd.client import AsyncClient, Client

pytestmark = pytest.mark.timeout(90)

FIELDS = ["kind", "path", "src_path"]


def start(start_daemon: Any, watched: Path) -> Any:
    return start_daemon(config(watches=watch("w", watched)))


def changes(watched: Path) -> None:
    for i in range(50):
        (watched / f"f{i:02}").write_text("x")
    (watched / "f00").rename(watched / "g00")
    (watched / "d").mkdir()
    (watched / "f01").unlink()
    (watched / "end").mkdir()


def shaped(events: list[dict[str, Any]], fields: list[str]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k in ("type", *fields)} for e in events]


def test_hello_offers_fields(start_daemon: Any, watched: Path) -> None:
    daemon = start(start_daemon, watched)
    assert "fields" in daemon.connect().hello["features"]


@pytest.mark.parametrize("batch", [False, True])
def test_each_event_carries_the_members_asked_for(
        start_daemon: Any, watched: Path, batch: bool) -> None:
    daemon = start(start_daemon, watched)
    full = Reader(daemon.subscribe()[0])
    line, sid = daemon.subscribe(fields=FIELDS, batch=batch)
    few = Reader(line)
    changes(watched)
    want = full.until_path(watched / "end")
    got = few.until_path(watched / "end")
    for m in want + got:
        m.pop("subscription", None)
    assert got == shaped(want, FIELDS)
    assert {"moved_to"} <= {e["kind"] for e in got if "src_path" in e}
    assert all(set(e) <= {"type", *FIELDS} for e in got)
    assert all(m["subscription"] == sid for m in few.received)
    assert {m["type"] for m in few.received} <= {"events" if batch else "event", "overflow",
                                                  "resynced"}


def test_a_bad_fields_list_is_answered_with_an_error_naming_it(
        start_daemon: Any, watched: Path) -> None:
    daemon = start(start_daemon, watched)
    line = daemon.connect()
    reply = line.request({"op": "subscribe", "id": 3, "fields": ["path", "size"]})
    assert reply["type"] == "error" and reply["code"] == "bad_request" and reply["id"] == 3
    assert reply["message"].startswith('"fields"[1]: unknown event member "size"')
    # The connection goes on serving.
    assert line.request({"op": "ping", "id": 4})["type"] == "pong"


def test_the_client_library_asks_for_fields(start_daemon: Any, watched: Path) -> None:
    daemon = start(start_daemon, watched)
    with Client(daemon.socket) as client:
        sub = client.subscribe(events="create", fields=("path", "seq"))
        (watched / "one").touch()
        event = next(iter(sub))
    assert set(event) == {"type", "subscription", "seq", "path"}
    assert event["path"] == str(watched / "one") and event["type"] == "event"


def test_the_asyncio_client_asks_for_fields(start_daemon: Any, watched: Path) -> None:
    daemon = start(start_daemon, watched)

    async def first() -> dict[str, Any]:
        async with AsyncClient(daemon.socket) as client:
            sub = await client.subscribe(events="create", fields="path")
            (watched / "two").touch()
            async for message in sub:
                return dict(message)
        raise AssertionError("no event")

    event = asyncio.run(asyncio.wait_for(first(), 30))
    assert event == {"type": "event", "subscription": event["subscription"],
                     "path": str(watched / "two")}
