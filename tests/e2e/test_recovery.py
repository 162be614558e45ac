"""Exact recovery with the real daemon: after a loss, the events alone rebuild the tree.

Each test keeps a client's picture of the tree (listed once, then changed only by events,
synthetic ones included) and checks it against the tree once the daemon says `resynced`.
The kernel queue overflow case lowers a global sysctl and lives in test_resilience.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import config, wait_for, watch
from tests.inotify.test_compat_fixes import mounted_tmpfs
from tests.picture import Picture, listing

pytestmark = pytest.mark.timeout(90)


def populate(root: Path) -> None:
    for d in range(4):
        sub = root / f"d{d}" / "inner"
        sub.mkdir(parents=True)
        for f in range(5):
            (root / f"d{d}" / f"f{f}").write_text("x")
            (sub / f"g{f}").write_text("y")


def change_everything(root: Path) -> None:
    """Creates, deletes, a file and a directory renamed, a modify and a chmod."""
    (root / "new-dir" / "deep").mkdir(parents=True)
    (root / "new-dir" / "deep" / "file").write_text("new")
    (root / "d0" / "f0").unlink()
    (root / "d0" / "inner" / "g0").unlink()
    os.rename(root / "d1" / "f1", root / "d2" / "f1-moved")
    os.rename(root / "d3", root / "d3-renamed")
    (root / "d2" / "f2").write_text("longer content")
    os.chmod(root / "d2" / "f3", 0o600)
    for i in range(20):
        (root / "d0" / f"burst{i}").write_text("")


def is_event(path: Path):
    return lambda m: m.get("type") == "event" and m["path"] == str(path)


def settle(line, picture: Picture, root: Path, name: str = "zz-sentinel") -> None:
    """Apply everything up to a sentinel's create, then check the picture is the tree."""
    (root / name).touch()
    picture.apply_all(line.until(is_event(root / name), timeout=30))
    assert picture.paths == listing(root)


def recover(line, picture: Picture, root: Path, reason: str) -> tuple[dict[str, Any], list]:
    """Apply messages through the overflow notice and the resynced notice after it."""
    got = line.until(lambda m: m.get("type") == "overflow", timeout=30)
    picture.apply_all(got)
    notice = got[-1]
    assert notice["reason"] == reason and notice["resync"] is True, notice
    after = line.until(lambda m: m.get("type") == "resynced", timeout=30)
    picture.apply_all(after)
    assert after[-1]["watch"] == "w"
    return after[-1], after


def test_watcher_killed_the_events_alone_rebuild_the_tree(start_daemon, watched: Path) -> None:
    populate(watched)
    daemon = start_daemon(config(watches=watch("w", watched)))
    line, _ = daemon.subscribe()
    picture = Picture(listing(watched))
    os.kill(daemon.watcher_pid(), signal.SIGKILL)
    change_everything(watched)  # while no watcher runs (its replacement starts after a delay)
    resynced, got = recover(line, picture, watched, "watcher_restart")
    assert picture.paths == listing(watched)
    synthetic = [m for m in got if m.get("synthetic")]
    moves = [m for m in synthetic if m["kind"] == "moved_to"]
    # The renamed directory is one pair, not an event per entry it holds.
    assert {(m["src_path"], m["path"], m["is_dir"]) for m in moves} >= {
        (str(watched / "d3"), str(watched / "d3-renamed"), True)}
    assert not any(m["path"].startswith(str(watched / "d3-renamed") + "/") for m in synthetic)
    kinds = {(m["kind"], m["path"]) for m in synthetic}
    assert ("modify", str(watched / "d2" / "f2")) in kinds
    assert ("attrib", str(watched / "d2" / "f3")) in kinds
    # 23 creates, 2 deletes, 2 moves (a pair counts once), 1 modify, 1 attrib.
    assert resynced["changes"] == 29
    settle(line, picture, watched)
    status = daemon.status()["watches"][0]
    assert status["resyncs"] == 1
    assert status["tracked"] == len(listing(watched))


