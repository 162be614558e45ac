"""The index takes away everything below a directory that a move from outside replaced, as a
client does (a rename replaces what had the name), keys no listing leads to included.

The same case as tests/test_restore_moved_in.py, live: the index holds entries below a
directory (some under keys no listing leads to, TreeIndex._loose) whose removal it was not
told, and a directory moved in from outside replaces it. A client has nothing below it then;
an index that kept them would make a later resync publish deletes of paths the client lacks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.test_index import paths
from tests.test_restore_moved_in import held_below
from watchd.records import IN_ISDIR, IN_MOVED_TO, Recorder


def test_a_directory_moved_in_over_another_takes_what_the_index_held_below_it(
        tmp_path: Path) -> None:
    root, outside, resync, client = held_below(tmp_path)
    index = resync.watches["w"].index
    assert paths(index.as_dirs()) == client.paths
    # Their removal unheard of, a directory from outside replaces d.
    shutil.rmtree(root / "d" / "m")
    (root / "d" / "k").rmdir()
    (outside / "x").rename(root / "d")
    moved = [(IN_MOVED_TO | IN_ISDIR, 9, str(root / "d"), None)]
    resync.track("w", [(0.0, moved)], [Recorder().records(moved)])
    client.apply({"type": "event", "kind": "moved_to", "path": str(root / "d"), "cookie": 9,
                  "is_dir": True})
    assert client.paths == {str(root / "d")}
    assert [key for key in index.dirs if key.startswith(str(root / "d") + "/")] == []
    assert paths(index.as_dirs()) == client.paths
