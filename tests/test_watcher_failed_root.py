"""A watch that failed (an unexpected error: the watcher drops its tree and tries it again
later) and whose root is deleted before it is back: the loss is told then, not when the root
returns, and a resync announced before the failure is answered by "resync": false.

The watcher itself and the daemon's parts that take its messages (watchd.losses, the index,
the watches' state, the broker) run in this process, over a real socketpair and real inotify:
an unexpected error cannot be made to happen in a daemon run as a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from tests.test_broker import FakeWatch, join, make_broker, sub
from tests.test_index import watching
from tests.test_watcher_caught_up import CAUGHT, tags, turn
from tests.test_watcher_rescan import sent
from watchd import channel
from watchd.config.model import WatchConfig
from watchd.events import DEFAULT_KINDS, kinds_mask
from watchd.losses import Losses
from watchd.reasons import OverflowReason
from watchd.resync import Resyncer
from watchd.supervisor import Supervisor
from watchd.watcher import Watcher
from watchd.watchstate import Watches


class Daemon:
    """The daemon's handling of the watcher's notices (as Daemon.on_watcher_message), with no
    watcher process to pace a resync's steps: they run as they come."""

    def __init__(self, root: pathlib.Path) -> None:
        configs = [WatchConfig(name="w", path=str(root))]
        self.broker = make_broker(watches=(FakeWatch("w", path=str(root)),))
        self.resync = Resyncer()
        self.resync.configure(configs, changed=["w"])
        self.watches = Watches(self.broker, configs)
        supervisor = Supervisor(lambda on_exit: None,  # type: ignore[arg-type,return-value]
                                asyncio.Event(), on_exit=lambda: None, on_replaced=lambda: 1)
        self.losses = Losses(self.broker, self.resync, None, supervisor,
                             after_publish=lambda: None, snapshots=list)
        self.sink, conn = join(self.broker)
        sub(self.broker, conn)

    def take(self, messages: list[tuple[Any, ...]]) -> None:
        losses, watches = self.losses, self.watches
        for raw in messages:
            if raw[0] == channel.Tag.EVENTS:
                self.broker.publish_reads("w", self.resync.track("w", raw[2], raw[3]))
                continue
            m: Any = channel.from_watcher(raw)
            if isinstance(m, channel.Overflow):
                losses.lost(m.watch, m.resync, m.reason)
            elif isinstance(m, channel.Scan):
                losses.on_scan(m.watch, m.dirs, m.seconds)
            elif isinstance(m, channel.Caught):
                losses.on_caught(m.watch)
            elif isinstance(m, channel.Restored):
                losses.restored(m.watch)
                watches.on_restored(m.watch, m.path)
            elif isinstance(m, channel.Lost):
                watches.on_lost(m.watch, m.path, m.reason)
            elif isinstance(m, channel.Fill):
                losses.filled(m)

    def notices(self) -> list[tuple[Any, ...]]:
        """What the subscriber was told besides events: (type, resync or reason)."""
        return [(m["type"], m.get("resync", m.get("reason")))
                for m in self.sink.messages() if m["type"] not in ("event", "subscribed")]


@dataclass
class Failed:
    """A watch with an index whose resync was announced (and its scan made), that failed before
    its catch-up; the daemon has taken what the watcher sent."""

    root: pathlib.Path
    watcher: Watcher
    theirs: Any
    reader: channel.FrameReader
    daemon: Daemon


@contextmanager
def failed_mid_resync(tmp_path: pathlib.Path) -> Iterator[Failed]:
    root = tmp_path / "t"
    (root / "a").mkdir(parents=True)
    reader = channel.FrameReader()
    with watching(root) as (watcher, theirs):
        daemon = Daemon(root)
        daemon.take(turn(watcher, theirs, reader))  # the first index
        watch = watcher.watches["w"]
        assert watch.tree is not None
        # A loss, as Watcher.resync answers one; then a change queued, so that the catch-up
        # waits for a read that never comes: the watch fails first.
        watcher.send(channel.Overflow("w", resync=True))
        watch.tree.resync()
        watcher.rescan("w", owed=True)
        (root / "a" / "f").write_text("")
        watcher.fail(watch, RuntimeError("a failure of the test"))
        watcher.send_caught()
        daemon.take(sent(theirs, reader))
        assert daemon.notices() == [("overflow", True)]  # announced, not answered yet
        yield Failed(root, watcher, theirs, reader, daemon)


