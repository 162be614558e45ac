"""A tree's bookkeeping on its own: the maps, renames, moves paired by cookie, listed names."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from watchd.inotify import IN_ALL_EVENTS, InotifyFd
from watchd.inotify.watches import Watches, dir_path


@pytest.fixture
def ino() -> Iterator[InotifyFd]:
    with InotifyFd() as fd:
        yield fd


def dir_stat(ino: int, dev: int = 1, ctime_ns: int = 0) -> os.stat_result:
    """What an fstat of a directory with that identity and ctime returns."""
    return os.stat_result((0o40755, ino, dev, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, ctime_ns))


def watched(watches: Watches, *prefixes: str) -> None:
    for wd, prefix in enumerate(prefixes, start=1):
        watches.remember(wd, prefix, dir_stat(100 + wd))
    watches.root_wd = 1


def test_a_rename_moves_every_descendant_and_no_sibling(ino: InotifyFd) -> None:
    watches = Watches(ino)
    watched(watches, "/r/", "/r/a/", "/r/a/b/", "/r/ab/")
    watches.rename(watches.below("/r/a/"), "/r/a/", "/r/z/")
    assert watches.path_of == {1: "/r/", 2: "/r/z/", 3: "/r/z/b/", 4: "/r/ab/"}
    assert watches.wd_of == {"/r/": 1, "/r/z/": 2, "/r/z/b/": 3, "/r/ab/": 4}


def test_a_move_pairs_by_cookie_within_a_batch(ino: InotifyFd) -> None:
    watches = Watches(ino)
    watched(watches, "/r/", "/r/a/", "/r/a/b/")
    watches.move_from(7, "/r/a", is_dir=True)
    watches.move_from(8, "/r/file", is_dir=False)
    assert watches.move_to(7) == ("/r/a", [2, 3])
    assert watches.move_to(7) is None  # one IN_MOVED_TO per IN_MOVED_FROM
    watches.end_batch()
    assert watches.moves == {}
    # Paired: the watches stay (the tree renames them when it reads the IN_MOVED_TO).
    assert watches.path_of == {1: "/r/", 2: "/r/a/", 3: "/r/a/b/"}


def test_a_directory_moved_out_of_the_tree_is_forgotten_at_the_end_of_the_batch(
    ino: InotifyFd, tmp_path: Path
) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    watches = Watches(ino)
    for path in (tmp_path, tmp_path / "a", tmp_path / "a" / "b"):
        watches.remember(ino.add_watch(str(path), IN_ALL_EVENTS), str(path) + "/",
                         os.stat(path))
    watches.root_wd = watches.wd_of[str(tmp_path) + "/"]
    watches.move_from(5, str(tmp_path / "a"), is_dir=True)
    watches.end_batch()  # no IN_MOVED_TO came: it left the tree
    assert list(watches.path_of.values()) == [str(tmp_path) + "/"]
    assert watches.wd_of == {str(tmp_path) + "/": watches.root_wd}


def test_a_listed_name_is_a_duplicate_once_for_two_batches(ino: InotifyFd) -> None:
    watches = Watches(ino)
    watched(watches, "/r/", "/r/new/")
    watches.synth_cur.setdefault(2, set()).update({"x", "y"})
    assert watches.unlist(2, "x")
    assert not watches.unlist(2, "x")  # forgotten: a re-creation is the kernel's own
    watches.end_batch()
    assert watches.unlist(2, "y")  # still known in the next batch
    watches.synth_cur.setdefault(2, set()).add("z")
    watches.end_batch()
    watches.end_batch()
    assert not watches.unlist(2, "z")  # not past it
    assert not watches.unlist(1, "y")


def test_forgetting_a_watch_drops_what_waits_on_it(ino: InotifyFd) -> None:
    watches = Watches(ino)
    watched(watches, "/r/", "/r/a/")
    watches.synth_cur[2] = {"x"}
    watches.rescan[2] = 3
    watches.forget(2)
    assert (watches.path_of, watches.wd_of, watches.synth_cur, watches.rescan) == (
        {1: "/r/"}, {"/r/": 1}, {}, {})
    assert dir_path("/r/") == "/r"
    assert dir_path("/") == "/"
