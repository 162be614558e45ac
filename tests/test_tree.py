"""Recursive trees on real inotify under tmp_path: bookkeeping, renames, races, limits."""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import itertools
import os
import pathlib
import shutil
import subprocess
import termios
import time
from collections.abc import Callable, Iterator

import pytest

from tests.harness import wait_for
from tests.inotify.isolation import run_isolated
from tests.picture import Picture, listing
from watchd.inotify import (
    IN_ACCESS,
    IN_ALL_EVENTS,
    IN_ATTRIB,
    IN_CLOSE_NOWRITE,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_EXCL_UNLINK,
    IN_IGNORED,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_OPEN,
    IN_Q_OVERFLOW,
    InotifyError,
    InotifyFd,
    NotADirectoryPathError,
    PathNotFoundError,
    RawEvent,
    WatchLimitError,
)
from watchd.inotify.tree import Tree, TreeEvent

QUIET = IN_ALL_EVENTS & ~(IN_OPEN | IN_ACCESS | IN_CLOSE_NOWRITE)
SENTINEL = "zz-sentinel"
# How long a test waits for the events it expects. Only a failing test waits that long: on a
# loaded machine a few thousand events can take tens of seconds to be made and read.
PATIENCE = 60.0


class Run:
    """A tree on its own fd, with the events it reported so far."""

    def __init__(self, ino: InotifyFd, tree: Tree, sentinel_dir: pathlib.Path) -> None:
        self.ino = ino
        self.tree = tree
        self.events: list[TreeEvent] = []
        self.raw: list[RawEvent] = []
        self.sentinel_dir = sentinel_dir
        self.sentinels = itertools.count()

    def pump(self, timeout: float) -> list[RawEvent]:
        """Read once (waiting up to timeout) and hand the batch to the tree."""
        if not self.ino.wait_readable(timeout):
            return []
        raw = self.ino.read_events()
        self.raw.extend(raw)
        self.events.extend(self.tree.handle(raw))
        return raw

    def until(self, want: Callable[[list[TreeEvent]], bool], timeout: float = PATIENCE) -> None:
        """Pump until want(events) holds; fail at the deadline."""
        deadline = time.monotonic() + timeout
        while not want(self.events):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"events not seen within {timeout}s; got {self.paths()!r}")
            self.pump(min(remaining, 0.1))

    def drain(self, timeout: float = PATIENCE) -> None:
        """Pump until everything the kernel queued so far has been handled.

        The kernel queues an fd's events in order, so once the event of a file created now
        is read, every earlier event has been read as well.
        """
        name = f"{SENTINEL}-{next(self.sentinels)}"
        (self.sentinel_dir / name).touch()
        target = name.encode()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"sentinel {name} not seen within {timeout}s")
            if any(r.name == target for r in self.pump(min(remaining, 0.1))):
                return

    def reported(self, mask: int = IN_ALL_EVENTS) -> list[tuple[int, str]]:
        """(mask, path) of each reported event of the given kinds, sentinels left out."""
        return [
            (e.mask, e.path)
            for e in self.events
            if e.mask & mask and SENTINEL not in e.path
        ]

    def paths(self, mask: int = IN_ALL_EVENTS) -> list[str]:
        return [p for _, p in self.reported(mask)]

    def watched(self) -> set[str]:
        """The directory paths the tree watches now."""
        tree = self.tree
        return {p for wd in range(1, 1 << 16) if (p := tree.path_of(wd)) is not None}

    def kernel_masks(self) -> list[int]:
        """The masks of the fd's watches as /proc shows them."""
        return fdinfo(self.ino, "mask")


@pytest.fixture
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    """The directory a test's tree watches: tmp_path/"root", made empty."""
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def make_run(tmp_path: pathlib.Path, root: pathlib.Path) -> Iterator[Callable[..., Run]]:
    """Start a tree on the root fixture's directory, on a fresh fd.

    With room=N, the fd's queue holds at least N events (see roomy_fd).
    """
    fds: list[InotifyFd] = []

    def make(mask: int = QUIET, *, room: int = 0, **options: object) -> Run:
        ino = roomy_fd(room, tmp_path / "probe") if room else InotifyFd()
        fds.append(ino)
        tree = Tree(ino, root, mask, **options)  # type: ignore[arg-type]
        assert tree.start() == []
        return Run(ino, tree, root)

    yield make
    for ino in fds:
        ino.close()


def fdinfo(ino: InotifyFd, key: str) -> list[int]:
    """One field (hex) of each of the fd's watches, as /proc shows them: "mask", "ino"."""
    with open(f"/proc/self/fdinfo/{ino.fileno()}") as f:
        return [
            int(field.split(":")[1], 16)
            for line in f
            if line.startswith("inotify ")
            for field in line.split()
            if field.startswith(f"{key}:")
        ]


def queued_bytes(ino: InotifyFd) -> int:
    """How many bytes of events the fd holds unread (FIONREAD)."""
    return int.from_bytes(fcntl.ioctl(ino.fileno(), termios.FIONREAD, bytes(4)), "little")


