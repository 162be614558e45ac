"""A tree against a hostile writer or file system: swapped links, unreadable and deep directories.

Each attack is driven deterministically: the tree's `prune` callback runs while a directory is
being listed, so a test can change the file system at exactly that point of a walk.
"""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.harness import short_tmpdir
from tests.inotify.isolation import run_isolated
from tests.test_tree import QUIET, Run, kernel_inodes
from watchd.inotify import (
    IN_ALL_EVENTS,
    IN_CREATE,
    IN_ISDIR,
    IN_MOVED_FROM,
    IN_Q_OVERFLOW,
    InotifyFd,
)
from watchd.inotify.tree import RESCAN_TRIES, Tree


@pytest.fixture
def private(tmp_path: pathlib.Path) -> pathlib.Path:
    """A directory outside the tree, mode 0700, with subdirectories named like the tree's."""
    secret = tmp_path / "private"
    for sub in ("inner", "zz", "proc"):
        (secret / sub).mkdir(parents=True)
        (secret / sub / f"secret-{sub}").write_text("x")
    secret.chmod(0o700)
    return secret


@pytest.fixture
def fds() -> Iterator[list[InotifyFd]]:
    made: list[InotifyFd] = []
    yield made
    for ino in made:
        ino.close()


def _swap_on(name: str, what: pathlib.Path, target: pathlib.Path) -> Callable[[str], bool]:
    """A prune callback that, when the walk lists `name`, renames `what` away and puts a
    symbolic link to `target` in its place (once)."""
    done: list[bool] = []

    def prune(seen: str) -> bool:
        if seen == name and not done:
            done.append(True)
            what.rename(what.with_name(what.name + "-moved"))
            what.symlink_to(target)
        return False

    return prune


def _inodes_below(path: pathlib.Path) -> set[int]:
    return {os.stat(d).st_ino for d, _, _ in os.walk(path)}


def _leaks(run: Run, secret: pathlib.Path) -> list[str]:
    return [e.path for e in run.events if "secret" in e.path or str(secret) in e.path]


def test_a_link_swapped_in_for_a_parent_during_the_start_is_not_followed(
    tmp_path: pathlib.Path, private: pathlib.Path, fds: list[InotifyFd]
) -> None:
    root = tmp_path / "pub"
    for sub in ("inner", "zz"):
        (root / "a" / sub).mkdir(parents=True)
    ino = InotifyFd()
    fds.append(ino)
    # While a/ is being listed, a/ becomes a link to the private directory; a/zz and
    # a/inner are still to be watched and listed.
    tree = Tree(ino, root, QUIET, synthetic=True, prune=_swap_on("inner", root / "a", private))
    created = tree.start(report=True)
    assert not [e.path for e in created if "secret" in e.path]
    assert kernel_inodes(ino).isdisjoint(_inodes_below(private))
    # What was listed is the directory that was there, now at a-moved.
    assert tree.directories == 4
    assert kernel_inodes(ino) == _inodes_below(root / "a-moved") | {os.stat(root).st_ino}


def test_a_link_swapped_in_for_a_new_directory_is_not_followed(
    tmp_path: pathlib.Path, private: pathlib.Path, fds: list[InotifyFd]
) -> None:
    root = tmp_path / "pub"
    root.mkdir()
    ino = InotifyFd()
    fds.append(ino)
    tree = Tree(ino, root, QUIET, synthetic=True, prune=_swap_on("inner", root / "a", private))
    tree.start()
    run = Run(ino, tree, root)
    # A new directory, and before the tree handles its IN_CREATE, its own subdirectories;
    # the swap comes while the tree lists it: mv pub/a pub/a-moved; ln -s private pub/a.
    for sub in ("inner", "zz"):
        (root / "a" / sub).mkdir(parents=True)
    run.drain()
    (private / "zz" / "later").write_text("x")
    (root / "a-moved" / "zz" / "probe").write_text("x")
    run.drain()
    assert _leaks(run, private) == []
    assert kernel_inodes(ino).isdisjoint(_inodes_below(private))
    assert (IN_CREATE, str(root / "a-moved" / "zz" / "probe")) in run.reported(IN_CREATE)
    assert (IN_CREATE | IN_ISDIR, str(root / "a" / "inner")) in run.reported(IN_CREATE)
    assert kernel_inodes(ino) == _inodes_below(root / "a-moved") | {os.stat(root).st_ino}
    assert run.watched() == {str(root), *(str(root / "a-moved" / d) for d in ("", "inner", "zz"))}