def test_window_of_a_kill_file_made_at_once_and_file_made_at_the_notice(
        start_daemon, watched: Path) -> None:
    daemon = start_daemon(config(watches=watch("w", watched)))
    line, _ = daemon.subscribe()
    picture = Picture(listing(watched))
    os.kill(daemon.watcher_pid(), signal.SIGKILL)
    (watched / "at-kill").touch()
    got = line.until(lambda m: m.get("type") == "overflow", timeout=30)
    (watched / "at-notice").touch()
    got += line.until(lambda m: m.get("type") == "resynced", timeout=30)
    picture.apply_all(got)
    creates = [m for m in got if m.get("kind") == "create"]
    assert creates and creates[0]["path"] == str(watched / "at-kill") and creates[0]["synthetic"]
    assert got[-1]["changes"] == 1
    got = line.until(is_event(watched / "at-notice"), timeout=30)
    picture.apply_all(got)
    assert picture.paths == listing(watched)


def test_hung_watcher_replaced_and_differences_published(start_daemon, watched: Path) -> None:
    populate(watched)
    daemon = start_daemon(config(daemon_extra="watcher_timeout = 1.5",
                                 watches=watch("w", watched)))
    line, _ = daemon.subscribe()
    picture = Picture(listing(watched))
    os.kill(daemon.watcher_pid(), signal.SIGSTOP)
    change_everything(watched)
    recover(line, picture, watched, "watcher_restart")
    assert picture.paths == listing(watched)
    settle(line, picture, watched)


def test_resync_false_keeps_the_old_notice_and_no_index(start_daemon, watched: Path) -> None:
    populate(watched)
    daemon = start_daemon(config(watches=watch("w", watched, resync=False)))
    line, _ = daemon.subscribe()
    assert daemon.status()["watches"][0]["tracked"] == 0
    os.kill(daemon.watcher_pid(), signal.SIGKILL)
    (watched / "at-kill").touch()
    notice = line.until(lambda m: m.get("type") == "overflow", timeout=30)[-1]
    assert notice["resync"] is False
    wait_for(lambda: daemon.status()["watches"][0]["state"] == "active", what="the new watcher")
    (watched / "after").touch()
    got = line.until(is_event(watched / "after"), timeout=30)
    assert not [m for m in got if m["type"] == "resynced" or m.get("synthetic")]
    assert daemon.status()["watches"][0]["resyncs"] == 0


def test_a_subscription_to_a_watch_without_resync_is_told_to_rescan(start_daemon,
                                                                     workdir: str) -> None:
    a, b = Path(workdir) / "a", Path(workdir) / "b"
    a.mkdir()
    b.mkdir()
    daemon = start_daemon(config(watches=watch("w", a) + watch("plain", b, resync=False)))
    line_all, _ = daemon.subscribe()
    line_w, _ = daemon.subscribe(watch="w")
    os.kill(daemon.watcher_pid(), signal.SIGKILL)
    assert line_all.until(lambda m: m.get("type") == "overflow", timeout=30)[-1]["resync"] is False
    assert line_w.until(lambda m: m.get("type") == "overflow", timeout=30)[-1]["resync"] is True
    line_w.until(lambda m: m.get("type") == "resynced", timeout=30)


def test_root_moved_away_and_back_unchanged_publishes_nothing(start_daemon, watched: Path) -> None:
    populate(watched)
    daemon = start_daemon(config(watches=watch("w", watched)))
    line, _ = daemon.subscribe()
    picture = Picture(listing(watched))
    away = watched.with_name("away")
    os.rename(watched, away)
    picture.apply_all(line.until(lambda m: m.get("type") == "watch_lost", timeout=30))
    os.rename(away, watched)
    got = line.until(lambda m: m.get("type") == "resynced", timeout=30)
    assert [m["type"] for m in got if m["type"] != "event" or m.get("synthetic")] == [
        "watch_restored", "resynced"]
    assert got[-1]["changes"] == 0
    picture.apply_all(got)
    settle(line, picture, watched)


def test_root_back_with_other_contents_publishes_the_differences(start_daemon,
                                                                 watched: Path) -> None:
    populate(watched)
    daemon = start_daemon(config(watches=watch("w", watched)))
    line, _ = daemon.subscribe()
    picture = Picture(listing(watched))
    away = watched.with_name("away")
    os.rename(watched, away)
    line.until(lambda m: m.get("type") == "watch_lost", timeout=30)
    (away / "d0" / "f0").unlink()
    (away / "added").touch()
    os.rename(away, watched)
    got = line.until(lambda m: m.get("type") == "resynced", timeout=30)
    picture.apply_all(got)
    assert {(m["kind"], m["path"]) for m in got if m.get("synthetic")} == {
        ("delete", str(watched / "d0" / "f0")), ("create", str(watched / "added"))}
    settle(line, picture, watched)


