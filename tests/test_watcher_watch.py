"""One watch's state and retry rules, on real inotify trees under tmp_path."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from watchd import channel
from watchd.channel import Limit, Phase, WatchReport
from watchd.events import DEFAULT_KINDS, kinds_mask
from watchd.inotify import InotifyFd
from watchd.inotify.tree import Tree
from watchd.watcher_watch import (
    BUDGET_RETRY_S,
    RETRY_MAX_S,
    Watch,
    name_filter,
    retry_delay,
)

MASK = kinds_mask(DEFAULT_KINDS)


def _watch(path: pathlib.Path) -> Watch:
    return Watch(channel.Spec("w", str(path), True, MASK, (), (), str(path)))


@pytest.fixture
def watched(tmp_path: pathlib.Path) -> Iterator[Watch]:
    """A watch whose tree is up, on a root with three directories, with a budget of two."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    watch = _watch(tmp_path)
    with InotifyFd() as ino:
        watch.ino = ino
        watch.tree = Tree(ino, tmp_path, MASK, max_directories=2)
        watch.tree.start()
        yield watch


def test_retry_delay_doubles_up_to_the_maximum() -> None:
    assert [retry_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    # A watch that fails every minute for days: still the maximum, not an OverflowError.
    assert retry_delay(5000) == RETRY_MAX_S


def test_a_failure_backs_off_and_says_why(tmp_path: pathlib.Path) -> None:
    watch = _watch(tmp_path)
    watch.failed(ValueError("bad mask"), 100.0)
    assert (watch.failures, watch.retry_at) == (1, 101.0)
    assert watch.problem == "failed (ValueError: bad mask); retrying in 1 s"
    assert not watch.lost_events  # it had no tree: nothing was being read
    with InotifyFd() as ino:
        watch.ino = ino
        watch.failed(OSError("gone"), 200.0)
    assert (watch.failures, watch.retry_at) == (2, 202.0)
    assert watch.problem == "failed (OSError: gone); retrying in 2 s"
    assert watch.lost_events  # it failed while active: its subscribers must hear of the loss


def test_reports_pending_active_and_degraded(tmp_path: pathlib.Path, watched: Watch) -> None:
    pending = _watch(tmp_path / "missing")
    pending.problem = "no such directory"
    assert pending.report() == WatchReport(Phase.PENDING, 0, 0, "no such directory", None)

    assert watched.tree is not None
    state, directories, unwatched, problem, limit = watched.report()
    assert (state, directories, unwatched, limit) == (
        Phase.DEGRADED, 2, 1, Limit.MAX_DIRECTORIES)
    assert problem == str(watched.tree.limit_error)

    with InotifyFd() as ino:
        whole = _watch(tmp_path)
        whole.ino, whole.tree = ino, Tree(ino, tmp_path, MASK)
        whole.tree.start()
        assert whole.report() == WatchReport(Phase.ACTIVE, 3, 0, None, None)


def test_a_budget_is_retried_once_there_is_room_and_not_too_often(watched: Watch) -> None:
    assert watched.tree is not None
    assert not watched.limit_retry_due(1000.0)  # still at its budget: a rescan finds no room
    watched.tree.max_directories = 3  # a larger budget came with a reload
    assert watched.limit_retry_due(1000.0)
    assert not watched.limit_retry_due(1000.0 + BUDGET_RETRY_S / 2)
    assert watched.limit_retry_due(1000.0 + BUDGET_RETRY_S)
    assert watched.tree.resync() is not None
    assert watched.tree.limit_error is None  # all watched now: nothing to retry
    assert not watched.limit_retry_due(1000.0 + 10 * BUDGET_RETRY_S)
    assert watched.report().state == Phase.ACTIVE


def test_a_watch_without_a_tree_has_no_limit_to_retry(tmp_path: pathlib.Path) -> None:
    assert not _watch(tmp_path).limit_retry_due(0.0)


def test_name_filter() -> None:
    assert name_filter((), ()) is None  # every name: no call per event
    wanted = name_filter(("*.py",), ("test_*",))
    assert wanted is not None
    assert [wanted(n) for n in ("a.py", "test_a.py", "a.txt")] == [True, False, False]
    only_out = name_filter((), ("*.tmp",))
    assert only_out is not None
    assert [only_out(n) for n in ("a.tmp", "a")] == [False, True]
