"""The watcher's catch-up after a whole scan (channel.Caught), and the `resynced` that waits
for it: at `resynced`, a client that applied everything before it has the tree as the scan
found it, even what came while the scan ran and the scan could not enter.

The race: after a loss the tree watches every directory again, then the scan lists the tree.
A directory moved in (or made) between the two, its IN_MOVED_TO not read yet, is not watched:
the scan lists it in its parent but does not enter it (an entry it listed there, removed
before the watch is set, would have no event). What it holds is reported by the tree's walk
of it, when its coming is read: the `resynced` notices wait until that read is out.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.picture import Picture, listing
from tests.resync_setup import as_messages
from tests.test_broker import FakeWatch, join, make_broker, sub
from tests.test_index import watching
from tests.test_resync_after_cut import OneRead
from tests.test_watcher_rescan import sent
from watchd import channel
from watchd.config.model import WatchConfig
from watchd.events import DEFAULT_KINDS, kinds_mask
from watchd.resync import Resyncer
from watchd.watcher import Watcher
from watchd.watcher_watch import Watch

CAUGHT = channel.Tag.CAUGHT.value


def tags(messages: list[tuple[Any, ...]]) -> list[str]:
    return [m[0] for m in messages if m[0] != channel.Tag.HEARTBEAT]


def turn(watcher: Watcher, theirs: Any, reader: channel.FrameReader,
         *, until: str | None = None) -> list[tuple[Any, ...]]:
    """Turns of the watcher's loop (reads of its queue, then its catch-ups) until a message
    tagged `until` is sent, with a deadline (until None: one turn)."""
    watch = watcher.watches["w"]
    out: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + 10
    while True:
        assert watch.ino is not None
        if watch.ino.queued():
            watcher.read_watch(watch)
        watcher.send_caught()
        out += sent(theirs, reader)
        if until is None or until in tags(out):
            return out
        assert time.monotonic() < deadline, f"no {until!r} within 10 s: {tags(out)}"
        watch.ino.wait_readable(0.05)


class Client:
    """What the daemon makes of the watcher's messages for a watch with an index (watchd.resync,
    its steps run in order), and a client's picture of what it publishes; `at_resynced`: the
    picture when the `resynced` notices went out."""

    def __init__(self, root: pathlib.Path) -> None:
        self.resync = Resyncer()
        self.resync.configure([WatchConfig(name="w", path=str(root))], changed=["w"])
        self.broker = make_broker(watches=(FakeWatch("w"),))
        self.sink, conn = join(self.broker)
        sub(self.broker, conn)
        self.picture = Picture(listing(root))
        self.at_resynced: set[str] | None = None

    def take(self, messages: list[tuple[Any, ...]]) -> None:
        for m in messages:
            if m[0] == channel.Tag.OVERFLOW:
                self.resync.lost("w")
            elif m[0] == channel.Tag.SCAN:
                result = self.resync.scanned("w", m[2], 0.0)
                assert result is not None
                self.picture.apply_all(as_messages(result.items))
                for step in self.resync.steps(self.broker, "w", result, lambda: None):
                    step()
            elif m[0] == channel.Tag.EVENTS:
                for _, items in self.resync.track("w", m[2], m[3]):
                    self.picture.apply_all(as_messages(items))
            elif m[0] == CAUGHT:
                owed = self.resync.watches["w"].awaiting
                self.resync.caught(self.broker, "w")
                if owed:
                    self.at_resynced = set(self.picture.paths)

    def resynced(self) -> list[dict[str, Any]]:
        """The `resynced` notices the subscriber got."""
        return [m for m in self.sink.messages() if m["type"] == "resynced"]


def filled(d: pathlib.Path) -> None:
    (d / "sub" / "deep").mkdir(parents=True)
    (d / "f").write_text("x")
    (d / "sub" / "g").write_text("y")
    (d / "sub" / "deep" / "h").write_text("z")


@dataclass
class Race:
    """A watch after a loss (its notice sent, its tree watching again) whose scan was made
    with a directory, contents and all, moved in between the two (t/a/d, its IN_MOVED_TO
    unread)."""

    root: pathlib.Path
    watcher: Watcher
    theirs: socket.socket
    reader: channel.FrameReader
    client: Client
    watch: Watch


@contextlib.contextmanager
def moved_in_mid_scan(tmp_path: pathlib.Path) -> Iterator[Race]:
    root, outside = tmp_path / "t", tmp_path / "o"
    (root / "a").mkdir(parents=True)
    filled(outside)
    reader = channel.FrameReader()
    with watching(root) as (watcher, theirs):
        client = Client(root)
        client.take(turn(watcher, theirs, reader))  # the first index
        watch = watcher.watches["w"]
        assert watch.tree is not None and watch.ino is not None
        # A loss, as Watcher.resync answers one, with the move in between its two halves.
        watcher.send(channel.Overflow("w", resync=True))
        watch.tree.resync()
        outside.rename(root / "a" / "d")
        watcher.rescan("w", owed=True)
        yield Race(root, watcher, theirs, reader, client, watch)


def test_an_idle_watch_is_caught_up_in_the_turn_of_its_scan(tmp_path: pathlib.Path) -> None:
    (tmp_path / "d").mkdir()
    reader = channel.FrameReader()
    with watching(tmp_path) as (watcher, theirs):
        first = turn(watcher, theirs, reader)
        assert tags(first)[-2:] == [channel.Tag.SCAN, CAUGHT]  # the first index's scan
        watcher.rescan("w")
        assert tags(sent(theirs, reader)) == [channel.Tag.SCAN]  # not before the turn's end
        assert tags(turn(watcher, theirs, reader)) == [CAUGHT]
        assert tags(turn(watcher, theirs, reader)) == []  # once


def test_a_directory_moved_in_while_the_scan_ran_is_whole_at_resynced(
        tmp_path: pathlib.Path) -> None:
    """Its contents come from the tree's walk when its IN_MOVED_TO is read, after the scan's
    differences: the catch-up follows them, and so does `resynced`."""
    with moved_in_mid_scan(tmp_path) as race:
        root, watcher, theirs, reader, client = (race.root, race.watcher, race.theirs,
                                                 race.reader, race.client)
        at_scan = listing(root)
        watcher.send_caught()
        messages = sent(theirs, reader)
        assert tags(messages) == [channel.Tag.OVERFLOW, channel.Tag.SCAN]  # not caught up
        client.take(messages)
        # The race is there: the scan's differences made the directory, empty (the notices
        # went out here before).
        assert str(root / "a" / "d") in client.picture.paths
        assert str(root / "a" / "d" / "f") not in client.picture.paths
        messages = turn(watcher, theirs, reader, until=CAUGHT)
        assert tags(messages)[-2:] == [channel.Tag.EVENTS, CAUGHT]
        client.take(messages)
        assert client.at_resynced == at_scan
        assert str(root / "a" / "d" / "sub" / "deep" / "h") in client.at_resynced
        # And the watch goes on: later changes in it have events.
        (root / "a" / "d" / "sub" / "deep" / "later").write_text("")
        (root / "settle").write_text("")
        deadline = time.monotonic() + 10
        while str(root / "settle") not in client.picture.paths:
            assert time.monotonic() < deadline, "the settle file's create never came"
            assert race.watch.ino is not None
            race.watch.ino.wait_readable(0.05)
            client.take(turn(watcher, theirs, reader))
        assert client.picture.paths == listing(root)


def test_a_second_scan_before_the_read_is_caught_up_once(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "t"
    (root / "a").mkdir(parents=True)
    reader = channel.FrameReader()
    with watching(root) as (watcher, theirs):
        turn(watcher, theirs, reader)
        watch = watcher.watches["w"]
        assert watch.tree is not None
        filled(root / "a" / "d")  # queued, unread
        watcher.rescan("w")
        watcher.rescan("w")
        assert tags(turn(watcher, theirs, reader, until=CAUGHT)).count(CAUGHT) == 1
        assert tags(turn(watcher, theirs, reader)) == []


def test_resynced_waits_for_the_catch_up_and_answers_every_loss(
        tmp_path: pathlib.Path) -> None:
    """The daemon's side: the differences go out with their scan, the notices (one per loss
    announced, with the last scan's figures) with the catch-up; an abandon answers them
    instead."""
    (tmp_path / "f").write_text("x")
    reader = channel.FrameReader()
    with watching(tmp_path) as (watcher, theirs):
        client = Client(tmp_path)
        client.take(turn(watcher, theirs, reader))
        client.resync.lost("w")
        client.resync.lost("w")
        (tmp_path / "g").write_text("y")
        watcher.rescan("w")
        messages = sent(theirs, reader)
        client.take(messages)  # the scan alone
        assert str(tmp_path / "g") in client.picture.paths
        assert len(client.resync.watches["w"].awaiting) == 2 and not client.resynced()
        client.take(turn(watcher, theirs, reader, until=CAUGHT))
        assert not client.resync.watches["w"].awaiting
        assert client.at_resynced == listing(tmp_path)
        notices = client.resynced()
        assert [(n["watch"], n["changes"]) for n in notices] == [("w", 1), ("w", 1)]
        assert client.sink.messages()[-1]["type"] == "resynced"  # after the differences
        client.resync.lost("w")
        watcher.rescan("w")
        client.take(sent(theirs, reader))
        assert len(client.resync.watches["w"].awaiting) == 1
        client.resync.abandoned("w")  # "resync": false answers it
        assert not client.resync.watches["w"].awaiting
        client.take(turn(watcher, theirs, reader, until=CAUGHT))
        assert len(client.resynced()) == 2


def test_a_directory_the_tree_reaches_a_batch_later_is_whole_at_resynced(
        tmp_path: pathlib.Path) -> None:
    """The directory moved in while the scan ran, its parent renamed between the read that
    holds its IN_MOVED_TO and the tree's handling of it: the tree reaches it only at the end
    of a later batch (the rename's own events), and the catch-up waits for that."""
    with moved_in_mid_scan(tmp_path) as race:
        root, watcher, theirs, reader, client = (race.root, race.watcher, race.theirs,
                                                 race.reader, race.client)
        client.take(sent(theirs, reader))
        ino = race.watch.ino
        assert ino is not None
        raw = ino.read_raw()  # the read: d's IN_MOVED_TO, and its parent renamed right after
        (root / "a").rename(root / "b")
        race.watch.ino = OneRead(ino, raw)  # type: ignore[assignment]
        try:
            watcher.read_watch(race.watch)
        finally:
            race.watch.ino = ino
        watcher.send_caught()
        first = sent(theirs, reader)
        assert CAUGHT not in tags(first), "caught up before the tree reached the directory"
        client.take(first)
        client.take(turn(watcher, theirs, reader, until=CAUGHT))
        assert client.at_resynced == listing(root)
        assert str(root / "b" / "d" / "sub" / "deep" / "h") in client.at_resynced


def test_two_resyncs_answered_by_one_catch_up_keep_their_own_figures(
        tmp_path: pathlib.Path) -> None:
    root = tmp_path / "t"
    (root / "a").mkdir(parents=True)
    reader = channel.FrameReader()
    with watching(root) as (watcher, theirs):
        client = Client(root)
        client.take(turn(watcher, theirs, reader))
        for name in ("new1", "new2", "new3"):
            (root / "a" / name).write_text(name)  # queued: the catch-up waits for a read
        for _ in range(2):  # a second loss before the watcher's next read
            client.resync.lost("w")
            watcher.rescan("w", owed=True)
            client.take(sent(theirs, reader))
        client.take(turn(watcher, theirs, reader, until=CAUGHT))
        assert [n["changes"] for n in client.resynced()] == [3, 0]


def test_a_watch_replaced_or_removed_by_a_reload_sends_the_catch_up_it_owed(
        tmp_path: pathlib.Path) -> None:
    root = tmp_path / "t"
    (root / "a").mkdir(parents=True)
    reader = channel.FrameReader()
    with watching(root) as (watcher, theirs):
        turn(watcher, theirs, reader)
        filled(root / "a" / "d")  # queued: the catch-up waits for a read
        watcher.rescan("w", owed=True)
        assert tags(sent(theirs, reader)) == [channel.Tag.SCAN]
        # The same watch with another include: its old tree goes, what it had queued read.
        spec = channel.Spec("w", str(root), True, kinds_mask(DEFAULT_KINDS), ("*",), (),
                            str(root))
        watcher.apply([spec], fill=frozenset({"w"}))
        got = tags(sent(theirs, reader))
        assert got.count(CAUGHT) == 1 and got.index(channel.Tag.EVENTS) < got.index(CAUGHT)
        (root / "a" / "d" / "more").write_text("")  # queued for the new tree
        watcher.rescan("w", owed=True)
        watcher.apply([])  # removed
        assert tags(sent(theirs, reader)).count(CAUGHT) == 1


def test_a_watch_that_fails_owes_no_catch_up(tmp_path: pathlib.Path) -> None:
    """What it read last was not all sent: the scan made when it is established again (after
    its loss's notice) answers the resync instead."""
    root = tmp_path / "t"
    (root / "a").mkdir(parents=True)
    reader = channel.FrameReader()
    with watching(root) as (watcher, theirs):
        turn(watcher, theirs, reader)
        (root / "a" / "f").write_text("")
        watcher.rescan("w", owed=True)
        watch = watcher.watches["w"]
        watcher.fail(watch, RuntimeError("a failure of the test"))
        watcher.send_caught()
        assert CAUGHT not in tags(sent(theirs, reader))
        watch.retry_at = 0.0
        watcher.poll_pending()
        watcher.send_caught()
        got = tags(sent(theirs, reader))
        assert got[:2] == [channel.Tag.OVERFLOW, channel.Tag.SCAN] and got[-1] == CAUGHT, got
