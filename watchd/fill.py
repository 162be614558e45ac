"""The watcher's scans of a watch for the daemon's index: whole (after a loss), or, for a
watch's first index, in parts between reads of its events.

The daemon has no index of a watch yet (at start, or after a reload changed the watch): a whole
scan before its events are served would hold them up about as long again as setting up its
watches, on a large tree. So the watch serves events at once and its tree is scanned in parts
(watchd.scan.scan_parts), each sent (channel.Fill) after the events read before it: the daemon
applies the events that follow a part on top of it, and the index ends as the tree is.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from watchd import channel
from watchd.globs import glob_predicate
from watchd.inotify import IN_DELETE, IN_ISDIR, IN_MOVED_FROM, IN_MOVED_TO
from watchd.inotify.tree import Tree, TreeEvent
from watchd.listing import AtRest
from watchd.scan import scan_parts
from watchd.watcher_watch import Watch

log = logging.getLogger("watchd.watcher")

PART = 4096  # entries per part
BEAT_S = 1.0  # during a whole scan, at most this long between two signs of life
# Parts scanned before the watch is reported in place: trees of up to about 24,576 entries
# (the shared harness's W7 tree of 20,200 with a margin) are indexed from the start. More
# makes set-up longer than without an index by more than 1.3x on a large tree (measured by
# bench/resync_scale.py: 1.36x with 8 parts, load ~11).
AT_ONCE = 6
SLICE_S = 0.02  # how long to scan before reading events again
# A directory that goes or moves while a fill walks the tree may take a part of the walk with
# it (see Fills.check): the fill starts over, at most this many times, then scans in one go.
RESTARTS = 3
_DIR_GONE = IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO


def scan_whole(watch: Watch, alive: Callable[[], None]) -> tuple[AtRest, float] | None:
    """The tree of an established watch at rest (watchd.scan), and the seconds it took; None
    when its root cannot be read. Calls `alive` every BEAT_S: a tree of millions of paths
    takes longer than daemon.watcher_timeout, and a watcher that says nothing meanwhile is
    taken for hung and replaced, to scan again."""
    spec = watch.spec
    if watch.tree is None or watch.tree.lost is not None:
        return None
    started = beat = time.monotonic()
    dirs: AtRest = {}
    try:
        for part in scan_parts(spec.path, spec.real_path, recursive=spec.recursive,
                               wanted=watch.wanted, prune=glob_predicate(spec.exclude),
                               part_size=PART, entered=_entered(watch.tree)):
            dirs.update(part)
            if time.monotonic() - beat >= BEAT_S:
                alive()
                beat = time.monotonic()
    except OSError as e:
        log.warning("watch %s: cannot scan %s: %s", spec.name, spec.path, e)
        return None
    watch.tree.unreported(lambda path: _listed_not_entered(dirs, path))
    return dirs, time.monotonic() - started


def _listed_not_entered(dirs: AtRest, path: str) -> bool:
    """Whether a scan listed the directory at `path` in its parent but did not enter it."""
    if path in dirs:
        return False
    parent, _, name = path.rpartition("/")
    listed = dirs.get(parent or "/")
    return listed is not None and name in listed[0].split("/")


def _entered(tree: Tree) -> Callable[[int, os.stat_result], bool] | None:
    """Which directories a scan of the tree's watch enters (see watchd.scan.scan_parts): those
    the tree watches. Every one, while the tree is past its watch limit: those it could not
    watch have no events and no walk of their own, the scan is all that reports them."""
    if tree.unwatched or tree.limit_error is not None:
        return None
    tree.distrust()
    return tree.watches_dir


@dataclass(slots=True)
class Fills:
    """The first scans under way, by watch name: start one, feed it events, scan the next
    parts (step) between reads, stop one. `send` queues a message for the daemon; `rescan`
    makes and sends a whole scan of a watch instead (for a fill that keeps starting over)."""

    send: Callable[[channel.FromWatcher], None]
    rescan: Callable[[str], None]
    parts: dict[str, Generator[AtRest, None, None]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.parts)

    def start(self, watch: Watch, *, fresh: bool = True) -> None:
        """Begin a watch's first scan in parts (fresh: not a fill starting over).

        The first parts at once: a tree of up to AT_ONCE parts (most trees) has its index
        complete before the daemon hears that the watch is in place and says it is ready, so
        that a loss right after start is resynchronized too; a larger one is served first, and
        indexed behind its events.
        """
        name = watch.name
        if fresh:
            self.restarts.pop(name, None)
        self.stop(name)
        if watch.tree is None or watch.tree.lost is not None:
            return
        spec = watch.spec
        self.parts[name] = scan_parts(spec.path, spec.real_path, recursive=spec.recursive,
                                      wanted=watch.wanted, prune=glob_predicate(spec.exclude),
                                      part_size=PART, entered=_entered(watch.tree))
        self.send(channel.Fill(name, {}, start=True, done=False))
        for _ in range(AT_ONCE + 1):
            if not self.part(watch):
                break

    def check(self, watch: Watch, events: list[TreeEvent]) -> None:
        """Start a fill over when a directory was deleted or moved while it walked.

        The walk holds the directories still to be listed by name and the current branch by
        descriptor: a directory moved away takes what it holds out of the walk's reach, and
        one moved or deleted while listed leaves entries under a name that no longer exists.
        Events cannot fix either, so the fill starts over (and after RESTARTS tries, scans the
        whole tree at once instead, events waiting).
        """
        if watch.name not in self.parts:
            return
        if not any(ev.mask & IN_ISDIR and ev.mask & _DIR_GONE for ev in events):
            return
        name = watch.name
        tries = self.restarts[name] = self.restarts.get(name, 0) + 1
        if tries > RESTARTS:
            log.debug("watch %s: directories keep moving; scanning it in one go", name)
            self.rescan(name)
        else:
            self.start(watch, fresh=False)

    def stop(self, name: str) -> None:
        """Drop a watch's fill, if one is under way."""
        parts = self.parts.pop(name, None)
        if parts is not None:
            parts.close()  # its open directories with it

    def step(self, watches: dict[str, Watch]) -> None:
        """Scan parts of the fills under way for about SLICE_S, and send them. Each part goes
        after the events read before it."""
        deadline = time.monotonic() + SLICE_S
        for name in list(self.parts):
            while self.part(watches[name]):
                if time.monotonic() >= deadline:
                    return

    def part(self, watch: Watch) -> bool:
        """Scan and send the next part of a watch's fill; False once it is over."""
        name = watch.name
        try:
            part = next(self.parts[name])
        except StopIteration:
            del self.parts[name]
            self.send(channel.Fill(name, {}, start=False, done=True))
            return False
        except OSError as e:
            del self.parts[name]
            log.warning("watch %s: cannot scan %s: %s; it is scanned after the next loss "
                        "instead", name, watch.path, e)
            return False
        self.send(channel.Fill(name, part, start=False, done=False))
        return True
