"""The tree's walks of directories (new ones, and those listed again) racing with the events
still queued: what a walk reports must never contradict what a client applies after it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.picture import Picture, listing
from tests.test_tree import _overflow
from watchd.inotify import (
    IN_ALL_EVENTS,
    IN_ATTRIB,
    IN_CREATE,
    IN_DELETE,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    InotifyFd,
)
from watchd.inotify.tree import Tree, TreeEvent
from watchd.inotify.walk import MAX_HELD_FDS, Walker

_KINDS = {IN_CREATE: "create", IN_DELETE: "delete", IN_MOVED_FROM: "moved_from",
          IN_MOVED_TO: "moved_to"}


def test_nothing_listed_is_reported_after_an_overflow_in_the_same_read(tmp_path: Path) -> None:
    # A directory gone before the tree could walk it gets its parent listed again at the end
    # of the read. With an overflow in that read, the listing's creates would go out after
    # the overflow's resync, which already describes the tree; and they describe it as it
    # was before: under names that may have changed meanwhile with no event left to say so.
    root = tmp_path / "root"
    root.mkdir()
    with InotifyFd() as ino:
        tree = Tree(ino, root, IN_CREATE | IN_ATTRIB, synthetic=True)
        tree.start()
        (root / "x").mkdir()
        (root / "x").rmdir()  # its create is read after it went: the root is listed again
        _overflow(ino, root)
        (root / "new" / "inner").mkdir(parents=True)  # no event: the queue is full
        (root / "new" / "inner" / "f").touch()
        events = tree.handle(ino.read_raw())
        assert tree.overflowed
        cut = next(i for i, e in enumerate(events) if e.mask & IN_Q_OVERFLOW)
        assert events[cut + 1:] == []
        # The resync that follows an overflow watches and reports it all.
        assert [e.path for e in tree.resync()] == [
            str(root / "new"), str(root / "new" / "inner"), str(root / "new" / "inner" / "f")]
        assert tree.directories == 3


def test_a_directory_found_by_listing_its_parent_again_comes_before_what_it_holds(
        tmp_path: Path) -> None:
    # The parent is listed again at the end of a read (a directory in it went before the
    # tree could walk it) and meets a directory whose create is not read yet. Reporting only
    # what it holds, the tree left the directory itself to its kernel create, which comes in
    # a later read: after its contents, or never, when the queue overflows before it.
    root = tmp_path / "root"
    root.mkdir()
    with InotifyFd() as ino:
        tree = Tree(ino, root, IN_CREATE, synthetic=True)
        tree.start()
        (root / "x").mkdir()
        (root / "x").rmdir()
        first = ino.read_raw()  # read: the create of x; not yet queued: that of new
        (root / "new" / "inner").mkdir(parents=True)
        (root / "new" / "inner" / "f").touch()
        events = tree.handle(first)
        events += tree.handle(ino.read_raw())
        known = {str(root)}
        for e in events:
            assert e.path.rpartition("/")[0] in known, f"{e.path} before its directory"
            known.add(e.path)
        assert [e.path for e in events].count(str(root / "new")) == 1
        assert {e.path for e in events} >= {
            str(root / "new"), str(root / "new" / "inner"), str(root / "new" / "inner" / "f")}


def _kinds(events: list[TreeEvent], root: Path) -> list[tuple[str, str, str | None]]:
    """(kind, path below root, source below root) of each event, in order."""
    def rel(path: str | None) -> str | None:
        return None if path is None else os.path.relpath(path, root)
    return [(next(k for bit, k in _KINDS.items() if e.mask & bit), rel(e.path) or "",
             rel(e.src_path)) for e in events]


@pytest.mark.parametrize("split", [False, True], ids=["one_read", "rename_in_a_later_read"])
@pytest.mark.parametrize("with_file", [False, True], ids=["empty", "holding_a_file"])
def test_a_new_directory_whose_parent_is_renamed_before_its_walk_is_reported_once(
        tmp_path: Path, split: bool, with_file: bool) -> None:
    # Make a directory, fill it, rename it: the kernel's create of p/x is reported, but p is
    # q before the tree can walk x, so p is listed again (as q) once the rename is read. That
    # listing finds x unwatched; its create was reported already and must not come again.
    root = tmp_path / "root"
    (root / "p").mkdir(parents=True)
    mask = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
    with InotifyFd() as ino:
        tree = Tree(ino, root, mask, synthetic=True)
        tree.start()
        (root / "p" / "x").mkdir()
        if with_file:
            (root / "p" / "x" / "f").touch()  # before x is watched: only a listing finds it
        events: list[TreeEvent] = []
        if split:
            first = ino.read_raw()  # the create of x; the rename is not queued yet
            os.rename(root / "p", root / "q")
            events += tree.handle(first)
        else:
            os.rename(root / "p", root / "q")
        events += tree.handle(ino.read_raw())
        expected = [("create", "p/x", None), ("moved_from", "p", None), ("moved_to", "q", "p")]
        if with_file:
            expected.append(("create", "q/x/f", None))
        assert _kinds(events, root) == expected
        assert not tree.overflowed
        assert tree.directories == 3
        (root / "q" / "x" / "g").touch()  # x is watched where it is now
        assert _kinds(tree.handle(ino.read_raw()), root) == [("create", "q/x/g", None)]


def _picture_of(events: list[TreeEvent], root: Path) -> set[str]:
    """A client's picture of the tree, after the tree's events alone (from an empty root)."""
    picture = Picture(set())
    for e in events:
        kind = next((k for bit, k in _KINDS.items() if e.mask & bit), None)
        if kind is not None:
            message = {"type": "event", "kind": kind, "path": e.path, "cookie": e.cookie}
            if e.src_path is not None:
                message["src_path"] = e.src_path
            picture.apply(message)
    return picture.paths


def _rename_while_walking(monkeypatch: pytest.MonkeyPatch, where: Path, src: str,
                          dst: str) -> None:
    """Rename where/src to where/dst once, after the walk has watched `where` and before it
    lists it: the kernel queues the pair, and the listing finds the new name."""
    entries = Walker.entries
    done: list[bool] = []

    def staged(self: Walker, fd: int, prefix: str, *args: Any) -> list[str]:
        if prefix == f"{where}/" and not done:
            done.append(True)
            os.rename(where / src, where / dst)
        return entries(self, fd, prefix, *args)

    monkeypatch.setattr(Walker, "entries", staged)


@pytest.mark.parametrize("is_dir", [False, True], ids=["file", "directory"])
def test_a_rename_between_the_watch_and_the_listing_of_a_new_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, is_dir: bool) -> None:
    # The listing reports the new name; the pair that follows names a source no client was
    # told of. Applied as a rename it would replace the new name with nothing.
    root = tmp_path / "root"
    root.mkdir()
    with InotifyFd() as ino:
        tree = Tree(ino, root, IN_ALL_EVENTS, synthetic=True)
        tree.start()
        d = root / "d"
        d.mkdir()
        if is_dir:
            (d / "f" / "inner").mkdir(parents=True)
        else:
            (d / "f").write_text("x")
        _rename_while_walking(monkeypatch, d, "f", "g")
        events = tree.handle(ino.read_raw())  # the create of d: its walk
        assert str(d / "g") in [e.path for e in events], "the listing did not find g"
        events += tree.handle(ino.read_raw())  # the rename's pair
        assert _picture_of(events, root) == listing(root)


def _created_once(events: list[TreeEvent], root: Path) -> None:
    """Apply the events to a client's set of paths; a create of a path it holds fails."""
    held: set[str] = set()
    for kind, path, src in _kinds(events, root):
        if kind == "create":
            assert path not in held, f"{path} created twice"
            held.add(path)
        elif kind == "moved_to" and src is not None:
            moved = {p for p in held if p == src or p.startswith(src + "/")}
            held -= moved
            held |= {path + p[len(src):] for p in moved}
        elif kind == "moved_to":
            held.add(path)
        elif kind == "delete":  # (a moved_from: its moved_to, paired here, says where)
            held -= {p for p in held if p == path or p.startswith(path + "/")}