def poll_tells_the_loss(f: Failed) -> None:
    """A poll of the pending roots answers the announced resync with the failed watch's loss,
    "resync": false, then the root's."""
    f.watcher.poll_pending()
    f.watcher.send_caught()
    f.daemon.take(sent(f.theirs, f.reader))
    assert f.daemon.notices() == [("overflow", True), ("overflow", False),
                                  ("watch_lost", "deleted")]
    assert f.daemon.sink.messages()[-2]["reason"] == "watch_failed"


def test_a_failed_watch_whose_root_is_deleted_answers_its_resync(tmp_path: pathlib.Path) -> None:
    with failed_mid_resync(tmp_path) as f:
        watch = f.watcher.watches["w"]
        shutil.rmtree(f.root)
        watch.retry_at = time.monotonic() + 60  # told while it waits, not at its retry
        poll_tells_the_loss(f)
        assert watch.report().problem is None  # pending as any root that went
        # Told once, however long the root stays away.
        watch.retry_at = 0.0
        f.watcher.poll_pending()
        f.daemon.take(sent(f.theirs, f.reader))
        assert len(f.daemon.notices()) == 3
        # The root comes back: its return, everything it holds, and the resynced that follows
        # a watch_restored.
        (f.root / "b").mkdir(parents=True)
        f.watcher.poll_pending()
        f.daemon.take(turn(f.watcher, f.theirs, f.reader, until=CAUGHT))
        assert f.daemon.notices()[3:] == [("watch_restored", None), ("resynced", None)]
        creates = [m["path"] for m in f.daemon.sink.messages()
                   if m["type"] == "event" and m["synthetic"]]
        assert creates[-1:] == [str(f.root / "b")]


def test_a_failed_watch_whose_root_is_there_again_at_its_retry_answers_by_its_rescan(
        tmp_path: pathlib.Path) -> None:
    """The case that worked already: deleted and made again before the retry, the watch is
    established again, and its scan answers both losses."""
    with failed_mid_resync(tmp_path) as f:
        shutil.rmtree(f.root)
        (f.root / "c").mkdir(parents=True)
        f.watcher.watches["w"].retry_at = 0.0
        f.watcher.poll_pending()
        got = turn(f.watcher, f.theirs, f.reader, until=CAUGHT)
        assert tags(got)[:2] == [channel.Tag.OVERFLOW, channel.Tag.SCAN]
        f.daemon.take(got)
        assert f.daemon.notices() == [("overflow", True), ("overflow", True),
                                      ("resynced", None), ("resynced", None)]
        assert [m["reason"] for m in f.daemon.sink.messages() if m["type"] == "overflow"] == [
            "kernel_queue", "watch_failed"]


def test_a_failed_watch_that_a_reload_changes_tells_its_loss(tmp_path: pathlib.Path) -> None:
    """The changed watch starts afresh, without a notice of its own: the loss the failed one
    owed (told once it was back) is told before it."""
    with failed_mid_resync(tmp_path) as f:
        changed = channel.Spec("w", str(f.root), True, kinds_mask(DEFAULT_KINDS), ("*",), (),
                               str(f.root))
        f.watcher.apply([changed], fill=frozenset({"w"}))
        got = [m for m in sent(f.theirs, f.reader) if m[0] == channel.Tag.OVERFLOW]
        assert [channel.from_watcher(m) for m in got] == [
            channel.Overflow("w", False, OverflowReason.WATCH_FAILED)]


@pytest.mark.parametrize("replacement", ["file", "symlink"])
def test_a_failed_watch_whose_root_is_no_directory_at_its_retry_answers_its_resync(
        tmp_path: pathlib.Path, replacement: str) -> None:
    """A file or a link where the root was (an atomic swap of a deployed directory): as a
    deleted root, its loss is told at the retry that finds it, and its return, as a directory,
    is looked for at the next poll, not after the failure's back-off."""
    with failed_mid_resync(tmp_path) as f:
        watch = f.watcher.watches["w"]
        shutil.rmtree(f.root)
        if replacement == "file":
            f.root.write_text("not a directory")
        else:
            (tmp_path / "elsewhere").mkdir()
            os.symlink(tmp_path / "elsewhere", f.root)
        watch.retry_at = 0.0  # its retry is due
        poll_tells_the_loss(f)
        assert watch.report().problem is not None  # says why the path is refused
        f.root.unlink()
        (f.root / "b").mkdir(parents=True)
        f.watcher.poll_pending()
        f.daemon.take(turn(f.watcher, f.theirs, f.reader, until=CAUGHT))
        assert f.daemon.notices()[3:] == [("watch_restored", None), ("resynced", None)]
