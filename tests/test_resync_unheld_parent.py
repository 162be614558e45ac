"""Events below a directory the index does not hold, and that directory's move or delete.

A resync's scan can miss a directory altogether: it moved, while the scan ran, out of a part
of the tree not listed yet into one listed already. Its synthetic events then delete it, and
the kernel's events of the changes made before its move come after them: a directory moved
into it is published as a move to a path whose parents a client no longer has. A client
keeps what the move brought there all the same, and the index keeps it too, under keys that
no listing of the index leads to. When the missed directory's own move comes next, a client
takes everything below its path away; the index took only what its listings lead to, and
kept the rest at the old path. The next resync then moved that from where the client had
nothing to where it is, and the directory arrived empty.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.picture import Picture
from tests.resync_setup import as_messages
from tests.test_index import QUIET, _events, paths, snap
from watchd.config.model import WatchConfig
from watchd.inotify import InotifyFd
from watchd.inotify.tree import Tree
from watchd.listing import Dirs, subtree_keys
from watchd.records import Recorder
from watchd.resync import Resyncer


def missing(dirs: Dirs, top: pathlib.Path) -> Dirs:
    """A scan that saw the directory `top` on neither side of its move: without it."""
    out = {key: dict(children) for key, children in dirs.items()}
    del out[str(top.parent)][top.name]
    for key in subtree_keys(dirs, str(top)):
        del out[key]
    return out


@dataclass
class Lab:
    """A watch whose index a scan that missed a/b left (and a client in step with it), with
    x/d/e/f to move into a/b, and the tree's watches."""

    root: pathlib.Path
    resync: Resyncer
    picture: Picture
    ino: InotifyFd
    tree: Tree
    recorder: Recorder = field(default_factory=Recorder)

    def publish(self, marker: str) -> None:
        """Read the kernel's events until the marker's create, as one batch, and publish it."""
        events = _events(self.ino, self.tree, self.root / marker)
        published = self.resync.track("w", [(0.0, events)], [self.recorder.records(events)])
        self.picture.apply_all(as_messages(published[0][1]))

    def in_step(self) -> None:
        """The index is what was published."""
        assert paths(self.resync.watches["w"].index.as_dirs()) == self.picture.paths

    def resynced(self) -> None:
        """The resync that follows (the race is seen: the watch is rescanned), applied."""
        self.resync.lost("w")
        result = self.resync.scanned("w", snap(self.root), 0.0)
        assert result is not None
        self.picture.apply_all(as_messages(result.items))
        assert str(self.root / "y" / "b" / "c" / "d" / "e" / "f") in self.picture.paths
        assert self.picture.paths == paths(snap(self.root))


@contextlib.contextmanager
def missed(tmp_path: pathlib.Path) -> Iterator[Lab]:
    root = tmp_path / "t"
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "x" / "d" / "e").mkdir(parents=True)
    (root / "x" / "d" / "e" / "f").write_text("1")
    (root / "y").mkdir()
    resync = Resyncer()
    resync.configure([WatchConfig(name="w", path=str(root))], changed=["w"])
    seen = missing(snap(root), root / "a" / "b")
    resync.scanned("w", seen, 0.0)  # the first: fills the index
    with InotifyFd() as ino:
        tree = Tree(ino, str(root), QUIET, synthetic=True)
        tree.start()
        yield Lab(root, resync, Picture(paths(seen)), ino, tree)


def test_a_missed_directory_moved_on_takes_what_was_moved_into_it(tmp_path: pathlib.Path,
                                                                    ) -> None:
    with missed(tmp_path) as lab:
        # The kernel's events of the changes made before the scan, in one batch: x/d moved
        # into the missed directory, then the missed directory moved on.
        os.rename(lab.root / "x" / "d", lab.root / "a" / "b" / "c" / "d")
        os.rename(lab.root / "a" / "b", lab.root / "y" / "b")
        lab.publish("settle")
        assert not {p for p in lab.picture.paths if p.startswith(str(lab.root / "a" / "b"))}
        lab.in_step()
        lab.resynced()


def test_what_was_moved_into_it_is_found_in_an_index_kept_by_a_previous_run(
        tmp_path: pathlib.Path) -> None:
    # The same, with the daemon restarted between the two moves: the index it kept holds the
    # keys no listing leads to, and the run that resumes from it must know them as such.
    with missed(tmp_path) as lab:
        os.rename(lab.root / "x" / "d", lab.root / "a" / "b" / "c" / "d")
        lab.publish("settle1")
        kept = lab.resync.watches["w"].index.as_dirs()
        lab.resync = Resyncer()
        lab.resync.configure([WatchConfig(name="w", path=str(lab.root))], changed=[])
        lab.resync.restore("w", kept)
        # A file made in it (a client has it) and its move, in one batch.
        (lab.root / "a" / "b" / "g").write_text("2")
        os.rename(lab.root / "a" / "b", lab.root / "y" / "b")
        lab.publish("settle2")
        lab.in_step()
        lab.resynced()
