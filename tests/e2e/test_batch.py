"""Batched delivery with the real daemon: a subscription that asks for "batch" gets the same
events as one that does not, in frames of at most daemon.max_batch, notices in their place."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import DEFAULT_TIMEOUT, Line, config, run_watchd, watch

pytestmark = pytest.mark.timeout(90)

MAX_BATCH = 16
PUSHED = ("event", "events", "overflow", "dropped", "watch_lost", "watch_restored",
          "watch_degraded", "resynced")


def start(start_daemon: Any, watched: Path, max_batch: int = MAX_BATCH) -> Any:
    return start_daemon(config(daemon_extra=f"max_batch = {max_batch}",
                               watches=watch("w", watched)))


def unframe(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Frames replaced by their events, as event lines carry them; the subscription left out."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["type"] == "events":
            out += [{"type": "event", **e} for e in m["events"]]
        else:
            out.append({k: v for k, v in m.items() if k != "subscription"})
    return out


class Reader:
    """Reads a subscription's messages one event at a time, frames or lines alike, and keeps
    what arrived as it arrived (frames whole) in `received`."""

    def __init__(self, line: Line) -> None:
        self.line = line
        self.received: list[dict[str, Any]] = []
        self._ready: list[dict[str, Any]] = []

    def until(self, predicate: Any) -> list[dict[str, Any]]:
        """Messages, frames unframed, up to the first one predicate accepts."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while True:
            while self._ready:
                got.append(self._ready.pop(0))
                if predicate(got[-1]):
                    return got
            message = self.line.recv(max(0.01, deadline - time.monotonic()))
            self.received.append(message)
            self._ready = unframe([message])

    def until_path(self, path: Path) -> list[dict[str, Any]]:
        return self.until(lambda m: m["type"] == "event" and m["path"] == str(path))

    def until_type(self, kind: str) -> list[dict[str, Any]]:
        return self.until(lambda m: m["type"] == kind)


def frame_sizes(messages: list[dict[str, Any]]) -> list[int]:
    return [len(m["events"]) for m in messages if m["type"] == "events"]


def test_hello_offers_batch(start_daemon: Any, watched: Path) -> None:
    daemon = start(start_daemon, watched)
    assert "batch" in daemon.connect().hello["features"]


@pytest.mark.parametrize("filters", [{}, {"events": ["create", "delete"], "glob": ["f*"]}])
def test_a_batched_subscriber_gets_what_a_line_subscriber_gets(
        start_daemon: Any, watched: Path, filters: dict[str, Any]) -> None:
    daemon = start(start_daemon, watched)
    lines = Reader(daemon.subscribe(**filters)[0])
    line, sid = daemon.subscribe(batch=True, **filters)
    framed = Reader(line)
    for i in range(300):
        (watched / f"f{i:03}").write_text("x")
        if i % 3 == 0:
            (watched / f"f{i:03}").unlink()
    (watched / "f-end").mkdir()
    want = lines.until_path(watched / "f-end")
    got = framed.until_path(watched / "f-end")
    assert got == want  # the same events, fields and seq order
    assert len(want) >= 300  # (the watcher may fold a create and delete of one name)
    # Frames, and notices only where the kernel's queue overflowed (its limit is global:
    # another test may have lowered it) and a resync followed.
    assert {m["type"] for m in framed.received} <= {"events", "overflow", "resynced"}
    assert all(m["subscription"] == sid for m in framed.received)
    assert "events" not in {m["type"] for m in lines.received}
    assert max(frame_sizes(framed.received)) <= MAX_BATCH


def test_a_lone_event_is_a_frame_of_one(start_daemon: Any, watched: Path) -> None:
    daemon = start(start_daemon, watched)
    framed, sid = daemon.subscribe(batch=True, events=["create"])
    (watched / "one").mkdir()
    frame = framed.recv()
    assert frame["type"] == "events" and frame["subscription"] == sid
    assert [(e["kind"], e["path"], e["is_dir"]) for e in frame["events"]] == [
        ("create", str(watched / "one"), True)]
    assert list(frame) == ["type", "subscription", "events"]
    assert "type" not in frame["events"][0] and "subscription" not in frame["events"][0]


