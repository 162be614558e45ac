"""What the compatible API does better than the `inotify` 0.2.12 package, on real inotify."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.inotify.test_compat import collect_until, has, seen, touch
from watchd.inotify import adapters, constants
from watchd.inotify.adapters import Event, Inotify, InotifyTree

MAX_QUEUED = "/proc/sys/fs/inotify/max_queued_events"
SMALL_QUEUE = 64


@contextlib.contextmanager
def small_queue(limit: int = SMALL_QUEUE) -> Iterator[None]:
    """Lower max_queued_events for the inotify instances created inside the block.

    The kernel reads the limit when an instance is created, so it is restored as soon as the
    block ends: other inotify users on the machine only see it for that instant.
    """
    if os.geteuid() != 0 or not os.access(MAX_QUEUED, os.W_OK):
        pytest.skip(f"needs root and a writable {MAX_QUEUED}")
    with open(MAX_QUEUED) as f:
        old = f.read().strip()
    with open(MAX_QUEUED, "w") as f:
        f.write(str(limit))
    try:
        yield
    finally:
        with open(MAX_QUEUED, "w") as f:
            f.write(old)


def flood(directory: Path, files: int) -> None:
    for n in range(files):
        touch(directory / f"f{n}")


def watch_count(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return sum(1 for line in f if line.startswith("inotify wd:"))


# -- 1. overflow is never silent ---------------------------------------------------------------

@pytest.mark.root
def test_overflow_raises_terminal_event_by_default(tmp_path: Path) -> None:
    with small_queue():
        i = Inotify([tmp_path])
    with i:
        flood(tmp_path, SMALL_QUEUE)  # 3 events per file: well past the queue
        before: list[Event | None] = []
        with pytest.raises(adapters.TerminalEventException) as info:
            before.extend(i.event_gen(timeout_s=5, yield_nones=False))
    assert info.value.type_name == "IN_Q_OVERFLOW"
    header, names, path, filename = info.value.event
    assert header == adapters._INOTIFY_EVENT(-1, constants.IN_Q_OVERFLOW, 0, 0)
    assert (names, path, filename) == (["IN_Q_OVERFLOW"], "", "")
    assert len(before) == SMALL_QUEUE  # the kernel kept this many, then gave up
    assert "max_queued_events" in str(info.value)


@pytest.mark.root
def test_overflow_is_yielded_when_not_terminal(tmp_path: Path) -> None:
    with small_queue():
        i = Inotify([tmp_path])
    with i:
        flood(tmp_path, SMALL_QUEUE)
        events = collect_until(i, lambda ev: bool(ev) and ev[-1][0].wd == -1,
                               yield_nones=False, terminal_events=("IN_UNMOUNT",))
        assert events[-1][1] == ["IN_Q_OVERFLOW"]
        # Reading goes on after the overflow.
        touch(tmp_path / "after")
        collect_until(i, has(tmp_path, "after", "IN_CLOSE_WRITE"), terminal_events=())


@pytest.mark.root
def test_tree_overflow_is_reported_and_new_directories_still_watched(tmp_path: Path) -> None:
    with small_queue():
        t = InotifyTree(tmp_path)
    with t:
        flood(tmp_path, SMALL_QUEUE)
        (tmp_path / "late").mkdir()  # its IN_CREATE is lost in the overflow
        events = collect_until(t, lambda ev: any(e[0].wd == -1 for e in ev), terminal_events=())
        assert [e for e in events if e[1] == ["IN_Q_OVERFLOW"]]
        # The tree looked again after the overflow and found the directory it missed.
        touch(tmp_path / "late" / "f")
        collect_until(t, has(tmp_path / "late", "f", "IN_CLOSE_WRITE"), terminal_events=())


# -- 2. recursion without a race ---------------------------------------------------------------

def test_mkdir_p_leaves_every_level_watched(tmp_path: Path) -> None:
    with InotifyTree(tmp_path) as t:
        deep = tmp_path / "a" / "b" / "c"
        deep.mkdir(parents=True)
        touch(deep / "f")  # all before the tree has read a single event
        collect_until(t, has(tmp_path, "a", "IN_CREATE"))
        # Once the tree has seen "a", every level below it is watched, although b and c were
        # made before their parents' watches existed.
        touch(deep / "g")
        collect_until(t, has(deep, "g", "IN_CLOSE_WRITE"))
        assert watch_count(t.fileno()) == 4


def test_new_directory_watch_misses_nothing_made_after_it(tmp_path: Path) -> None:
    with InotifyTree(tmp_path, mask=constants.IN_CREATE) as t:
        for n in range(20):
            d = tmp_path / f"d{n}"
            d.mkdir()
            (d / "sub").mkdir()
            touch(d / "sub" / "f")
        touch(tmp_path / "marker")
        collect_until(t, has(tmp_path, "marker", "IN_CREATE"))
        for n in range(20):
            touch(tmp_path / f"d{n}" / "sub" / "late")
        events = collect_until(
            t, lambda ev: len([e for e in ev if e[3] == "late"]) == 20
        )
    expected = sorted(str(tmp_path / f"d{n}" / "sub") for n in range(20))
    assert sorted(e[2] for e in events) == expected


# -- 3. renames --------------------------------------------------------------------------------

def test_renamed_directory_reports_new_paths_below_it(tmp_path: Path) -> None:
    (tmp_path / "old" / "sub" / "deeper").mkdir(parents=True)
    with InotifyTree(tmp_path) as t:
        os.rename(tmp_path / "old", tmp_path / "new")
        events = collect_until(t, has(tmp_path, "new", "IN_MOVED_TO"))
        moved_from = seen(events, tmp_path, "old", "IN_MOVED_FROM")
        moved_to = seen(events, tmp_path, "new", "IN_MOVED_TO")
        assert moved_from[0][0].cookie == moved_to[0][0].cookie != 0
        touch(tmp_path / "new" / "sub" / "deeper" / "f")
        events = collect_until(t, has(tmp_path / "new" / "sub" / "deeper", "f", "IN_CLOSE_WRITE"))
    assert not [e for e in events if "old" in e[2]]


def test_directory_moved_out_is_forgotten_and_moved_in_is_watched(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "leaving" / "sub").mkdir(parents=True)
    (outside / "arriving" / "sub").mkdir(parents=True)
    with InotifyTree(root) as t:
        assert watch_count(t.fileno()) == 3
        os.rename(root / "leaving", outside / "left")
        os.rename(outside / "arriving", root / "arrived")
        collect_until(t, has(root, "arrived", "IN_MOVED_TO"))
        touch(outside / "left" / "sub" / "f")  # no longer ours: must not be reported
        touch(root / "arrived" / "sub" / "g")
        events = collect_until(t, has(root / "arrived" / "sub", "g", "IN_CLOSE_WRITE"))
        assert not [e for e in events if e[3] == "f"]
        assert watch_count(t.fileno()) == 3  # root, arrived, arrived/sub


# -- 4. IN_IGNORED cleanup, deleted root -------------------------------------------------------

def test_deleted_and_recreated_subdirectory_is_watched_again(tmp_path: Path) -> None:
    with InotifyTree(tmp_path) as t:
        (tmp_path / "d").mkdir()
        collect_until(t, has(tmp_path, "d", "IN_CREATE"))
        (tmp_path / "d").rmdir()
        events = collect_until(t, has(tmp_path / "d", "", "IN_IGNORED"))
        assert seen(events, tmp_path / "d", "", "IN_DELETE_SELF")
        assert watch_count(t.fileno()) == 1
        (tmp_path / "d").mkdir()
        collect_until(t, has(tmp_path, "d", "IN_CREATE"))
        touch(tmp_path / "d" / "f")
        collect_until(t, has(tmp_path / "d", "f", "IN_CLOSE_WRITE"))


def test_deleted_root_is_reported_and_ends_the_generator(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    with InotifyTree(root) as t:
        (root / "sub").rmdir()
        root.rmdir()
        # No timeout: the generator must end by itself once its root is gone.
        events = [e for e in t.event_gen() if e is not None]
        assert seen(events, root, "", "IN_DELETE_SELF")
        assert seen(events, root, "", "IN_IGNORED")
        assert t.lost == [str(root)]
        assert watch_count(t.fileno()) == 0


# -- 5. symlinks are not followed --------------------------------------------------------------

def test_a_symlinked_root_is_resolved_once(tmp_path: Path) -> None:
    real, other = tmp_path / "real", tmp_path / "other"
    (real / "sub").mkdir(parents=True)
    other.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with InotifyTree(link) as t:
        assert watch_count(t.fileno()) == 2
        link.unlink()
        link.symlink_to(other)  # changes nothing for the tree: it watches what it resolved
        touch(other / "elsewhere")
        touch(real / "sub" / "marker")
        events = collect_until(t, has(str(link / "sub"), "marker", "IN_CLOSE_WRITE"))
        assert not any(e[3] == "elsewhere" for e in events)


def test_symlinked_directory_is_an_entry_not_a_subtree(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "existing-link").symlink_to(elsewhere)
    with InotifyTree(root) as t:
        assert watch_count(t.fileno()) == 1
        (root / "new-link").symlink_to(elsewhere)
        touch(elsewhere / "outside")
        touch(root / "marker")
        events = collect_until(t, has(root, "marker", "IN_CLOSE_WRITE"))
        assert seen(events, root, "new-link", "IN_CREATE")
        assert not [e for e in events if e[3] == "outside"]
        assert watch_count(t.fileno()) == 1


# -- 6. exclusion ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "exclude", [["node_modules", ".*"], lambda name: name in {"node_modules", ".git"}]
)
def test_excluded_directories_are_not_watched(tmp_path: Path, exclude: object) -> None:
    (tmp_path / "node_modules" / "pkg").mkdir(parents=True)
    (tmp_path / "src").mkdir()
    with InotifyTree(tmp_path, exclude=exclude) as t:  # type: ignore[arg-type]
        assert watch_count(t.fileno()) == 2  # root and src
        (tmp_path / "src" / "node_modules").mkdir()
        (tmp_path / ".git").mkdir()
        touch(tmp_path / "node_modules" / "pkg" / "f")
        touch(tmp_path / "src" / "marker")
        events = collect_until(t, has(tmp_path / "src", "marker", "IN_CLOSE_WRITE"))
        assert not [e for e in events if e[3] in {"node_modules", ".git", "f"}]
        assert watch_count(t.fileno()) == 2


def test_exclusion_is_off_by_default(tmp_path: Path) -> None:
    (tmp_path / "node_modules").mkdir()
    (tmp_path / ".git").mkdir()
    with InotifyTree(tmp_path) as t:
        assert watch_count(t.fileno()) == 3


# -- names that are not UTF-8 ------------------------------------------------------------------

def test_tree_reports_non_utf8_names(tmp_path: Path) -> None:
    raw_dir = os.fsencode(tmp_path) + b"/caf\xe9"
    with InotifyTree(tmp_path) as t:
        os.mkdir(raw_dir)
        collect_until(t, has(tmp_path, "caf\udce9", "IN_CREATE"))
        touch(raw_dir + b"/\xff")
        collect_until(t, has(os.fsdecode(raw_dir), "\udcff", "IN_CLOSE_WRITE"))


# -- unmount -----------------------------------------------------------------------------------

@contextlib.contextmanager
def mounted_tmpfs(where: Path) -> Iterator[Path]:
    """A small tmpfs mounted at `where` (made if missing; root only), over what it holds;
    unmounted at the end if still mounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir(exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        if os.path.ismount(where):
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.root
def test_unmounted_tree_root_is_terminal_then_ends(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "mnt") as mnt, InotifyTree(mnt) as t:
        subprocess.run(["umount", str(mnt)], check=True)
        with pytest.raises(adapters.TerminalEventException) as info:
            list(t.event_gen(timeout_s=5))
        assert info.value.type_name == "IN_UNMOUNT"
        assert info.value.event[2] == str(mnt)
        assert str(mnt) in str(info.value)
        # Received as an event instead, it is followed by IN_IGNORED and the end.
        rest = [e for e in t.event_gen(terminal_events=()) if e is not None]
        assert [e[1] for e in rest] == [["IN_IGNORED"]]
        assert t.lost == [str(mnt)]


@pytest.mark.root
def test_unmount_below_the_root_is_reported(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "mnt") as mnt, InotifyTree(tmp_path) as t:
        subprocess.run(["umount", str(mnt)], check=True)
        with pytest.raises(adapters.TerminalEventException) as info:
            list(t.event_gen(timeout_s=5))
        assert info.value.type_name == "IN_UNMOUNT"
        assert info.value.event[2:] == (str(mnt), "")
        rest = collect_until(t, has(mnt, "", "IN_IGNORED"), terminal_events=())
        assert len(rest) == 1
        assert t.lost == []


def test_events_before_a_rename_in_the_same_read_keep_the_old_path(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    with InotifyTree(tmp_path, mask=constants.IN_CREATE | constants.IN_MOVE) as t:
        # All of it queued before the tree reads anything.
        touch(tmp_path / "d" / "sub" / "before")
        os.rename(tmp_path / "d", tmp_path / "e")
        touch(tmp_path / "e" / "sub" / "after")
        events = collect_until(t, has(tmp_path / "e" / "sub", "after", "IN_CREATE"))
    assert [(e[2], e[3]) for e in events] == [
        (str(tmp_path / "d" / "sub"), "before"),
        (str(tmp_path), "d"),
        (str(tmp_path), "e"),
        (str(tmp_path / "e" / "sub"), "after"),
    ]
