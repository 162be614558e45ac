"""A restart's index takes away everything below a directory the journal moves or deletes.

A resync's scan can miss a directory (it moved while the scan ran), and the events below it
are published all the same: a client keeps the paths they name, and the index holds them under
keys that no listing leads to (watchd.index.TreeIndex._loose). When the journal's events
brought a stored index forward (watchd.restore), a move or delete of an ancestor took only
what its listings lead to: the rest stayed at the old path, which a client no longer has, and
the start-up comparison published their moves and deletes from where the client has nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.picture import Picture, listing
from tests.test_index import snap
from watchd import statefiles as sf
from watchd.config.model import WatchConfig
from watchd.events import KIND_BITS, Kind
from watchd.listing import Dirs, join
from watchd.protocol.event_lines import EventEncoder
from watchd.records import IN_CREATE, IN_DELETE, IN_ISDIR, IN_MOVED_FROM, IN_MOVED_TO, Recorder
from watchd.replay import Held
from watchd.restore import bring_forward, index_spec
from watchd.resync import Resyncer

_BITS = {Kind.CREATE: IN_CREATE, Kind.DELETE: IN_DELETE, Kind.MOVED_FROM: IN_MOVED_FROM,
         Kind.MOVED_TO: IN_MOVED_TO}


class Journal:
    """Events as the journal holds them, and as a client receives them."""

    def __init__(self) -> None:
        self.entries: list[Held] = []
        self.messages: list[dict[str, Any]] = []

    def add(self, kind: Kind, path: Path, *, is_dir: bool, cookie: int = 0,
            src: Path | None = None) -> None:
        seq = len(self.entries) + 1
        bits = _BITS[kind] | (IN_ISDIR if is_dir else 0)
        source = None if src is None else str(src)
        tail = EventEncoder().tail(seq, 1.0, "w", kind, str(path), bits, cookie, source)
        self.entries.append((seq, "w", KIND_BITS[kind], str(path), tail))
        self.messages.append({"type": "event", "kind": kind.value, "path": str(path),
                              "cookie": cookie, "src_path": source})


def paths(dirs: Dirs) -> set[str]:
    """Every path the index names, whether or not a listing leads to its parent."""
    return {join(key, name) for key, children in dirs.items() for name in children}


@pytest.mark.parametrize("how", ["moved", "moved_out", "deleted"])
def test_a_removed_directory_takes_what_events_made_below_it(tmp_path: Path, how: str) -> None:
    root, out = tmp_path / "t", tmp_path / "out"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("f")
    out.mkdir()
    watch = WatchConfig(name="w", path=str(root))
    resync = Resyncer()
    resync.configure([watch], changed=["w"])
    assert resync.scanned("w", snap(root), 0.0) is not None  # the first: fills the index
    client = Picture(listing(root))
    # Directories the scan did not see (as one that moved while a resync scanned): the events
    # below them are published, and the index makes keys no listing leads to.
    (root / "d" / "m" / "a").mkdir(parents=True)
    (root / "d" / "m" / "a" / "g").write_text("g")
    live = [(IN_CREATE | IN_ISDIR, 0, str(root / "d" / "m" / "a"), None),
            (IN_CREATE, 0, str(root / "d" / "m" / "a" / "g"), None)]
    resync.track("w", [(0.0, live)], [Recorder().records(live)])
    client.apply_all([{"type": "event", "kind": "create", "path": p, "cookie": 0}
                      for _mask, _cookie, p, _src in live])
    (_name, index, _seq), = resync.indexes()
    assert index is not None
    stored_file = sf.encode_index("w", index_spec(watch), 0, index)
    _, stored = sf.decode_index(stored_file, "w.index")
    # Then, after the index was stored, more of the same (in another missed directory too),
    # and the ancestor of them all goes.
    journal = Journal()
    (root / "d" / "m" / "b").mkdir()
    (root / "d" / "k" / "c").mkdir(parents=True)
    journal.add(Kind.CREATE, root / "d" / "m" / "b", is_dir=True)
    journal.add(Kind.CREATE, root / "d" / "k" / "c", is_dir=True)
    if how == "moved":
        os.rename(root / "d", root / "e")
        journal.add(Kind.MOVED_FROM, root / "d", is_dir=True, cookie=5)
        journal.add(Kind.MOVED_TO, root / "e", is_dir=True, cookie=5, src=root / "d")
    elif how == "moved_out":
        os.rename(root / "d", out / "d")
        journal.add(Kind.MOVED_FROM, root / "d", is_dir=True, cookie=5)
    else:  # as a resync's difference says it: the directory alone
        journal.add(Kind.DELETE, root / "d", is_dir=True)
    client.apply_all(journal.messages)

    dirs = bring_forward(stored, "w", journal.entries, len(journal.entries))

    assert dirs is not None
    gone = str(root / "d")
    assert [key for key in dirs if key == gone or key.startswith(gone + "/")] == []
    assert paths(dirs) == client.paths
    if how == "moved":  # what was below it went with it
        assert {str(root / "e" / "m" / "a" / "g"), str(root / "e" / "k" / "c")} <= paths(dirs)
