"""A restart's index takes away everything below a directory that a move from outside replaced.

A directory moved into the tree from outside comes as a `moved_to` with no source a client
knows: a client replaces whatever had the name with a bare directory, and has nothing below it
until the events that follow say so. Bringing a stored index forward through the journal
(watchd.restore.Forward) kept what the index held below the replaced directory, among it the
keys no listing leads to (watchd.index.TreeIndex._loose), so that the index named paths the
client no longer had, and the start-up comparison published deletes of them.

The replaced directory is empty when the rename happens (rename(2) wants it so) while the index
still holds entries below it: the removal of those entries was lost in a kernel overflow, and
the daemon stopped before that overflow's resync was published. The journal holds only the
move; the index a client's picture, which the start-up comparison brings to the tree.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.picture import Picture, listing
from tests.resync_setup import as_messages
from tests.test_index import snap
from tests.test_restore_loose import Journal, paths
from watchd import statefiles as sf
from watchd.config.model import WatchConfig
from watchd.events import Kind
from watchd.records import IN_CREATE, IN_ISDIR, Recorder
from watchd.restore import bring_forward, index_spec
from watchd.resync import Resyncer


def held_below(tmp_path: Path) -> tuple[Path, Path, Resyncer, Picture]:
    """A tree t (with t/d) and, outside it, a directory x holding y/z; a watch "w" of t whose
    index holds, below t/d, a directory a resync's scan missed (the events below it published,
    kept under keys no listing leads to) and one it lists; and a client's picture in step with
    it."""
    root, outside = tmp_path / "t", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    (outside / "x" / "y").mkdir(parents=True)
    (outside / "x" / "y" / "z").write_text("z")
    resync = Resyncer()
    resync.configure([WatchConfig(name="w", path=str(root))], changed=["w"])
    assert resync.scanned("w", snap(root), 0.0) is not None  # the first: fills the index
    (root / "d" / "m" / "a").mkdir(parents=True)
    (root / "d" / "m" / "a" / "g").write_text("g")
    (root / "d" / "k").mkdir()
    live = [(IN_CREATE | IN_ISDIR, 0, str(root / "d" / "m" / "a"), None),
            (IN_CREATE, 0, str(root / "d" / "m" / "a" / "g"), None),
            (IN_CREATE | IN_ISDIR, 0, str(root / "d" / "k"), None)]
    resync.track("w", [(0.0, live)], [Recorder().records(live)])
    return root, outside, resync, Picture(listing(root) - {str(root / "d" / "m")})


def test_a_directory_moved_in_over_another_takes_what_the_index_held_below_it(
        tmp_path: Path) -> None:
    root, outside, resync, client = held_below(tmp_path)
    watch = WatchConfig(name="w", path=str(root))
    (_name, index, _seq), = resync.indexes()
    assert index is not None
    _, stored = sf.decode_index(sf.encode_index("w", index_spec(watch), 0, index), "w.idx")
    assert paths(stored.dirs) == client.paths
    # Their removal is lost (an overflow), then a directory from outside replaces d.
    shutil.rmtree(root / "d" / "m")
    (root / "d" / "k").rmdir()
    (outside / "x").rename(root / "d")
    journal = Journal()
    journal.add(Kind.MOVED_TO, root / "d", is_dir=True, cookie=9)
    client.apply_all(journal.messages)
    assert client.paths == {str(root / "d")}

    dirs = bring_forward(stored, "w", journal.entries, len(journal.entries))

    assert dirs is not None
    below = str(root / "d") + "/"
    assert [key for key in dirs if key.startswith(below)] == []
    assert paths(dirs) == client.paths
    # The start-up comparison brings the client to the tree, naming nothing it lacks.
    resync.restore("w", dirs)
    result = resync.scanned("w", snap(root), 0.0)
    assert result is not None
    messages = as_messages(result.items)
    unknown = [m for m in messages if m["kind"] in ("delete", "moved_from")
               and m["path"] not in client.paths]
    assert unknown == []
    client.apply_all(messages)
    assert client.paths == listing(root)