def alternate(a: pathlib.Path, b: pathlib.Path, pairs: int, start: int = 0) -> None:
    """Change the times of a and b in turn: one IN_ATTRIB each, none merged with the last."""
    for i in range(start, start + pairs):
        os.utime(a, (i, i))
        os.utime(b, (i, i))


def roomy_fd(room: int, probe: pathlib.Path, timeout: float = 30.0) -> InotifyFd:
    """A fresh InotifyFd whose queue holds at least `room` events, its queue left empty.

    The kernel sizes an fd's queue by fs.inotify.max_queued_events as it is when the fd is
    made, and other tests lower that sysctl for a while (64 events for a whole daemon run):
    an fd made meanwhile is closed and made again. Past the deadline the test is skipped, as
    it cannot be run with such a queue. `probe` is a directory of the test's own, outside
    the tree, where the probe's events are made.
    """
    probe.mkdir(exist_ok=True)
    a, b = probe / "a", probe / "b"  # one-letter names: 32 bytes an event
    a.touch()
    b.touch()
    pairs = room // 2 + 1
    deadline = time.monotonic() + timeout
    while True:
        ino = InotifyFd()
        wd = ino.add_watch(str(probe), IN_ATTRIB)
        alternate(a, b, pairs)
        if queued_bytes(ino) == pairs * 2 * 32:  # all there: no overflow
            ino.rm_watch(wd)
            while ino.read_events():  # the probe's events and its IN_IGNORED
                pass
            return ino
        ino.close()
        if time.monotonic() > deadline:
            limit = pathlib.Path("/proc/sys/fs/inotify/max_queued_events").read_text().strip()
            pytest.skip(f"fs.inotify.max_queued_events stayed below {room} for {timeout}s "
                        f"(now {limit}; lowered by another test?)")
        time.sleep(0.05)


def kernel_inodes(ino: InotifyFd) -> set[int]:
    """The inode numbers of the directories the fd watches, as /proc shows them."""
    return set(fdinfo(ino, "ino"))


