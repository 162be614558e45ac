"""A watch's first index built in parts while its events flow (watchd.index.scan_parts and
watchd.resync.Resyncer.filled), on real directories with real inotify."""

from __future__ import annotations

import os
import pathlib
import random
from typing import Any

import pytest

from tests.harness import config, wait_for, watch
from tests.picture import Picture, listing
from tests.test_index import QUIET, _events, snap
from watchd import channel
from watchd.channel import Spec
from watchd.config.model import WatchConfig
from watchd.fill import Fills
from watchd.inotify import InotifyFd
from watchd.inotify.tree import Tree
from watchd.listing import AtRest, count, thawed
from watchd.records import Recorder
from watchd.resync import Resyncer
from watchd.scan import scan_parts
from watchd.watcher_watch import Watch


def make_tree(root: pathlib.Path, dirs: int, files: int) -> int:
    for d in range(dirs):
        sub = root / f"d{d % 7}" / f"sub{d}"
        sub.mkdir(parents=True, exist_ok=True)
        for f in range(files):
            (sub / f"file{f}").write_text("x")
    return count(snap(root))


def file_op(rng: random.Random, root: pathlib.Path) -> None:
    """A random change that moves or deletes no directory (those restart a fill: see
    watchd.fill.Fills.check): a file created, written, deleted or moved, a directory made."""
    dirs = [root, *[p for p in root.rglob("*") if p.is_dir()]]
    files = [p for p in root.rglob("*") if p.is_file()]
    target = rng.choice(dirs) / f"n{rng.randrange(1000)}"
    op = rng.choice(["mkdir", "create", "delete", "move", "modify"])
    if op == "mkdir" and not target.exists():
        target.mkdir()
    elif op == "create" and not target.is_dir():
        target.write_text("x")
    elif files and op == "delete":
        rng.choice(files).unlink()
    elif files and op == "move" and not target.is_dir():
        os.rename(rng.choice(files), target)
    elif files and op == "modify":
        rng.choice(files).write_text("longer")


def parts(root: pathlib.Path, size: int) -> list[AtRest]:
    return list(scan_parts(str(root), str(root), recursive=True, wanted=None, prune=None,
                           part_size=size))


def test_parts_are_whole_directories_that_add_up_to_the_scan(tmp_path: pathlib.Path) -> None:
    make_tree(tmp_path, 30, 10)
    got = parts(tmp_path, 50)
    assert len(got) > 5
    union: AtRest = {}
    for part in got:
        assert not union.keys() & part.keys()  # a directory is in one part, whole
        union.update(part)
    assert thawed(union) == snap(tmp_path)
    # A part holds about part_size entries: it ends with the directory that reaches it.
    assert all(count(p) < 50 + 12 for p in got)


def test_closing_a_scan_midway_closes_its_directories(tmp_path: pathlib.Path) -> None:
    make_tree(tmp_path, 20, 3)
    before = len(os.listdir("/proc/self/fd"))
    gen = scan_parts(str(tmp_path), str(tmp_path), recursive=True, wanted=None, prune=None,
                     part_size=5)
    next(gen)
    next(gen)
    assert len(os.listdir("/proc/self/fd")) > before  # the branch it is in is open
    gen.close()
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_events_between_parts_leave_the_index_equal_to_the_tree(tmp_path: pathlib.Path,
                                                                  seed: int) -> None:
    root = tmp_path / "t"
    root.mkdir()
    make_tree(root, 12, 4)
    resync = Resyncer()
    resync.configure([WatchConfig(name="w", path=str(root))], changed=["w"])
    rng = random.Random(seed)
    recorder = Recorder()

    def track(items: list) -> None:  # as the watcher sends a batch, and the daemon takes it
        resync.track("w", [(0.0, items)], [recorder.records(items)])

    with InotifyFd() as ino:
        tree = Tree(ino, str(root), QUIET, synthetic=True)
        tree.start()
        resync.filled("w", {}, start=True, done=False)
        gen = scan_parts(str(root), str(root), recursive=True, wanted=None, prune=None,
                         part_size=8)
        for round_, part in enumerate(gen):
            # Changes before and after each part was listed; their events are read, as the
            # watcher does, after the part went out.
            for _ in range(4):
                file_op(rng, root)
            resync.filled("w", part, start=False, done=False)
            track(_events(ino, tree, root / f"settle{round_}"))
        resync.filled("w", {}, start=False, done=True)
        track(_events(ino, tree, root / "settle-end"))
    assert resync.resyncing(["w"]) == {"w"}  # complete: a loss now is resynchronized
    assert resync.watches["w"].index.as_dirs() == snap(root)


def test_a_loss_during_the_fill_is_not_resynchronized() -> None:
    resync = Resyncer()
    resync.configure([WatchConfig(name="w", path="/nowhere")], changed=["w"])
    assert resync.to_fill() == ["w"]
    resync.filled("w", {"/nowhere": {}}, start=True, done=False)
    resync.lost("w")
    assert resync.resyncing(["w"]) == frozenset()  # the notice says resync false
    # The whole scan after the loss fills it; from then on, losses are resynchronized.
    assert resync.scanned("w", {"/nowhere": {"f": 0}}, 0.0) is not None
    resync.filled("w", {"/nowhere": {"late": 0}}, start=False, done=True)  # stale: ignored
    assert resync.watches["w"].index.as_dirs() == {"/nowhere": {"f": 0}}
    assert resync.resyncing(["w"]) == {"w"} and resync.to_fill() == []


