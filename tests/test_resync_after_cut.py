"""Events read after an overflow, in the same read as it, and a watch that resyncs.

The kernel's queue overflows; while the watcher's read takes events off it, room is made and
a directory is moved into the tree: its moved_to comes after the overflow in that same read.
The watcher sends what came before the overflow, then the notice and the scan, which it takes
after the read, so the scan has the directory where it went, contents and all: the resync
creates them. The moved_to, sent after the scan, described the same move again, to a client
one that replaces whatever had the name with a bare directory; its contents were reported
nowhere after it (a listing that follows an overflow reports nothing: the resync does), while
the index kept them, so no later resync reported them either.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from typing import Any

import pytest

from tests.picture import Picture, listing
from tests.resync_setup import as_messages
from tests.sysctl import sysctl
from tests.test_index import sent_until, snap, watching
from tests.test_resync_stale_path import QUEUE, flood
from watchd import channel
from watchd.config.model import WatchConfig
from watchd.inotify import IN_Q_OVERFLOW, InotifyFd
from watchd.inotify._binding import RawTuple
from watchd.resync import Resyncer


class OneRead:
    """The watch's inotify fd, whose next read returns `raw` (two real reads of it, one after
    the other: what one read returns when events are queued while it runs)."""

    def __init__(self, ino: InotifyFd, raw: list[RawTuple]) -> None:
        self.ino, self.raw = ino, raw

    def read_raw(self) -> list[RawTuple]:
        return self.raw

    @property
    def closed(self) -> bool:
        return self.ino.closed

    def queued(self) -> int:
        return self.ino.queued()


def publish(resync: Resyncer, picture: Picture, messages: list[tuple[Any, ...]]) -> None:
    """What the daemon does with the watcher's messages for a watch with an index, and a
    client's picture of what it publishes."""
    for m in messages:
        if m[0] == channel.Tag.OVERFLOW:
            resync.lost("w")
        elif m[0] == channel.Tag.SCAN:
            result = resync.scanned("w", m[2], 0.0)
            assert result is not None
            picture.apply_all(as_messages(result.items))
        elif m[0] == channel.Tag.EVENTS:
            reads = resync.track("w", m[2], m[3])
            for _, items in reads:
                picture.apply_all(as_messages(items))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to lower "
                    "fs.inotify.max_queued_events (the overflow before the move in)")
def test_a_directory_moved_in_after_the_overflow_keeps_its_contents(tmp_path: pathlib.Path,
                                                                     ) -> None:
    root, outside = tmp_path / "t", tmp_path / "o"
    root.mkdir()
    (root / "flood").touch()
    (outside / "d" / "inner").mkdir(parents=True)
    (outside / "d" / "inner" / "f").write_text("1")
    resync = Resyncer()
    resync.configure([WatchConfig(name="w", path=str(root))], changed=["w"])
    picture = Picture(listing(root))
    reader = channel.FrameReader()
    with contextlib.ExitStack() as stack:
        with sysctl("max_queued_events", QUEUE):  # taken by the inotify fd as it is made
            watcher, theirs = stack.enter_context(watching(root))
        publish(resync, picture, reader.feed(theirs.recv(1 << 20)))  # the first scan
        watch = watcher.watches["w"]
        ino = watch.ino
        assert ino is not None
        flood(root / "flood", QUEUE)  # the queue overflows
        before = ino.read_raw()
        assert before[-1][1] & IN_Q_OVERFLOW, "the queue did not overflow"
        os.rename(outside / "d", root / "d")
        watch.ino = OneRead(ino, before + ino.read_raw())  # type: ignore[assignment]
        try:
            watcher.read_watch(watch)
        finally:
            watch.ino = ino
        (root / "settle").write_text("")
        publish(resync, picture, sent_until(watcher, theirs, reader, root / "settle"))
    assert str(root / "d" / "inner" / "f") in picture.paths
    assert picture.paths == listing(root)
    assert resync.watches["w"].index.as_dirs() == snap(root)