def test_reload_that_changes_exclude_publishes_nothing(start_daemon, watched: Path) -> None:
    populate(watched)
    (watched / "x.log").touch()
    daemon = start_daemon(config(watches=watch("w", watched, exclude=["*.log"])))
    line, _ = daemon.subscribe()
    daemon.reload(config(watches=watch("w", watched)))
    (watched / "sentinel").touch()
    got = line.until(is_event(watched / "sentinel"), timeout=30)
    assert [m["path"] for m in got if m["type"] == "event"] == [str(watched / "sentinel")]
    assert daemon.status()["watches"][0]["tracked"] == len(listing(watched))


@pytest.fixture
def tmpfs_at(watched: Path) -> Iterator[Path]:
    """A small tmpfs mounted on watched/sub, over what sub holds (root only)."""
    sub = watched / "sub"
    sub.mkdir()
    (sub / "beneath").write_text("under the mount")
    (sub / "beneath-dir").mkdir()
    (sub / "beneath-dir" / "f").touch()
    with mounted_tmpfs(sub):
        yield sub


def test_unmount_inside_the_tree_publishes_what_is_beneath(start_daemon, watched: Path,
                                                           tmpfs_at: Path) -> None:
    sub = tmpfs_at
    (sub / "held-dir").mkdir()
    (sub / "held-dir" / "g").touch()
    daemon = start_daemon(config(watches=watch("w", watched)))
    line, _ = daemon.subscribe()
    picture = Picture(listing(watched))
    (sub / "made-in-mount").touch()
    settle(line, picture, watched)
    subprocess.run(["umount", str(sub)], check=True)
    resynced, got = recover(line, picture, watched, "unmount")
    assert picture.paths == listing(watched)
    synthetic = {(m["kind"], m["path"]) for m in got if m.get("synthetic")}
    assert {("delete", str(sub / "made-in-mount")), ("delete", str(sub / "held-dir")),
            ("create", str(sub / "beneath")), ("create", str(sub / "beneath-dir")),
            ("create", str(sub / "beneath-dir" / "f"))} <= synthetic
    assert resynced["changes"] >= 5
    # The directory underneath is watched: what happens in it is reported.
    (sub / "after-unmount").touch()
    picture.apply_all(line.until(is_event(sub / "after-unmount"), timeout=30))
    assert picture.paths == listing(watched)
    settle(line, picture, watched, "zz-sentinel-2")


@pytest.mark.parametrize(("before", "after"), [
    ({"include": ["*.txt"]}, {}),
    ({}, {"include": ["*.txt"]}),
    ({"events": ["create", "delete"]}, {"events": ["create", "delete", "modify"]}),
    ({"exclude": ["d1", "d2"]}, {"exclude": ["d3"]}),
], ids=["include-dropped", "include-added", "events", "exclude-changed"])
def test_reload_that_changes_the_selection_publishes_nothing(
        start_daemon, watched: Path, before: dict[str, Any], after: dict[str, Any]) -> None:
    populate(watched)
    (watched / "x.txt").touch()
    daemon = start_daemon(config(watches=watch("w", watched, **before)))
    line, _ = daemon.subscribe()
    daemon.reload(config(watches=watch("w", watched, **after)))
    (watched / "sentinel.txt").touch()
    got = line.until(is_event(watched / "sentinel.txt"), timeout=30)
    assert [(m["type"], m.get("path")) for m in got] == [
        ("event", str(watched / "sentinel.txt"))]
    # Nor does a loss after it resync against the old selection: nothing changed, nothing comes.
    os.kill(daemon.watcher_pid(), signal.SIGKILL)
    resynced = line.until(lambda m: m.get("type") == "resynced", timeout=30)
    sentinel = str(watched / "sentinel.txt")  # its close_write and such may come before
    assert [(m["type"], m.get("path")) for m in resynced if m.get("path") != sentinel] == [
        ("overflow", None), ("resynced", None)]
    assert resynced[-1]["changes"] == 0