def test_a_tree_as_large_as_w7s_is_indexed_before_the_watch_is_reported(
        tmp_path: pathlib.Path) -> None:
    """The shared harness's W7 (200 directories of 100 files): its first index is complete
    when Fills.start returns, before the watch is reported in place, so a loss right after
    start is resynchronized."""
    for d in range(200):
        sub = tmp_path / f"dir{d:03}"
        sub.mkdir()
        for f in range(100):
            os.close(os.open(sub / f"file{f:03}", os.O_CREAT | os.O_WRONLY, 0o644))
    sent: list[channel.FromWatcher] = []
    spec = Spec("w", str(tmp_path), True, QUIET, (), (), str(tmp_path))
    with InotifyFd() as ino:
        tree = Tree(ino, str(tmp_path), QUIET, synthetic=True)
        tree.start()  # established, as the watcher's are when their fill starts
        watch = Watch(spec=spec, tree=tree)
        fills = Fills(sent.append, lambda name: None)
        fills.start(watch)
        assert not fills  # nothing left for later
    assert isinstance(sent[-1], channel.Fill) and sent[-1].done
    assert sum(count(m.dirs) for m in sent if isinstance(m, channel.Fill)) == 20_200


# 36,000 files: on a loaded machine making and removing them (at teardown) alone has taken
# more than two minutes; the waits inside have deadlines of their own.
@pytest.mark.timeout(300)
def test_a_large_tree_is_indexed_after_ready_and_then_resynchronized(
        start_daemon, watched: pathlib.Path) -> None:
    total = make_tree(watched, 1800, 20)  # past fill.AT_ONCE parts: indexed after ready
    daemon = start_daemon(config(watches=watch("w", watched)))
    line, _ = daemon.subscribe()
    (watched / "early").write_text("during the fill")
    line.until(lambda m: m.get("path") == str(watched / "early"), timeout=30)
    wait_for(lambda: daemon.status()["watches"][0]["tracked"] == total + 1, timeout=60)
    picture = Picture(listing(watched))
    watcher = daemon.watcher_pid()
    os.kill(watcher, 9)
    (watched / "d0" / "sub0" / "file0").unlink()
    (watched / "late").write_text("while no watcher ran")
    got = line.until(lambda m: m.get("type") == "resynced", timeout=60)
    assert any(m.get("type") == "overflow" and m["resync"] for m in got)
    picture.apply_all(got)
    assert picture.paths == listing(watched)
    assert got[-1]["changes"] == 2


@pytest.mark.timeout(300)  # the same tree as above
def test_directories_moved_and_deleted_during_the_fill_leave_it_exact(
        start_daemon, watched: pathlib.Path) -> None:
    make_tree(watched, 1800, 20)
    daemon = start_daemon(config(watches=watch("w", watched)))
    line, _ = daemon.subscribe()
    # At once, while the fill walks (or just after it: either way the index must be exact).
    for d in range(0, 60, 3):
        os.rename(watched / f"d{d % 7}" / f"sub{d}", watched / f"d{(d + 1) % 7}" / f"moved{d}")
    for d in range(1, 60, 3):
        for f in (watched / f"d{d % 7}" / f"sub{d}").iterdir():
            f.unlink()
        (watched / f"d{d % 7}" / f"sub{d}").rmdir()
    (watched / "sentinel").write_text("")
    seen = line.until(lambda m: m.get("path") == str(watched / "sentinel"), timeout=60)
    # The kernel queue may overflow meanwhile (fs.inotify.max_queued_events is global, and
    # other tests lower it at times): a loss, whose resync is announced and answered by a
    # `resynced` of its own. Announced before the sentinel (a full queue drops the events
    # after it: the sentinel then comes with the resync), each is waited for here, so that
    # the next `resynced` is the one that answers the kill below.
    while owed_resyncs(seen):
        seen += line.until(lambda m: m.get("type") == "resynced", timeout=60)
    total = len(listing(watched))
    wait_for(lambda: daemon.status()["watches"][0]["tracked"] == total, timeout=60)
    # The index is the tree: a resync with nothing changed finds nothing.
    os.kill(daemon.watcher_pid(), 9)
    got = line.until(lambda m: m.get("reason") == "watcher_restart", timeout=60)
    got += line.until(lambda m: m.get("type") == "resynced", timeout=60)
    assert [m for m in got if m.get("synthetic")] == []
    assert got[-1]["changes"] == 0


def owed_resyncs(messages: list[dict[str, Any]]) -> int:
    """How many `overflow` notices with "resync": true no `resynced` answered yet (one with
    "resync": false answers every one before it: its subscribers rescan)."""
    owed = 0
    for m in messages:
        if m.get("type") == "overflow":
            owed = owed + 1 if m["resync"] else 0
        elif m.get("type") == "resynced":
            owed = max(0, owed - 1)
    return owed