def test_a_link_to_the_root_directory_does_not_lead_into_proc(
    tmp_path: pathlib.Path, fds: list[InotifyFd]
) -> None:
    root = tmp_path / "pub"
    (root / "a" / "proc").mkdir(parents=True)
    (root / "a" / "sys").mkdir()
    ino = InotifyFd()
    fds.append(ino)
    swap = _swap_on("proc", root / "a", pathlib.Path("/"))
    tree = Tree(ino, root, QUIET, synthetic=True, prune=swap)
    created = tree.start(report=True)
    assert tree.directories == 4  # pub, a (now a-moved), its proc and its sys
    assert tree.failed == {}
    assert all(e.path.startswith(str(root) + "/") for e in created)
    assert kernel_inodes(ino) == _inodes_below(root / "a-moved") | {os.stat(root).st_ino}


def test_each_watch_is_on_the_inode_it_was_added_for(
    tmp_path: pathlib.Path, fds: list[InotifyFd]
) -> None:
    root = tmp_path / "root"
    for d in ("a/b", "c"):
        (root / d).mkdir(parents=True)
    ino = InotifyFd()
    fds.append(ino)
    tree = Tree(ino, root, QUIET)
    tree.start()
    with open(f"/proc/self/fdinfo/{ino.fileno()}") as f:
        watches = {
            int(fields["wd"]): int(fields["ino"], 16)
            for line in f
            if line.startswith("inotify ")
            for fields in [dict(x.split(":", 1) for x in line.split()[1:])]
        }
    assert len(watches) == 4
    for wd, inode in watches.items():
        path = tree.path_of(wd)
        assert path is not None
        assert os.stat(path).st_ino == inode


# --- deeper than PATH_MAX -------------------------------------------------------------------

LONG = 200  # bytes per name; 24 levels make a path of more than 4,096 bytes


def _deep(top: pathlib.Path, levels: int, start: int = 0) -> tuple[str, int]:
    """Make `levels` nested directories of LONG-byte names below `top`, by fd (the paths
    are too long to name); return the path of the deepest and an fd of it."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    path = str(top)
    for i in range(start, start + levels):
        name = f"{i:03d}" + "d" * (LONG - 3)
        os.mkdir(name, dir_fd=fd)
        nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
        path += "/" + name
    return path, fd


def test_directories_deeper_than_path_max_are_watched(
    tmp_path: pathlib.Path, fds: list[InotifyFd]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    deep, fd = _deep(root, 24)
    assert len(os.fsencode(deep)) > 4096
    ino = InotifyFd()
    fds.append(ino)
    tree = Tree(ino, root, QUIET, synthetic=True)
    tree.start()
    assert tree.directories == 25
    assert tree.failed == {}
    run = Run(ino, tree, root)
    try:
        os.close(os.open("file", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        run.until(lambda ev: any(e.path == deep + "/file" for e in ev))
        # And a new chain as deep again below it, made while the tree watches.
        os.mkdir("x", dir_fd=fd)
        sub = os.open("x", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        deeper, fd2 = _deep(pathlib.Path(f"/proc/self/fd/{sub}"), 3)
        os.close(sub)
        os.close(os.open("f2", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd2))
        os.close(fd2)
        tail = deeper.split("/", 5)[5]  # the names below x
        want = f"{deep}/x/{tail}/f2"
        run.until(lambda ev: any(e.path == want for e in ev))
        assert tree.directories == 29
    finally:
        os.close(fd)


# --- fast renames ---------------------------------------------------------------------------


def _probe_all(run: Run, x: pathlib.Path, tag: str) -> list[str]:
    """Write a probe in x, x/y and x/y/z; the ones the tree did not report."""
    probes = [x / tag, x / "y" / tag, x / "y" / "z" / tag]
    for probe in probes:
        probe.touch()
    run.drain()
    reported = set(run.paths(IN_CREATE))
    return [str(p) for p in probes if str(p) not in reported]


def test_a_directory_renamed_while_it_is_listed_keeps_its_subtree(
    tmp_path: pathlib.Path, fds: list[InotifyFd]
) -> None:
    root = tmp_path / "pub"
    (root / "pp" / "A" / "x" / "y" / "z").mkdir(parents=True)
    (root / "pp" / "B").mkdir()
    a, b = root / "pp" / "A" / "x", root / "pp" / "B" / "x"
    armed: list[bool] = []

    def prune(name: str) -> bool:
        if name == "y" and armed:
            armed.clear()
            b.rename(a)  # x moves on while the tree lists it
        return False

    ino = InotifyFd()
    fds.append(ino)
    tree = Tree(ino, root, QUIET, synthetic=True, prune=prune)
    tree.start()
    run = Run(ino, tree, root)
    a.rename(b)
    assert ino.wait_readable(5)
    raw = ino.read_events()
    # The read split the rename: its IN_MOVED_FROM ends one batch, so x left the tree, and
    # its IN_MOVED_TO starts the next, so x is new there and is watched and listed again.
    cut = next(i for i, ev in enumerate(raw) if ev.mask & IN_MOVED_FROM) + 1
    run.events.extend(tree.handle(raw[:cut]))
    armed.append(True)
    run.events.extend(tree.handle(raw[cut:]))
    a.rename(b)  # and once more before the tree has read the rename made during the listing
    assert _probe_all(run, b, "probe") == []
    assert run.watched() == {str(root / d) for d in ("", "pp", "pp/A", "pp/B", "pp/B/x",
                                                     "pp/B/x/y", "pp/B/x/y/z")}


RENAMER = """
import os, sys, time
a, b, until = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
while time.monotonic() < until:  # about as fast as `mv` in a shell loop
    os.rename(a, b)
    time.sleep(0.0005)
    os.rename(b, a)
    time.sleep(0.0005)