def test_notices_keep_their_place_between_frames(start_daemon: Any, watched: Path) -> None:
    """A killed watcher: events, an overflow, the differences, resynced, events again."""
    daemon = start(start_daemon, watched)
    lines = Reader(daemon.subscribe()[0])
    framed = Reader(daemon.subscribe(batch=True)[0])
    for i in range(20):
        (watched / f"before{i}").touch()
    want = lines.until_path(watched / "before19")
    got = framed.until_path(watched / "before19")
    os.kill(daemon.watcher_pid(), signal.SIGKILL)
    for i in range(40):
        (watched / f"missed{i}").touch()  # found by the resync: synthetic events
    want += lines.until_type("resynced")
    got += framed.until_type("resynced")
    (watched / "after").mkdir()
    want += lines.until_path(watched / "after")
    got += framed.until_path(watched / "after")
    assert got == want
    kinds = [m["type"] for m in framed.received]
    assert "event" not in kinds
    # The overflow is a line of its own between frames, never inside one.
    restart = [i for i, m in enumerate(framed.received)
               if m["type"] == "overflow" and m["reason"] == "watcher_restart"]
    assert len(restart) == 1
    assert kinds[restart[0] - 1] == "events" and kinds[restart[0] + 1] == "events"
    assert len([m for m in got if m.get("synthetic")]) >= 40
    assert max(frame_sizes(framed.received)) <= MAX_BATCH


def test_a_since_replay_arrives_in_frames(start_daemon: Any, watched: Path) -> None:
    daemon = start(start_daemon, watched)
    lines = Reader(daemon.subscribe(events=["create"])[0])
    for i in range(100):
        (watched / f"f{i:03}").touch()
    want = lines.until_path(watched / "f099")
    framed = Reader(daemon.subscribe(batch=True, since=0, events=["create"])[0])
    assert framed.until_path(watched / "f099") == want
    # Read from the history at once: full frames but the last before a notice (an overflow,
    # should another test have lowered the kernel's queue) or the end.
    runs: list[list[int]] = [[]]
    for m in framed.received:
        if m["type"] == "events":
            runs[-1].append(len(m["events"]))
        else:
            runs.append([])
    assert all(size == MAX_BATCH for run in runs for size in run[:-1])
    assert sum(map(sum, runs)) == len(want) == 100


@pytest.mark.parametrize("value", ["true", 1, None, [True]])
def test_a_batch_that_is_not_a_boolean_is_a_bad_request(
        start_daemon: Any, watched: Path, value: object) -> None:
    daemon = start(start_daemon, watched)
    line = daemon.connect()
    reply = line.request({"op": "subscribe", "id": 7, "batch": value})
    assert reply["type"] == "error" and reply["code"] == "bad_request" and reply["id"] == 7
    assert reply["message"].startswith('"batch": expected true or false')
    reply = line.request({"op": "subscribe", "id": 8, "batched": True})
    assert reply["code"] == "bad_request" and "unknown field" in reply["message"]


@pytest.mark.parametrize(("value", "problem"), [
    ("0", "must be greater than 0, got 0"),
    ("5000", "5000 events is more than the most allowed (4096)"),
    ('"64"', "expected a positive integer, got a string"),
])
def test_a_bad_max_batch_exits_78_naming_file_key_and_problem(
        workdir: str, value: str, problem: str) -> None:
    path = Path(workdir) / "bad.toml"
    path.write_text(f"[daemon]\nsocket = \"{workdir}/s\"\nmax_batch = {value}\n")
    result = run_watchd("--config", str(path))
    assert result.returncode == 78
    assert f"{path}" in result.stderr and "daemon.max_batch" in result.stderr
    assert problem in result.stderr and "Traceback" not in result.stderr


def test_watchctl_prints_one_event_per_line_as_without_batch(
        start_daemon: Any, watched: Path) -> None:
    daemon = start(start_daemon, watched)
    line, sid = daemon.subscribe(events=["create"])
    lines = Reader(line)
    env = {k: v for k, v in os.environ.items() if k != "WATCHD_SOCKET"}
    with subprocess.Popen(
        [sys.executable, "-m", "watchd.watchctl", "--socket", daemon.socket, "subscribe",
         "--json", "--event", "create"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=env) as proc:
        try:
            deadline = time.monotonic() + DEFAULT_TIMEOUT
            while daemon.status()["subscriptions"] < 2:  # watchctl's subscription is in place
                assert time.monotonic() < deadline, "watchctl did not subscribe"
                time.sleep(0.02)
            for i in range(50):
                (watched / f"f{i:02}\n\u00e9").touch()
            want = lines.until_path(watched / "f49\n\u00e9")
            assert proc.stdout is not None
            printed = [proc.stdout.readline() for _ in want]
        finally:
            proc.kill()
    mine = json.loads(printed[0])["subscription"]
    # Byte for byte the daemon's event lines to a subscription without batch, but for its sid.
    assert [line.replace(f'"{mine}"'.encode(), f'"{sid}"'.encode()) for line in printed] == [
        raw + b"\n" for raw in line.raw[-len(want):]]