def test_subdirectories_listed_before_their_parent_was_renamed_mid_walk_come_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A deep walk closes the fds of shallower directories; `a`, renamed while the walk is deep
    # below it, cannot be opened again to walk the subdirectory its listing reported and the
    # walk has not reached. `a` is listed again where its rename puts it: that subdirectory
    # is watched then, and what it holds reported, but not itself a second time.
    root = tmp_path / "root"
    root.mkdir()
    depth = MAX_HELD_FDS + 4
    with InotifyFd() as ino:
        tree = Tree(ino, root, IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO,
                    synthetic=True)
        tree.start()
        for chain in ("b", "c"):  # whichever the walk takes first, the other is left over
            (root / "new" / "a" / chain / Path(*["d"] * depth)).mkdir(parents=True)
            (root / "new" / "a" / chain / "f").touch()
        entries = Walker.entries

        def staged(self: Walker, fd: int, prefix: str, *args: Any) -> list[str]:
            if prefix.count("/d") == depth and (root / "new" / "a").exists():
                os.rename(root / "new" / "a", root / "new" / "a2")
            return entries(self, fd, prefix, *args)

        monkeypatch.setattr(Walker, "entries", staged)
        events = tree.handle(ino.read_raw())
        events += tree.handle(ino.read_raw())
        _created_once(events, root)
        assert not tree.overflowed
        for chain in ("b", "c"):
            assert _kinds(events, root).count(("create", f"new/a2/{chain}/f", None)) \
                + _kinds(events, root).count(("create", f"new/a/{chain}/f", None)) == 1
        assert tree.directories == 1 + 2 + 2 * (depth + 1)