if int(sys.argv[4]):
    os.rename(a, b)
"""


def test_fast_renames_leave_no_directory_unwatched(
    tmp_path: pathlib.Path, fds: list[InotifyFd]
) -> None:
    root = tmp_path / "pub"
    (root / "pp" / "A" / "x" / "y" / "z").mkdir(parents=True)
    (root / "pp" / "B").mkdir()
    ino = InotifyFd()
    fds.append(ino)
    tree = Tree(ino, root, QUIET, synthetic=True)
    tree.start()
    run = Run(ino, tree, root)
    missed: list[str] = []
    here, there = root / "pp" / "A" / "x", root / "pp" / "B" / "x"
    for attempt in range(20):
        # The tree handles the renames while they happen, as a busy watcher would; every
        # other run ends with x on the other side.
        flip = attempt % 2
        renamer = subprocess.Popen([sys.executable, "-c", RENAMER, str(here), str(there),
                                    "0.15", str(flip)])
        while renamer.poll() is None:
            run.pump(0.01)
        assert renamer.wait() == 0
        while run.pump(0.05):
            pass  # what is left of the renames
        if tree.overflowed:
            # Only if this process was starved for seconds: then, as the watcher does, look
            # again; the probes below come after that either way.
            run.events.extend(tree.resync())
        if flip:
            here, there = there, here
        missed += _probe_all(run, here, f"probe{attempt}")
    assert missed == []
    assert tree.directories == 7


def test_a_new_directory_whose_parent_was_replaced_is_found_again(
    tmp_path: pathlib.Path, fds: list[InotifyFd]
) -> None:
    root = tmp_path / "pub"
    (root / "p").mkdir(parents=True)
    ino = InotifyFd()
    fds.append(ino)
    tree = Tree(ino, root, QUIET, synthetic=True)
    tree.start()
    run = Run(ino, tree, root)
    # All queued before the tree reads: when it handles the IN_CREATE of new/ in p/, the
    # path p/ names another directory, which has a new/ too.
    (root / "p" / "new").mkdir()
    (root / "p").rename(root / "q")
    (root / "p" / "new").mkdir(parents=True)
    run.drain()
    (root / "q" / "new" / "f").touch()
    (root / "p" / "new" / "g").touch()
    run.drain()
    assert run.watched() == {str(root / d) for d in ("", "q", "q/new", "p", "p/new")}
    created = run.paths(IN_CREATE)
    assert str(root / "q/new/f") in created
    assert str(root / "p/new/g") in created
    assert not any(p.endswith(("q/new/g", "p/new/f")) for p in created)


def test_a_directory_out_of_reach_for_long_is_announced_as_a_loss(
    tmp_path: pathlib.Path, fds: list[InotifyFd]
) -> None:
    root = tmp_path / "pub"
    (root / "p").mkdir(parents=True)
    ino = InotifyFd()
    fds.append(ino)
    tree = Tree(ino, root, QUIET, synthetic=True)
    tree.start()
    (root / "p" / "new").mkdir()
    (root / "p").rename(root / "q")
    (root / "p").mkdir()
    assert ino.wait_readable(5)
    raw = ino.read_events()
    # The tree gets the IN_CREATE of new/ in p/, and then (as if its reader were stuck) not
    # the rename that would tell it where p/ went: it cannot account for new/.
    events = tree.handle(raw[:1])
    for _ in range(RESCAN_TRIES - 1):
        assert not tree.overflowed
        events += tree.handle([])
    assert tree.overflowed
    assert [e.mask for e in events if e.mask & IN_Q_OVERFLOW] == [IN_Q_OVERFLOW]
    events += tree.handle(raw[1:])
    assert tree.resync() == [(IN_CREATE | IN_ISDIR, 0, str(root / "q" / "new"), None, -1,
                              b"new", 0)]
    watched = {tree.path_of(wd) for wd in range(1, 20)} - {None}
    assert watched == {str(root / d) for d in ("", "q", "q/new", "p")}


# --- unreadable directories -------------------------------------------------------------------

CAP_DAC_READ_SEARCH = 1 << 2
NOBODY = 65534


def test_a_directory_that_cannot_be_listed_is_recorded_and_the_walk_goes_on() -> None:
    # As the shipped unit runs the watcher: another user with CAP_DAC_READ_SEARCH, which opens
    # any directory; /proc/1/map_files (and fd/) then opens, but listing it fails (EACCES).
    def attempt() -> tuple[int, dict[str, str], int]:
        with InotifyFd() as ino:
            tree = Tree(ino, "/proc/1", QUIET, synthetic=True)
            tree.start()
            return tree.directories, dict(tree.failed), tree.unreadable

    directories, failed, unreadable = run_isolated(attempt, uid=NOBODY, caps=CAP_DAC_READ_SEARCH)
    assert failed["/proc/1/map_files/"] == os.strerror(errno.EACCES)
    assert unreadable == len(failed)
    assert directories > 10  # task/, net/... were watched all the same


@pytest.fixture
def shared() -> Iterator[pathlib.Path]:
    """A directory that another user can reach (tmp_path's parents are root's alone)."""
    with short_tmpdir() as path:
        os.chmod(path, 0o755)
        yield pathlib.Path(path)


def test_unreadable_directories_are_counted_and_the_rest_is_watched(
    shared: pathlib.Path,
) -> None:
    top = shared / "top"
    (top / "open" / "sub").mkdir(parents=True)
    (top / "closed" / "inner").mkdir(parents=True)
    (top / "closed").chmod(0o700)  # root's: another user cannot list it
    for d in (top, top / "open", top / "open" / "sub"):
        os.chown(d, NOBODY, NOBODY)

    def attempt() -> tuple[int, list[str], list[str]]:
        with InotifyFd() as ino:
            tree = Tree(ino, top, QUIET, synthetic=True)
            tree.start()
            run = Run(ino, tree, top)
            (top / "open" / "new").mkdir()
            (top / "open" / "new" / "f").touch()
            run.drain()
            return tree.directories, sorted(tree.failed), run.paths(IN_CREATE)

    directories, failed, created = run_isolated(attempt, uid=NOBODY)
    assert failed == [f"{top}/closed/"]
    assert directories == 4  # top, open, open/sub, open/new
    assert f"{top}/open/new/f" in created


def test_a_resync_at_the_budget_keeps_every_watch(tmp_path: pathlib.Path) -> None:
    # A tree at its max_directories that resyncs (after an overflow, or to heal) must keep the
    # watches it has: the budget stops new watches only.
    for i in range(10):
        (tmp_path / f"d{i}").mkdir()
    with InotifyFd() as ino:
        tree = Tree(ino, tmp_path, IN_CREATE, synthetic=True, max_directories=11)
        tree.start()
        assert tree.directories == 11
        (tmp_path / "d0" / "over").mkdir()  # one more than the budget allows
        tree.resync()
        assert tree.directories == 11
        assert tree.limit_error is not None
        assert tree.unwatched == 1


@pytest.mark.parametrize("fill", [62, 63, 64])
def test_a_rescan_with_the_batch_fds_full_watches_what_it_finds(
    tmp_path: pathlib.Path, fill: int
) -> None:
    # Opening a directory's parent to quiet its watch (a listing would be reported: IN_OPEN is
    # asked for) may close the fds opened in the batch so far; the directory being listed
    # again must not be one of them.
    for i in range(70):
        (tmp_path / f"d{i:02}").mkdir()
    (tmp_path / "p" / "t").mkdir(parents=True)
    with InotifyFd() as ino:
        tree = Tree(ino, tmp_path, IN_ALL_EVENTS, synthetic=True)
        tree.start()
        reach, watches = tree._reach, tree._watches
        for i in range(fill):
            prefix = f"{tmp_path}/d{i:02}/"
            assert reach.dir_fd(prefix, watches.wd_of[prefix]) is not None
        new = tmp_path / "p" / "t" / "new"
        new.mkdir()  # not seen by the tree: its event is never read
        watches.rescan[watches.wd_of[f"{tmp_path}/p/t/"]] = 0
        tree._rescanner.run([], overflowed=False)
        reach.close_batch_fds()
        assert f"{new}/" in watches.wd_of
