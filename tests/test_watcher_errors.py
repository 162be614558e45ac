"""The watcher process's parts on real inotify: one watch's trouble stays that watch's."""

from __future__ import annotations

import os
import pathlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import short_tmpdir
from tests.inotify.isolation import run_isolated
from watchd import channel
from watchd.events import DEFAULT_KINDS, kinds_mask
from watchd.watcher import Watcher

NOBODY = 65534


def _spec(name: str, path: pathlib.Path) -> channel.Spec:
    return channel.Spec(name, str(path), True, kinds_mask(DEFAULT_KINDS), (), (), str(path))


def _messages(sock: socket.socket) -> list[tuple[Any, ...]]:
    reader = channel.FrameReader()
    sock.setblocking(False)
    out: list[tuple[Any, ...]] = []
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return out
        out += reader.feed(data)


@pytest.fixture
def shared() -> Iterator[pathlib.Path]:
    """A directory that another user can reach (tmp_path's parents are root's alone)."""
    with short_tmpdir() as path:
        os.chmod(path, 0o755)
        yield pathlib.Path(path)


def test_an_unreadable_directory_degrades_its_watch_only(shared: pathlib.Path) -> None:
    top = shared / "top"
    (top / "open").mkdir(parents=True)
    (top / "closed" / "inner").mkdir(parents=True)
    (top / "closed").chmod(0o700)  # root's: the watcher, as another user, cannot list it
    for d in (top, top / "open"):
        os.chown(d, NOBODY, NOBODY)
    other = shared / "other"
    other.mkdir()
    os.chown(other, NOBODY, NOBODY)

    def attempt() -> dict[str, tuple[Any, ...]]:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            watcher = Watcher(ours)
            watcher.apply([_spec("top", top), _spec("other", other)])
            watcher.heartbeat()
            beats = [m for m in _messages(theirs) if m[0] == channel.Tag.HEARTBEAT]
            for watch in watcher.watches.values():
                watcher.deactivate(watch)
            return dict(beats[-1][1])

    states = run_isolated(attempt, uid=NOBODY)
    state, directories, unwatched, problem, limit = states["top"]
    assert (state, directories, unwatched, limit) == ("degraded", 2, 1, None)
    assert problem == (f"1 directory could not be read (first: {top}/closed: "
                       "Permission denied); what is below it is not watched")
    assert states["other"] == ("active", 1, 0, None, None)


def test_a_watch_that_fails_unexpectedly_fails_alone(tmp_path: pathlib.Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    # A spec no daemon of this version sends (a mask that is no number): the watch cannot be
    # made, and that must stay its own problem.
    bad = channel.Spec("bad", str(tmp_path), True, "no mask", (), (), str(tmp_path))  # type: ignore[arg-type]
    ours, theirs = socket.socketpair()
    with ours, theirs:
        watcher = Watcher(ours)
        try:
            watcher.apply([bad, _spec("good", good)])
            watcher.heartbeat()
            states = dict([m for m in _messages(theirs) if m[0] == channel.Tag.HEARTBEAT][-1][1])
            assert states["good"] == ("active", 1, 0, None, None)
            state, _, _, problem, _ = states["bad"]
            assert state == "pending"
            assert problem.startswith("failed (ValueError: ")
            assert problem.endswith("retrying in 1 s")
            # Tried again only after the back-off, and failing again backs off longer.
            watcher.watches["bad"].retry_at = 0.0
            watcher.poll_pending()
            again = watcher.watches["bad"].problem
            assert again is not None
            assert again.endswith("retrying in 2 s")
        finally:
            for watch in watcher.watches.values():
                watcher.deactivate(watch)