@contextlib.contextmanager
def bind_mount(source: pathlib.Path, target: pathlib.Path) -> Iterator[None]:
    """source mounted on target (which must exist) for the block; skips where mount cannot."""
    mounted = subprocess.run(["mount", "--bind", source, target], capture_output=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", target], check=True)


def burst(script: str, cwd: pathlib.Path) -> None:
    """Run a shell command line, as fast as the kernel lets it, in another process."""
    subprocess.run(["sh", "-ec", script], cwd=cwd, check=True)


# --- start-up ----------------------------------------------------------------------------


def test_start_watches_every_directory_below_the_root(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    for d in ("a/b/c", "a/d", "e"):
        (root / d).mkdir(parents=True)
    (root / "a" / "file").touch()
    run = make_run()
    assert run.tree.root == str(root)
    assert run.watched() == {str(root / d) for d in ("", "a", "a/b", "a/b/c", "a/d", "e")}
    assert run.tree.directories == 6
    assert run.tree.lost is None
    assert run.tree.unwatched == 0
    assert run.tree.limit_error is None


def test_non_recursive_watches_the_root_only(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (root / "sub").mkdir(parents=True)
    run = make_run(recursive=False, synthetic=True)
    assert run.watched() == {str(root)}
    (root / "new").mkdir()
    (root / "new" / "f").touch()
    (root / "sub" / "g").touch()
    run.drain()
    assert run.reported() == [(IN_CREATE | IN_ISDIR, str(root / "new"))]
    assert run.tree.directories == 1


def test_a_missing_root_raises_the_binding_error(tmp_path: pathlib.Path) -> None:
    with InotifyFd() as ino:
        with pytest.raises(PathNotFoundError, match="no such file"):
            Tree(ino, tmp_path / "nope", QUIET).start()
        (tmp_path / "file").touch()
        with pytest.raises(NotADirectoryPathError):
            Tree(ino, tmp_path / "file", QUIET).start()


def test_a_symlinked_root_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with InotifyFd() as ino:
        with pytest.raises(NotADirectoryPathError, match="symbolic link, which is not followed"):
            Tree(ino, tmp_path / "link", QUIET).start()
        assert not kernel_inodes(ino)


def test_a_real_root_is_opened_without_following_any_link(tmp_path: pathlib.Path) -> None:
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "via").symlink_to(tmp_path)
    with InotifyFd() as ino:
        # Events are reported under the root as given; the real root is what is opened.
        tree = Tree(ino, "/configured/name", QUIET, real_root=str(tmp_path / "real"))
        tree.start()
        assert tree.directories == 2
        assert tree.path_of(1) == "/configured/name"
        with pytest.raises(NotADirectoryPathError):
            Tree(ino, tmp_path / "x", QUIET, real_root=str(tmp_path / "via" / "real")).start()


def test_deep_trees_need_no_recursion(root: pathlib.Path, make_run: Callable[..., Run]) -> None:
    levels = [os.fspath(root)]
    try:
        for _ in range(1500):  # far past the interpreter's recursion limit
            levels.append(levels[-1] + "/d")
            os.mkdir(levels[-1])
        run = make_run()
        assert run.tree.directories == 1501
        deep = levels[-1] + "/f"
        with open(deep, "w"):
            pass
        run.until(lambda ev: any(e.path == deep for e in ev))
    finally:
        # Bottom-up, as the recursive removal of the temporary directory would overflow.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(levels[-1] + "/f")
        for level in reversed(levels[1:]):
            os.rmdir(level)


def _make_wide_tree(root: pathlib.Path, count: int) -> None:
    per = 1000
    for i in range(count // per):
        top = root / f"t{i}"
        top.mkdir()
        for j in range(per):
            os.mkdir(top / f"{j}")


def test_start_up_is_fast(root: pathlib.Path, make_run: Callable[..., Run]) -> None:
    _make_wide_tree(root, 10_000)
    # CPU time, not wall time: on a busy machine the walk waits for a CPU, which says nothing
    # of its cost. (Its system calls count: they run in this process.)
    started = time.process_time()
    run = make_run()
    took = time.process_time() - started
    assert run.tree.directories == 10_000 + 10 + 1
    assert took < 1.0, f"10,000 directories took {took:.2f}s of CPU to watch"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("WATCHD_SLOW"), reason="set WATCHD_SLOW=1")
def test_fifty_thousand_directories_in_under_a_second(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    _make_wide_tree(root, 50_000)
    started = time.perf_counter()
    run = make_run()
    took = time.perf_counter() - started
    assert run.tree.directories == 50_000 + 50 + 1
    assert took < 1.0, f"50,000 directories took {took:.2f}s to watch"


# --- 1. the mask ---------------------------------------------------------------------------


def test_bookkeeping_bits_are_added_but_not_reported(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (root / "old").mkdir(parents=True)
    run = make_run(IN_MODIFY)
    for mask in run.kernel_masks():
        assert mask & IN_MODIFY
        assert mask & IN_CREATE
        assert mask & IN_MOVED_FROM
        assert mask & IN_MOVED_TO
        assert mask & IN_DELETE_SELF
        assert mask & IN_MOVE_SELF
        assert mask & IN_EXCL_UNLINK
        assert not mask & IN_ATTRIB
    (root / "new" / "deeper").mkdir(parents=True)  # created, hence watched: not reported
    (root / "old").rename(root / "renamed")
    run.drain()
    (root / "new" / "deeper" / "f").write_text("x")
    (root / "renamed" / "g").write_text("y")
    (root / "new" / "deeper" / "f").unlink()
    (root / "new" / "deeper").rmdir()
    run.drain()
    assert run.reported() == [
        (IN_MODIFY, str(root / "new" / "deeper" / "f")),
        (IN_MODIFY, str(root / "renamed" / "g")),
    ]


def test_self_events_of_subdirectories_only_when_asked(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    without = make_run(IN_DELETE)
    with_self = make_run(IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF)
    (root / "b").rename(root / "c")
    (root / "a").rmdir()
    without.drain()
    with_self.drain()
    assert without.reported() == [(IN_DELETE | IN_ISDIR, str(root / "a"))]
    assert with_self.reported() == [
        (IN_MOVE_SELF, str(root / "c")),
        (IN_DELETE_SELF, str(root / "a")),
        (IN_DELETE | IN_ISDIR, str(root / "a")),
    ]


# --- 2. new directories without a race -------------------------------------------------------


def test_mkdir_p_then_touch_is_reported_once_each(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    run = make_run(synthetic=True)
    burst("mkdir -p a/b/c && touch a/b/c/f", root)
    run.drain()
    assert run.reported(IN_CREATE) == [
        (IN_CREATE | IN_ISDIR, str(root / "a")),
        (IN_CREATE | IN_ISDIR, str(root / "a/b")),
        (IN_CREATE | IN_ISDIR, str(root / "a/b/c")),
        (IN_CREATE, str(root / "a/b/c/f")),
    ]
    assert run.watched() >= {str(root / d) for d in ("a", "a/b", "a/b/c")}
    (root / "a/b/c/f").write_text("later")
    run.drain()
    assert (IN_MODIFY, str(root / "a/b/c/f")) in run.reported()


@pytest.mark.parametrize("attempt", range(3))
def test_every_file_of_a_burst_into_a_new_directory_is_reported_once(
    root: pathlib.Path, make_run: Callable[..., Run], attempt: int
) -> None:
    count = 400  # a burst that a loaded machine still makes within PATIENCE
    # Up to two events a file (IN_CREATE, IN_CLOSE_WRITE) may be queued before they are read.
    run = make_run(synthetic=True, room=4 * count + 64)
    writer = subprocess.Popen(
        ["sh", "-ec", f"mkdir -p n/m; for i in $(seq 1 {count}); do : > n/f$i; : > n/m/g$i; done"],
        cwd=root,
    )
    try:
        # The tree starts reading only once the burst is under way, so that files land
        # before, during and after the new directories are watched and listed.
        deadline = time.monotonic() + PATIENCE
        wait_for((root / "n/m/g50").exists, PATIENCE, "the burst under way", interval=0.001)
        # Read as the burst goes, however slowly it goes on a loaded machine.
        while writer.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"the burst did not end within {PATIENCE}s")
            run.pump(0.01)
    finally:
        writer.kill()  # only if it is still running: a failure above
        writer.wait()
    assert writer.returncode == 0
    run.drain()
    creates = collections.Counter(run.paths(IN_CREATE))
    expected = {str(root / "n"), str(root / "n/m")}
    expected |= {str(root / f"n/f{i}") for i in range(1, count + 1)}
    expected |= {str(root / f"n/m/g{i}") for i in range(1, count + 1)}
    assert set(creates) == expected
    assert [p for p, n in creates.items() if n != 1] == []
    listed = [e for e in run.events if e.wd == -1 and e.mask & IN_CREATE]
    assert len(listed) >= 50  # the listing did find files: the race was really run


def test_without_synthetic_only_the_kernel_reports(
    tmp_path: pathlib.Path, root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (tmp_path / "outside" / "inner").mkdir(parents=True)
    run = make_run(synthetic=False)
    (tmp_path / "outside").rename(root / "moved")
    run.drain()
    assert run.reported() == [(IN_MOVED_TO | IN_ISDIR, str(root / "moved"))]
    assert str(root / "moved" / "inner") in run.watched()


@pytest.mark.parametrize("quiet", [True, False])
def test_listing_a_new_directory_causes_no_events(
    tmp_path: pathlib.Path, root: pathlib.Path, make_run: Callable[..., Run], quiet: bool
) -> None:
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside" / "inner").mkdir(parents=True)
    (tmp_path / "outside" / "inner" / "f").write_bytes(b"data")
    run = make_run(IN_ALL_EVENTS, synthetic=True, quiet_listing=quiet)
    assert run.reported() == []  # the start-up listing is quiet too (or not reported)
    (tmp_path / "outside").rename(root / "sub" / "moved")
    run.drain()
    (root / "sub" / "moved" / "inner" / "f").read_bytes()  # a real read, to be reported
    run.drain()
    noise = run.reported(IN_OPEN | IN_ACCESS | IN_CLOSE_NOWRITE)
    read_of_f = [
        (IN_OPEN, str(root / "sub/moved/inner/f")),
        (IN_ACCESS, str(root / "sub/moved/inner/f")),
        (IN_CLOSE_NOWRITE, str(root / "sub/moved/inner/f")),
    ]
    if quiet:
        assert noise == read_of_f
    else:
        assert noise != read_of_f  # the listing's own opens show without the narrow mask
        assert (IN_OPEN | IN_ISDIR, str(root / "sub/moved")) in noise
    for mask in run.kernel_masks():
        assert mask & IN_ALL_EVENTS == IN_ALL_EVENTS  # widened again after the listing


def test_an_inode_already_watched_on_the_fd_is_skipped(root: pathlib.Path) -> None:
    (root / "mine").mkdir(parents=True)
    (root / "theirs").mkdir()
    with InotifyFd() as ino:
        theirs = ino.add_watch(root / "theirs", IN_MODIFY)
        tree = Tree(ino, root, QUIET)
        tree.start()
        assert tree.directories == 2
        assert not tree.owns(theirs)
        assert tree.path_of(theirs) is None


def test_a_bind_mount_inside_the_tree_is_watched_once(root: pathlib.Path) -> None:
    (root / "real" / "sub").mkdir(parents=True)
    (root / "bind").mkdir()
    with bind_mount(root / "real", root / "bind"), InotifyFd() as ino:
        tree = Tree(ino, root, QUIET)
        tree.start()
        # real, real/sub and the root; bind/ and bind/sub are the same inodes again.
        assert tree.directories == 3
        watched = {tree.path_of(wd) for wd in range(1, 100)} - {None}
        assert len(watched) == 3
        assert str(root) in watched


# --- 3. renames --------------------------------------------------------------------------------


def test_a_renamed_directory_takes_its_subtree_along(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "ab").mkdir()  # shares a prefix with a/ but is not below it
    run = make_run()
    wds = {run.tree.path_of(wd): wd for wd in range(1, 100) if run.tree.owns(wd)}
    (root / "a").rename(root / "x")
    run.drain()
    assert run.watched() == {str(root / d) for d in ("", "x", "x/b", "x/b/c", "ab")}
    assert run.tree.path_of(wds[str(root / "a/b/c")]) == str(root / "x/b/c")
    assert run.tree.path_of(wds[str(root / "ab")]) == str(root / "ab")
    (root / "x" / "b" / "c" / "f").touch()
    run.drain()
    moved_to = [e for e in run.events if e.mask & IN_MOVED_TO]
    assert [(e.path, e.src_path) for e in moved_to] == [(str(root / "x"), str(root / "a"))]
    assert moved_to[0].cookie != 0
    assert (IN_CREATE, str(root / "x/b/c/f")) in run.reported()
    assert not any("/a/" in p or p.endswith("/a") for p in run.paths(IN_CREATE))


def test_a_file_rename_pairs_its_source(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (root / "d").mkdir(parents=True)
    (root / "f").touch()
    run = make_run()
    (root / "f").rename(root / "d" / "g")
    run.drain()
    moves = [e for e in run.events if e.mask & (IN_MOVED_FROM | IN_MOVED_TO)]
    assert [(e.mask, e.path, e.src_path) for e in moves] == [
        (IN_MOVED_FROM, str(root / "f"), None),
        (IN_MOVED_TO, str(root / "d/g"), str(root / "f")),
    ]
    assert moves[0].cookie == moves[1].cookie != 0


def test_a_directory_moved_in_is_watched_with_its_contents(
    tmp_path: pathlib.Path, root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (tmp_path / "outside" / "in" / "deep").mkdir(parents=True)
    (tmp_path / "outside" / "in" / "deep" / "f").touch()
    run = make_run(synthetic=True)
    (tmp_path / "outside" / "in").rename(root / "in")
    run.drain()
    moved_to = [e for e in run.events if e.mask & IN_MOVED_TO]
    assert [(e.path, e.src_path) for e in moved_to] == [(str(root / "in"), None)]
    assert run.reported(IN_CREATE) == [
        (IN_CREATE | IN_ISDIR, str(root / "in/deep")),
        (IN_CREATE, str(root / "in/deep/f")),
    ]
    assert run.watched() == {str(root), str(root / "in"), str(root / "in/deep")}
    (root / "in" / "deep" / "f").write_text("x")
    run.drain()
    assert (IN_MODIFY, str(root / "in/deep/f")) in run.reported()


def test_a_directory_moved_out_is_forgotten(
    tmp_path: pathlib.Path, root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (root / "leaving" / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    run = make_run()
    assert run.tree.directories == 3
    (root / "leaving").rename(tmp_path / "elsewhere" / "gone")
    run.drain()
    assert run.watched() == {str(root)}
    assert run.tree.directories == 1
    (tmp_path / "elsewhere" / "gone" / "sub" / "f").touch()
    run.drain()
    assert run.reported() == [
        (IN_MOVED_FROM | IN_ISDIR, str(root / "leaving")),
        (IN_MOVE_SELF, str(root / "leaving")),  # asked for; where it was, as nothing better
    ]
    assert len(run.kernel_masks()) == 1  # the watches were removed, not merely forgotten


def test_a_name_reused_in_the_same_batch_keeps_its_new_watch(
    tmp_path: pathlib.Path, root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (root / "out" / "sub").mkdir(parents=True)
    (root / "kept" / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    run = make_run()
    # All of it is queued before the tree reads, so it is handled as one batch.
    (root / "out").rename(tmp_path / "elsewhere" / "out")
    (root / "out" / "new").mkdir(parents=True)
    (root / "kept").rename(root / "renamed")
    (root / "kept").mkdir()
    run.drain()
    assert run.watched() == {
        str(root / d) for d in ("", "out", "out/new", "renamed", "renamed/sub", "kept")
    }
    (root / "out" / "new" / "f").touch()
    (root / "kept" / "g").touch()
    (tmp_path / "elsewhere" / "out" / "sub" / "h").touch()
    run.drain()
    assert run.paths(IN_CREATE)[-2:] == [str(root / "out/new/f"), str(root / "kept/g")]
    assert not any(p.endswith("/h") for p in run.paths())


def test_a_directory_renamed_to_a_pruned_name_leaves_the_tree(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (root / "build").mkdir(parents=True)
    run = make_run(prune=lambda name: name == ".cache")
    (root / "build").rename(root / ".cache")
    run.drain()
    assert run.watched() == {str(root)}
    (root / ".cache" / "f").touch()
    run.drain()
    assert run.reported() == [(IN_MOVED_FROM | IN_ISDIR, str(root / "build"))]


def picture_of(run: Run, before: set[str]) -> set[str]:
    """The paths a client that listed `before` holds after applying the tree's events."""
    kinds = ((IN_CREATE, "create"), (IN_DELETE, "delete"), (IN_MOVED_FROM, "moved_from"),
             (IN_MOVED_TO, "moved_to"))
    picture = Picture(before)
    for e in run.events:
        kind = next((k for bit, k in kinds if e.mask & bit), None)
        if kind is not None and SENTINEL not in e.path:
            # Never a path in a directory the client was not told of (but a delete or a
            # move's source: those a client can ignore).
            parent = os.path.dirname(e.path)
            assert (kind in ("delete", "moved_from") or parent in picture.paths
                    or parent == str(run.tree.root)), (kind, e.path)
            picture.apply({"type": "event", "kind": kind, "path": e.path, "cookie": e.cookie,
                           "src_path": e.src_path})
    return picture.paths


def real(root: pathlib.Path) -> set[str]:
    """The paths below root, sentinels left out."""
    return {p for p in listing(root) if SENTINEL not in p}


def test_a_directory_moved_into_a_new_one_before_its_events_are_read(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    # The walk of the new chain meets b, watched at z/b, whose rename it has not read (and
    # whose IN_MOVED_TO never comes: y was not watched when b moved in). b must be reported
    # with what it holds, and stay watched at its new path.
    (root / "z" / "b" / "c").mkdir(parents=True)
    (root / "z" / "b" / "c" / "f").touch()
    run = make_run(synthetic=True)
    before = listing(root)
    (root / "a" / "x" / "y").mkdir(parents=True)
    (root / "z" / "b").rename(root / "a" / "x" / "y" / "b")
    run.drain()
    assert picture_of(run, before) == real(root)
    assert run.watched() == {str(root / d) for d in ("", "z", "a", "a/x", "a/x/y", "a/x/y/b",
                                                     "a/x/y/b/c")}
    (root / "a" / "x" / "y" / "b" / "c" / "g").touch()
    run.drain()
    assert (IN_CREATE, str(root / "a/x/y/b/c/g")) in run.reported()
    assert picture_of(run, before) == real(root)


def test_what_left_a_moved_directory_before_the_walk_met_it_is_not_reported_there(
    tmp_path: pathlib.Path, root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    # d moves into the new a, then e leaves d for outside the tree, all before the tree
    # reads: the walk of a meets d (moved) but not e. The create of f, queued before, must
    # not come out under a/d/e, which the client never had; nor may e's watches stay.
    (root / "z" / "d" / "e" / "inner").mkdir(parents=True)
    run = make_run(synthetic=True)
    before = real(root)
    (root / "a").mkdir()
    (root / "z" / "d" / "e" / "inner" / "f").touch()
    (root / "z" / "d").rename(root / "a" / "d")
    (root / "a" / "d" / "e").rename(tmp_path / "e")
    run.drain()
    assert picture_of(run, before) == real(root)
    assert run.watched() == {str(root / p) for p in ("", "z", "a", "a/d")}
    (tmp_path / "e" / "inner" / "g").touch()
    run.drain()
    assert not any("/e/" in p for p in run.paths()[len(before):])
    assert picture_of(run, before) == real(root)


def test_a_directory_moved_in_after_a_listing_reported_it_is_reported_whole(
    tmp_path: pathlib.Path, root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    # d, watched, moves into the new a; then m moves into d from outside. The walk of a lists
    # d and m (with what m holds) before the IN_MOVED_TO of m is read; a client applies that
    # as a bare m replacing what the listing said, so m's contents must follow it again.
    (root / "z" / "d").mkdir(parents=True)
    (tmp_path / "outside" / "m" / "inner").mkdir(parents=True)
    (tmp_path / "outside" / "m" / "inner" / "f").touch()
    run = make_run(synthetic=True)
    before = real(root)
    (root / "a").mkdir()
    (root / "z" / "d").rename(root / "a" / "d")
    (tmp_path / "outside" / "m").rename(root / "a" / "d" / "m")
    run.drain()
    assert picture_of(run, before) == real(root)
    (root / "a" / "d" / "m" / "inner" / "g").touch()
    run.drain()
    assert (IN_CREATE, str(root / "a/d/m/inner/g")) in run.reported()


def test_a_new_directory_out_of_reach_until_a_rename_is_reported_before_what_follows(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    # When new/ is read, p has become q: new/ cannot be reached by its parent's path until
    # the rename is read. What it holds is then reported at once, before the events that
    # follow the rename (here: the create of `after`), not at the end of the batch.
    (root / "p").mkdir(parents=True)
    run = make_run(synthetic=True)
    before = real(root)
    (root / "p" / "new" / "deep").mkdir(parents=True)
    (root / "p" / "new" / "deep" / "f").touch()
    (root / "p").rename(root / "q")
    (root / "after").touch()
    run.drain()
    paths = run.paths(IN_CREATE)
    assert paths.index(str(root / "q/new/deep/f")) < paths.index(str(root / "after"))
    assert picture_of(run, before) == real(root)


def test_a_bind_mount_made_later_does_not_move_the_watched_directory(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (root / "real" / "sub").mkdir(parents=True)
    run = make_run(synthetic=True)
    real_wd = next(wd for wd in range(1, 100) if run.tree.path_of(wd) == str(root / "real"))
    (root / "bind").mkdir()
    with bind_mount(root / "real", root / "bind"):
        run.drain()
        # Reached by both paths: it is the same directory seen twice, not one that moved.
        assert run.tree.path_of(real_wd) == str(root / "real")
        assert run.watched() == {str(root), str(root / "real"), str(root / "real/sub")}


# --- 4. deletion -------------------------------------------------------------------------------


def test_a_deleted_and_recreated_directory_is_watched_again(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (root / "d" / "e").mkdir(parents=True)
    run = make_run()
    shutil.rmtree(root / "d")
    run.drain()
    assert run.watched() == {str(root)}
    assert not any(e.mask & IN_IGNORED for e in run.events)  # handled, never reported
    (root / "d" / "e").mkdir(parents=True)
    run.drain()
    assert run.watched() == {str(root), str(root / "d"), str(root / "d/e")}
    (root / "d" / "e" / "f").touch()
    run.drain()
    assert (IN_CREATE, str(root / "d/e/f")) in run.reported()


def test_deleting_the_root_sets_lost(root: pathlib.Path, make_run: Callable[..., Run]) -> None:
    (root / "sub").mkdir(parents=True)
    run = make_run(IN_CREATE)
    shutil.rmtree(root)
    run.until(lambda _: run.tree.lost is not None and run.tree.directories == 0)
    assert run.tree.lost == "deleted"
    assert (IN_DELETE_SELF, str(root)) in run.reported()  # reported though not asked


def test_moving_the_root_sets_lost(
    tmp_path: pathlib.Path, root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    run = make_run(IN_CREATE)
    root.rename(tmp_path / "elsewhere")
    run.until(lambda _: run.tree.lost is not None)
    assert run.tree.lost == "moved"
    assert run.reported() == [(IN_MOVE_SELF, str(root))]


def test_close_removes_the_watches_but_not_the_fd(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (root / "a").mkdir(parents=True)
    run = make_run()
    run.tree.close()
    run.tree.close()
    assert run.tree.directories == 0
    assert not run.ino.closed
    assert run.kernel_masks() == []


# --- 5. symlinks ---------------------------------------------------------------------------


def test_symlinks_to_directories_are_entries_not_descended(
    tmp_path: pathlib.Path, root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (root / "real").mkdir(parents=True)
    (root / "up").symlink_to(root)  # a loop, if it were followed
    (tmp_path / "outside").mkdir()
    (root / "out").symlink_to(tmp_path / "outside")
    run = make_run(synthetic=True)
    assert run.watched() == {str(root), str(root / "real")}
    (root / "new").mkdir()
    (root / "new" / "link").symlink_to(tmp_path / "outside")
    (root / "link2").symlink_to(tmp_path / "outside")
    (tmp_path / "outside" / "f").touch()
    run.drain()
    assert run.reported(IN_CREATE) == [
        (IN_CREATE | IN_ISDIR, str(root / "new")),
        (IN_CREATE, str(root / "new/link")),
        (IN_CREATE, str(root / "link2")),
    ]
    assert run.watched() == {str(root), str(root / "real"), str(root / "new")}


def test_follow_symlinks_descends_and_stops_at_loops(
    tmp_path: pathlib.Path, root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (root / "a").mkdir(parents=True)
    (root / "a" / "up").symlink_to(root)
    (root / "a" / "self").symlink_to(root / "a")
    (tmp_path / "outside" / "o").mkdir(parents=True)
    (root / "out").symlink_to(tmp_path / "outside")
    run = make_run(follow_symlinks=True)
    assert run.watched() == {str(root / d) for d in ("", "a", "out", "out/o")}
    (tmp_path / "outside" / "o" / "f").touch()
    (tmp_path / "other" / "p").mkdir(parents=True)
    (root / "a" / "later").symlink_to(tmp_path / "other")  # a link made after the start
    (root / "a" / "loop").symlink_to(root)
    run.drain()
    (tmp_path / "other" / "p" / "g").touch()
    run.drain()
    assert (IN_CREATE, str(root / "out/o/f")) in run.reported()
    assert (IN_CREATE, str(root / "a/later/p/g")) in run.reported()
    assert run.tree.directories == 6


# --- 6. prune ------------------------------------------------------------------------------------


def test_pruned_directories_are_not_watched_nor_reported(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (root / ".git" / "objects").mkdir(parents=True)
    (root / "src").mkdir()
    seen: list[str] = []

    def prune(name: str) -> bool:
        seen.append(name)
        return name in {".git", "node_modules"}

    run = make_run(prune=prune, synthetic=True)
    assert run.watched() == {str(root), str(root / "src")}
    assert ".git" in seen
    assert "objects" not in seen  # never descended
    (root / "src" / "node_modules" / "pkg").mkdir(parents=True)
    (root / "src" / "node_modules" / "pkg" / "f").touch()
    (root / ".git" / "HEAD").touch()
    (root / "node_modules").touch()  # a file of that name is no directory: reported
    shutil.rmtree(root / ".git")
    run.drain()
    assert run.reported() == [
        (IN_CREATE, str(root / "node_modules")),
        (IN_CLOSE_WRITE, str(root / "node_modules")),
    ]
    assert run.watched() == {str(root), str(root / "src")}


# --- 8. the watch limit ----------------------------------------------------------------------


def test_the_watch_limit_degrades_instead_of_failing(root: pathlib.Path) -> None:
    for i in range(4):
        (root / f"d{i}" / "sub").mkdir(parents=True)  # 9 directories with the root

    def attempt() -> tuple[int, int, str | None, int, int]:
        with InotifyFd() as ino:
            tree = Tree(ino, root, QUIET, synthetic=True)
            tree.start()
            started = (tree.directories, tree.unwatched)
            (root / "late").mkdir()  # met while over the limit: counted, not watched
            deadline = time.monotonic() + PATIENCE
            while tree.unwatched == started[1] and time.monotonic() < deadline:
                if ino.wait_readable(0.1):
                    tree.handle(ino.read_events())
            error = tree.limit_error
            return (*started, None if error is None else str(error), tree.directories,
                    tree.unwatched)  # fmt: skip

    watched, unwatched, error, watched_after, unwatched_after = run_isolated(attempt, watches=5)
    assert (watched, unwatched) == (5, 4)
    assert error is not None
    assert "user.max_inotify_watches=5" in error
    assert "sysctl fs.inotify.max_user_watches=N" in error
    assert (watched_after, unwatched_after) == (5, 5)


def test_the_watch_limit_on_the_root_raises(tmp_path: pathlib.Path) -> None:
    def attempt() -> InotifyError | None:
        with InotifyFd() as ino:
            try:
                Tree(ino, tmp_path, QUIET).start()
            except InotifyError as e:
                return e
        return None

    e = run_isolated(attempt, watches=0)
    assert isinstance(e, WatchLimitError)
    assert e.errno == errno.ENOSPC


# --- 9. names that are not UTF-8 ----------------------------------------------------------------


def test_non_utf8_names_become_surrogate_escapes(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    broot = os.fsencode(root)
    os.makedirs(broot + b"/old\xff")
    run = make_run(synthetic=True)
    os.mkdir(broot + b"/caf\xe9")
    open(broot + b"/caf\xe9/\xfe", "wb").close()
    os.rename(broot + b"/old\xff", broot + b"/new\xfe")
    open(broot + b"/new\xfe/x", "wb").close()
    run.drain()
    created = run.paths(IN_CREATE)
    assert f"{root}/caf\udce9" in created
    assert f"{root}/caf\udce9/\udcfe" in created
    assert f"{root}/new\udcfe/x" in created
    assert os.fsencode(f"{root}/caf\udce9/\udcfe") == broot + b"/caf\xe9/\xfe"
    moved = [e for e in run.events if e.mask & IN_MOVED_TO]
    assert [(e.path, e.src_path, e.name) for e in moved] == [
        (f"{root}/new\udcfe", f"{root}/old\udcff", b"new\xfe")
    ]


# --- overflow -------------------------------------------------------------------------------


def _overflow(ino: InotifyFd, root: pathlib.Path) -> None:
    """Queue events on the fd until its queue is full and ends with the overflow event.

    The fd's limit is fs.inotify.max_queued_events as it was when the fd was made, which may
    differ from its value now (other tests lower it for a while): the queue itself says when
    it is full, as a batch of new events adds nothing to it.
    """
    a, b = root / "ov-a", root / "ov-b"
    a.touch()
    b.touch()
    deadline = time.monotonic() + PATIENCE
    before, start = -1, 0
    while (now := queued_bytes(ino)) != before:
        if time.monotonic() > deadline:
            pytest.fail(f"the queue did not fill up within {PATIENCE}s")
        alternate(a, b, 256, start)
        before, start = now, start + 256


def test_overflow_is_reported_and_resync_repairs_the_tree(
    root: pathlib.Path, make_run: Callable[..., Run]
) -> None:
    (root / "stays").mkdir(parents=True)
    (root / "goes").mkdir()
    (root / "renamed").mkdir()
    run = make_run(IN_CREATE | IN_ATTRIB, synthetic=True)
    stays_wd = next(wd for wd in range(1, 100) if run.tree.path_of(wd) == str(root / "stays"))
    _overflow(run.ino, root)
    # Missed while the queue is full: the tree learns of these from resync alone.
    (root / "goes").rmdir()
    (root / "renamed").rename(root / "stays" / "moved")
    (root / "new" / "inner").mkdir(parents=True)
    (root / "new" / "inner" / "f").touch()
    run.until(lambda ev: any(e.mask & IN_Q_OVERFLOW for e in ev))
    overflow = next(e for e in run.events if e.mask & IN_Q_OVERFLOW)
    assert (overflow.path, overflow.wd, overflow.src_path) == ("", -1, None)
    run.drain()  # the IN_IGNORED of goes/ is also read by now
    before = run.tree.overflowed
    created = run.tree.resync()
    assert (before, run.tree.overflowed) == (True, False)
    assert [(e.mask, e.path) for e in created] == [
        (IN_CREATE | IN_ISDIR, str(root / "new")),
        (IN_CREATE | IN_ISDIR, str(root / "new/inner")),
        (IN_CREATE, str(root / "new/inner/f")),
    ]
    assert all(e.wd == -1 and e.length == 0 for e in created)
    expected = {str(root / d) for d in ("", "stays", "stays/moved", "new", "new/inner")}
    assert run.watched() == expected
    assert run.tree.path_of(stays_wd) == str(root / "stays")
    assert len(run.kernel_masks()) == len(expected)
    assert run.tree.resync() == []
