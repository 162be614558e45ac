"""An index is not stored between the two halves of a directory's move.

A moved_from and its moved_to may come in two batches. In between, the index holds the
directory nowhere (it waits for its moved_to, watchd.index.TreeIndex); stored then, and the
moved_to brought in by the journal at the next start, the directory came back without what it
held, and whatever went from it while the daemon was down was never reported deleted.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.test_index import snap
from watchd import state as st
from watchd import statefiles as sf
from watchd.config.model import WatchConfig
from watchd.events import KIND_BITS, Kind
from watchd.protocol.event_lines import EventEncoder
from watchd.records import IN_ISDIR, IN_MOVED_FROM, IN_MOVED_TO, Recorder
from watchd.replay import Held
from watchd.restore import bring_forward, index_spec
from watchd.resync import Resyncer


def journaled(seq: int, kind: Kind, path: str, cookie: int, src: str | None) -> Held:
    bits = (IN_MOVED_FROM if kind == Kind.MOVED_FROM else IN_MOVED_TO) | IN_ISDIR
    tail = EventEncoder().tail(seq, 1.0, "w", kind, path, bits, cookie, src)
    return (seq, "w", KIND_BITS[kind], path, tail)


def test_a_directory_move_split_between_two_batches_is_stored_whole(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "x" / "a" / "s").mkdir(parents=True)
    (root / "x" / "a" / "s" / "f").write_text("1")
    (root / "y").mkdir()
    watch = WatchConfig(name="w", path=str(root))
    resync = Resyncer()
    resync.configure([watch], changed=["w"])
    assert resync.scanned("w", snap(root), 0.0) is not None  # the first: fills the index
    state = st.State(str(tmp_path / "state"), max_bytes=1 << 20, fsync_interval=1.0,
                     retain=lambda: 100)
    assert state.open({"w": index_spec(watch)}) is None
    assert state.start("i", 0)
    state.unsettled = resync.unsettled  # as the daemon wires it

    def snapshots() -> list[st.Snapshot]:
        return [(name, index_spec(watch), dirs, seq) for name, dirs, seq in resync.indexes()]

    src, dst = str(root / "x" / "a"), str(root / "y" / "b")
    os.rename(src, dst)
    first = [(IN_MOVED_FROM | IN_ISDIR, 7, src, None)]
    second = [(IN_MOVED_TO | IN_ISDIR, 7, dst, src)]
    journal = [journaled(1, Kind.MOVED_FROM, src, 7, None),
               journaled(2, Kind.MOVED_TO, dst, 7, src)]

    async def publish() -> None:
        resync.track("w", [(0.0, first)], [Recorder().records(first)])
        state.save(1, snapshots)  # as after a resync or a fill, between the two batches
        await asyncio.sleep(0.1)
        resync.track("w", [(0.0, second)], [Recorder().records(second)])
        state.tick(2, snapshots)  # the next tick
        while state._pending is not None:
            await asyncio.sleep(0.01)
        # Then the daemon is killed (SIGKILL): what is stored is what these saves wrote.

    asyncio.run(publish())
    # While the daemon is down, something goes from the moved directory.
    os.unlink(root / "y" / "b" / "s" / "f")
    path = sf.index_file(str(tmp_path / "state"), "w")
    with open(path, "rb") as f:
        _, stored = sf.decode_index(f.read(), path)
    dirs = bring_forward(stored, "w", [e for e in journal if e[0] > stored.seq], 2)
    assert dirs is not None
    # What the start-up comparison sees as known: the directory with all it held, so that the
    # file gone while the daemon was down is a difference.
    assert "f" in dirs[str(root / "y" / "b" / "s")]
