"""bench.client_cost --members: the frames it counts leave out exactly the members asked."""

from __future__ import annotations

import json

from bench.client_cost import watchd_bytes, without
from watchd.protocol.event_lines import TIME_DECIMALS

MEMBERS = {"seq", "time", "watch", "kind", "path", "is_dir", "mask", "cookie"}


def frames(data: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in data.splitlines()]


def test_a_member_left_out_is_gone_from_every_event_and_only_it() -> None:
    data = watchd_bytes(10, 4, TIME_DECIMALS)
    for frame in frames(without(data, ["seq", "mask"])):
        assert frame["type"] == "events" and frame["subscription"] == "s1"
        assert all(set(event) == MEMBERS - {"seq", "mask"} for event in frame["events"])


def test_plus_keeps_only_the_members_named_in_the_daemons_compact_form() -> None:
    data = watchd_bytes(10, 4, TIME_DECIMALS)
    kept = without(data, ["+kind,path"])
    assert b" " not in kept
    events = [event for frame in frames(kept) for event in frame["events"]]
    assert len(events) == 10
    assert all(set(event) == {"kind", "path"} for event in events)
    assert [event["path"] for event in events] == [
        event["path"] for frame in frames(data) for event in frame["events"]]
