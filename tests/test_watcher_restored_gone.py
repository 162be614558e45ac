"""A root that comes back and goes again before its scan: the `resynced` that a watch_restored
of a watch with an index owes cannot come, and "resync": false answers it (as it answers a
resync announced by an overflow whose rescan fails)."""

from __future__ import annotations

import pathlib
import shutil
import socket

from tests.test_watcher_caught_up import turn
from tests.test_watcher_failed_root import Daemon
from tests.test_watcher_rescan import sent
from watchd import channel
from watchd.events import DEFAULT_KINDS, kinds_mask
from watchd.watcher import Watcher


class GoesAgain(Watcher):
    """A watcher whose root is deleted again right after it announced the root's return: the
    moment between the watch_restored and its scan, when the real one may lose it too."""

    def __init__(self, sock: socket.socket, root: pathlib.Path) -> None:
        super().__init__(sock)
        self.root = root
        self.vanish = False

    def send(self, message: channel.FromWatcher) -> None:
        super().send(message)
        if self.vanish and isinstance(message, channel.Restored):
            self.vanish = False
            shutil.rmtree(self.root)


def test_a_root_gone_again_before_its_scan_answers_the_restore(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "t"
    (root / "a").mkdir(parents=True)
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    reader = channel.FrameReader()
    with ours, theirs:
        watcher = GoesAgain(ours, root)
        watcher.channel.resync_on = frozenset({"w"})
        spec = channel.Spec("w", str(root), True, kinds_mask(DEFAULT_KINDS), (), (), str(root))
        watcher.apply([spec])
        try:
            daemon = Daemon(root)
            daemon.take(turn(watcher, theirs, reader))  # the first index
            shutil.rmtree(root)
            daemon.take(turn(watcher, theirs, reader, until=channel.Tag.LOST.value))
            (root / "b").mkdir(parents=True)
            watcher.vanish = True
            watcher.poll_pending()
            daemon.take(sent(theirs, reader))
            assert daemon.notices() == [("watch_lost", "deleted"), ("watch_restored", None),
                                        ("overflow", False)]
            # Its loss is read as before; and its next return is answered as any.
            daemon.take(turn(watcher, theirs, reader, until=channel.Tag.LOST.value))
            (root / "c").mkdir(parents=True)
            watcher.poll_pending()
            daemon.take(turn(watcher, theirs, reader, until=channel.Tag.CAUGHT.value))
            assert daemon.notices()[3:] == [("watch_lost", "deleted"), ("watch_restored", None),
                                            ("resynced", None)]
        finally:
            for watch in watcher.watches.values():
                watcher.deactivate(watch)
