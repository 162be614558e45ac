"""What the tests of a resync's races share: a watch whose index holds the tree, a client's
picture in step with it, the tree's watches, and the check once the race is over."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any

from tests.picture import Picture, listing
from tests.test_index import QUIET, _events, snap
from watchd.channel import Spec
from watchd.config.model import WatchConfig
from watchd.inotify import InotifyFd
from watchd.inotify.tree import Tree
from watchd.records import (
    IN_CREATE,
    IN_DELETE,
    IN_ISDIR,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    Item,
    Recorder,
)
from watchd.resync import Resync, Resyncer
from watchd.watcher_watch import Watch

KINDS = {IN_CREATE: "create", IN_DELETE: "delete", IN_MOVED_FROM: "moved_from",
         IN_MOVED_TO: "moved_to"}


def as_messages(items: list[Item]) -> list[dict[str, Any]]:
    """The items a client would receive, as the messages tests.picture applies."""
    out: list[dict[str, Any]] = []
    for mask, cookie, path, src in items:
        kind = next((name for bit, name in KINDS.items() if mask & bit), None)
        if kind is not None:
            msg = {"type": "event", "kind": kind, "path": path, "cookie": cookie,
                   "is_dir": bool(mask & IN_ISDIR)}
            if src is not None:
                msg["src_path"] = src
            out.append(msg)
    return out


@dataclass
class Indexed:
    """A watch "w" of `root` whose index was filled by a first scan, and a client's picture
    of the tree, in step with the index."""

    root: pathlib.Path
    resync: Resyncer
    picture: Picture
    recorder: Recorder = field(default_factory=Recorder)


def indexed(root: pathlib.Path) -> Indexed:
    """The tree under `root` as it is now, in a watch's index and a client's picture."""
    resync = Resyncer()
    resync.configure([WatchConfig(name="w", path=str(root))], changed=["w"])
    assert resync.scanned("w", snap(root), 0.0) is not None  # the first: fills the index
    return Indexed(root, resync, Picture(listing(root)))


def scanned_watch(root: pathlib.Path, ino: InotifyFd) -> tuple[Watch, Tree]:
    """The watcher's watch of `root`, its tree walked and watching."""
    tree = Tree(ino, str(root), QUIET, synthetic=True)
    tree.start()
    spec = Spec("w", str(root), True, QUIET, (), (), str(root))
    return Watch(spec=spec, ino=ino, tree=tree), tree


def settle_and_check(lab: Indexed, result: Resync | None, ino: InotifyFd, tree: Tree) -> None:
    """Apply a resync's differences, then the kernel's events that follow them, to the
    client's picture: it, and the index, must be the tree as it is."""
    assert result is not None and result.resynced_owed
    lab.picture.apply_all(as_messages(result.items))
    events = _events(ino, tree, lab.root / "settle")
    published = lab.resync.track("w", [(0.0, events)], [lab.recorder.records(events)])
    lab.picture.apply_all(as_messages(published[0][1]))
    assert lab.picture.paths == listing(lab.root)
    assert lab.resync.watches["w"].index.as_dirs() == snap(lab.root)
