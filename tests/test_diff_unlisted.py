"""A watch with `include` patterns: its scans list only the names the patterns take, so its
directories are keys that no listing names (their names are not taken). After a loss, what
changed in one of them is all that is published; it is not taken for a directory that went,
with all it held, and another that came."""

from __future__ import annotations

import pathlib

from tests.resync_setup import as_messages
from tests.test_index import snap
from watchd.config.model import WatchConfig
from watchd.resync import Resyncer
from watchd.watcher_watch import name_filter


def test_a_change_in_a_directory_no_listing_names_is_all_that_is_published(
        tmp_path: pathlib.Path) -> None:
    root = tmp_path / "t"
    for i in range(3):
        (root / f"d{i}" / "sub").mkdir(parents=True)
        (root / f"d{i}" / "a.log").write_text("a")
        (root / f"d{i}" / "sub" / "b.log").write_text("b")
    wanted = name_filter(("*.log",), ())
    resync = Resyncer()
    resync.configure([WatchConfig(name="w", path=str(root), include=["*.log"])],
                     changed=["w"])
    resync.scanned("w", snap(root, wanted=wanted), 0.0)  # the first: fills the index
    (root / "d0" / "new.log").write_text("n")
    (root / "d1" / "sub" / "b.log").unlink()
    resync.lost("w")
    result = resync.scanned("w", snap(root, wanted=wanted), 0.0)
    assert result is not None
    got = sorted((m["kind"], m["path"]) for m in as_messages(result.items))
    assert got == [("create", str(root / "d0" / "new.log")),
                   ("delete", str(root / "d1" / "sub" / "b.log"))]
    assert result.changes == 2
