"""The watcher's scans on request (Watcher.rescan): one the daemon may do without, and one it
is owed (a resync was announced: by the watcher after a loss, or by the daemon's Rescan)."""

from __future__ import annotations

import contextlib
import pathlib
import socket
import time
from typing import Any

from tests.test_index import watching
from watchd import channel
from watchd.listing import thawed


def sent(theirs: socket.socket, reader: channel.FrameReader) -> list[tuple[Any, ...]]:
    """What the watcher has sent so far (its sends are flushed as they are queued)."""
    out: list[tuple[Any, ...]] = []
    with contextlib.suppress(BlockingIOError):
        while data := theirs.recv(1 << 20):
            out += reader.feed(data)
    return out


def scans(messages: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [m for m in messages if m[0] == channel.Tag.SCAN]


def scan_sent(theirs: socket.socket, reader: channel.FrameReader) -> tuple[Any, ...]:
    """The next scan the watcher sends, waited for with a deadline."""
    deadline = time.monotonic() + 10
    got: list[tuple[Any, ...]] = []
    while not got and time.monotonic() < deadline:
        got = scans(sent(theirs, reader))
        if not got:
            time.sleep(0.01)
    assert len(got) == 1, got
    return got[0]


def test_a_scan_on_request_is_sent_for_an_indexed_watch_and_owed_ones_even_failed(
        tmp_path: pathlib.Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    reader = channel.FrameReader()
    with watching(tmp_path) as (watcher, theirs):
        scan_sent(theirs, reader)  # the first index
        watcher.rescan("w")
        dirs = scan_sent(theirs, reader)[2]
        assert set(thawed(dirs)[str(tmp_path / "d")]) == {"f"}
        watcher.rescan("nowhere", owed=True)  # announced: answered, as a failed scan
        assert scan_sent(theirs, reader)[1:3] == ("nowhere", None)
        watcher.deactivate(watcher.watches["w"])  # no tree: nothing to scan
        watcher.rescan("w")
        assert scans(sent(theirs, reader)) == []
        watcher.rescan("w", owed=True)
        assert scan_sent(theirs, reader)[1:3] == ("w", None)


def test_no_scan_is_sent_unasked_for_a_watch_without_an_index(tmp_path: pathlib.Path) -> None:
    reader = channel.FrameReader()
    with watching(tmp_path, resync=False) as (watcher, theirs):
        watcher.rescan("w")
        assert scans(sent(theirs, reader)) == []
        watcher.rescan("w", owed=True)  # the daemon asked: it gets one
        assert scan_sent(theirs, reader)[1] == "w"
