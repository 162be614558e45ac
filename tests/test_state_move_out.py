"""A directory moved out of one watch, as its last event, stops no index from being stored.

Its IN_MOVED_FROM has no IN_MOVED_TO: the watch's index waits for one (TreeIndex.moving_dirs)
until a tick finds it waiting since the previous one. Meanwhile the other watches' indexes are
stored as usual, and this watch's stored index stays as it was; then it is stored too.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.test_index import snap
from watchd import state as st
from watchd import statefiles as sf
from watchd.config.model import WatchConfig
from watchd.records import IN_CREATE, IN_ISDIR, IN_MOVED_FROM, IN_MOVED_TO, Recorder
from watchd.restore import index_spec
from watchd.resync import Resyncer


class Two:
    """Watches a (with a directory d) and b, their indexes filled and stored as of seq 0."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.roots = {"a": tmp / "a", "b": tmp / "b"}
        (self.roots["a"] / "d" / "s").mkdir(parents=True)
        self.roots["b"].mkdir()
        self.specs = {n: index_spec(WatchConfig(name=n, path=str(r)))
                      for n, r in self.roots.items()}
        self.resync = Resyncer()
        self.resync.configure([WatchConfig(name=n, path=str(r)) for n, r in self.roots.items()],
                              changed=list(self.roots))
        for name, root in self.roots.items():
            assert self.resync.scanned(name, snap(root), 0.0) is not None
        self.state = st.State(str(tmp / "state"), max_bytes=1 << 20, fsync_interval=1.0,
                              retain=lambda: 100)
        assert self.state.open(self.specs) is None
        assert self.state.start("i", 0)
        self.state.unsettled = self.resync.unsettled  # as the daemon wires it

    def snapshots(self) -> list[st.Snapshot]:
        return [(n, self.specs[n], dirs, seq) for n, dirs, seq in self.resync.indexes()]

    def publish(self, name: str, batch: list[tuple[int, int, str, str | None]]) -> None:
        self.resync.track(name, [(0.0, batch)], [Recorder().records(batch)])

    def move_out(self) -> None:
        """`mv a/d <outside>`: the last event of watch a."""
        src = str(self.roots["a"] / "d")
        os.rename(src, self.tmp / "out")
        self.publish("a", [(IN_MOVED_FROM | IN_ISDIR, 7, src, None)])

    def create_in_b(self, i: int) -> None:
        path = self.roots["b"] / f"f{i}"
        path.write_text("x")
        self.publish("b", [(IN_CREATE, 0, str(path), None)])

    async def tick(self, seq: int, *, due: bool = False) -> None:
        """One tick of the daemon (due: a save was asked, as a journal rotation asks), then
        the write it started."""
        self.state.snapshot_due = self.state.snapshot_due or due
        self.state.tick(seq, self.snapshots)
        while self.state._pending is not None:
            await asyncio.sleep(0.01)

    def stored(self, name: str) -> sf.StoredIndex:
        path = sf.index_file(self.state.path, name)
        with open(path, "rb") as f:
            return sf.decode_index(f.read(), path)[1]


def test_the_other_watches_indexes_are_stored_after_a_move_out(tmp_path: Path) -> None:
    two = Two(tmp_path)

    async def run() -> None:
        two.state.save(0, two.snapshots)
        while two.state._pending is not None:
            await asyncio.sleep(0.01)
        two.move_out()  # seq 1
        two.create_in_b(2)
        await two.tick(2, due=True)  # the first save after the move: b is stored

    asyncio.run(run())
    stored = two.stored("b")
    assert stored.seq == 2
    assert "f2" in stored.dirs[str(two.roots["b"])]


def test_the_watch_a_directory_moved_out_of_is_stored_within_two_ticks(tmp_path: Path,
                                                                         ) -> None:
    two = Two(tmp_path)
    a = str(two.roots["a"])

    async def run() -> None:
        two.state.save(0, two.snapshots)
        while two.state._pending is not None:
            await asyncio.sleep(0.01)
        two.move_out()  # seq 1, and nothing more happens in watch a
        await two.tick(1, due=True)
        # Until a tick finds the move still waiting, a's stored index stays as it was (it
        # holds d): stored without d now, the journal's moved_to, were it to come, could not
        # bring d back whole at the next start.
        assert two.stored("a").seq == 0
        for i in range(2, 5):  # b stays busy; a's own index is stored at the next tick
            two.create_in_b(i)
            await two.tick(i)

    asyncio.run(run())
    stored = two.stored("a")
    assert stored.seq >= 1
    dirs = stored.dirs
    assert "d" not in dirs[a]
    assert a + "/d" not in dirs


def test_a_late_second_half_after_the_wait_stopped_counting_is_still_a_move(tmp_path: Path,
                                                                            ) -> None:
    """A loop that stalled past two ticks between the halves of a split pair: the stored copy
    stopped waiting for it, but the index still pairs it, so the move is published as one
    (a client applying it keeps what the directory holds) and the index keeps it too."""
    two = Two(tmp_path)
    a = str(two.roots["a"])
    src, dst = a + "/d", a + "/e"

    async def run() -> None:
        os.rename(src, dst)
        two.publish("a", [(IN_MOVED_FROM | IN_ISDIR, 7, src, None)])
        await two.tick(1, due=True)
        await two.tick(1)
        assert two.resync.unsettled(False) == frozenset()  # no longer holds a's storing back

    asyncio.run(run())
    batch = [(IN_MOVED_TO | IN_ISDIR, 7, dst, src)]
    published = two.resync.track("a", [(0.0, batch)], [Recorder().records(batch)])
    assert published == [(0.0, batch)]
    dirs = two.resync.watches["a"].index.dirs
    assert "e" in dirs[a] and "s" in dirs[dst]
