"""The API compatible with the `inotify` package (adapters, calls, constants) on real inotify."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import watchd.inotify
from tests.inotify.isolation import run_isolated
from watchd.inotify import adapters, calls, constants
from watchd.inotify.adapters import Event, Inotify, InotifyTree, InotifyTrees

# The names in the order of that package's MASK_LOOKUP (a dict whose IN_NONBLOCK key, 0x800,
# is later given the name IN_MOVE_SELF): the order every event's type names come in.
UPSTREAM_NAME_ORDER = [
    "IN_CLOEXEC", "IN_MOVE_SELF", "IN_ACCESS", "IN_MODIFY", "IN_ATTRIB", "IN_CLOSE_WRITE",
    "IN_CLOSE_NOWRITE", "IN_OPEN", "IN_MOVED_FROM", "IN_MOVED_TO", "IN_CREATE", "IN_DELETE",
    "IN_DELETE_SELF", "IN_UNMOUNT", "IN_Q_OVERFLOW", "IN_IGNORED", "IN_ONLYDIR",
    "IN_DONT_FOLLOW", "IN_MASK_ADD", "IN_ISDIR", "IN_ONESHOT",
]

Source = Inotify | InotifyTree | InotifyTrees


def collect_until(
    source: Source, done: Callable[[list[Event]], bool], timeout: float = 5.0, **kwargs: object
) -> list[Event]:
    """Events from source.event_gen until done(events) holds; fail at the deadline."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    for event in source.event_gen(timeout_s=timeout, **kwargs):  # type: ignore[arg-type]
        if event is not None:
            events.append(event)
        if done(events):
            return events
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"condition not met within {timeout} s; got {events}")


def has(path: str | Path, filename: str, type_name: str) -> Callable[[list[Event]], bool]:
    """A `done` condition: an event type_name on filename in the directory path was seen."""
    return lambda events: any(seen(events, path, filename, type_name))


def seen(events: list[Event], path: str | Path, filename: str, type_name: str) -> list[Event]:
    return [e for e in events if e[2] == str(path) and e[3] == filename and type_name in e[1]]


def touch(path: str | bytes | Path) -> None:
    with open(path, "w"):
        pass


# -- constants and calls ---------------------------------------------------------------------

def test_mask_lookup_keeps_that_package_order() -> None:
    assert list(constants.MASK_LOOKUP.values()) == UPSTREAM_NAME_ORDER
    assert constants.IN_ALL_EVENTS == 0xFFF
    assert constants.IN_NONBLOCK == constants.IN_MOVE_SELF == 0x800
    assert constants.IN_CLOSE == constants.IN_CLOSE_WRITE | constants.IN_CLOSE_NOWRITE
    assert constants.IN_MOVE == constants.IN_MOVED_FROM | constants.IN_MOVED_TO


def test_event_names_follow_the_table_and_reject_unknown_bits() -> None:
    with Inotify() as i:
        mask = constants.IN_ISDIR | constants.IN_CREATE | constants.IN_MOVE_SELF
        assert i._get_event_names(mask) == ["IN_MOVE_SELF", "IN_CREATE", "IN_ISDIR"]
        names = i._get_event_names(constants.IN_CREATE)
        names.append("edited")  # each call gets a list of its own
        assert i._get_event_names(constants.IN_CREATE) == ["IN_CREATE"]
        with pytest.raises(ValueError, match="0x4000000"):
            i._get_event_names(watchd.inotify.IN_EXCL_UNLINK)


def test_calls_error_carries_errno_errmsg_and_kind(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with Inotify() as i, pytest.raises(calls.InotifyError) as info:
        i.add_watch(missing)
    err = info.value
    assert err.errno == errno.ENOENT
    assert err.errmsg == "No such file or directory"
    assert str(missing) in str(err)
    assert isinstance(err, watchd.inotify.PathNotFoundError)
    assert isinstance(err, FileNotFoundError)
    assert isinstance(err.__cause__, watchd.inotify.PathNotFoundError)


def test_raw_calls_work_on_a_plain_fd(tmp_path: Path) -> None:
    fd = calls.inotify_init()
    try:
        wd = calls.inotify_add_watch(fd, str(tmp_path), constants.IN_CREATE)
        assert wd == 1
        assert calls.inotify_add_watch(fd, os.fsencode(tmp_path), constants.IN_CREATE) == wd
        assert calls.inotify_rm_watch(fd, wd) == 0
        with pytest.raises(calls.InotifyError) as info:
            calls.inotify_rm_watch(fd, wd)
        assert info.value.errno == errno.EINVAL
        with pytest.raises(calls.NotADirectoryPathError):
            calls.inotify_add_watch(fd, "/dev/null/x", constants.IN_CREATE)
    finally:
        os.close(fd)


# -- Inotify ---------------------------------------------------------------------------------

def test_events_are_the_four_tuple_with_the_kernel_len(tmp_path: Path) -> None:
    long_name = "n" * 20  # 20 bytes + NUL pad to 32
    with Inotify() as i:
        wd = i.add_watch(str(tmp_path), constants.IN_CREATE)
        touch(tmp_path / "f")
        touch(tmp_path / long_name)
        events = collect_until(i, has(tmp_path, long_name, "IN_CREATE"), yield_nones=False)
    header, names, path, filename = events[0]
    assert header == adapters._INOTIFY_EVENT(wd=wd, mask=constants.IN_CREATE, cookie=0, len=16)
    assert header._asdict() == {"wd": wd, "mask": 256, "cookie": 0, "len": 16}
    assert (names, path, filename) == (["IN_CREATE"], str(tmp_path), "f")
    assert events[1][0].len == 32
    assert type(names) is list


@pytest.mark.parametrize("kind", ["str", "bytes", "pathlike"])
def test_paths_may_be_str_bytes_or_pathlike(tmp_path: Path, kind: str) -> None:
    spellings: dict[str, str | bytes | Path] = {
        "str": str(tmp_path), "bytes": os.fsencode(tmp_path), "pathlike": tmp_path,
    }
    given = spellings[kind]
    with Inotify([given]) as i:
        touch(tmp_path / "f")
        events = collect_until(i, has(tmp_path, "f", "IN_CLOSE_WRITE"))
        assert all(e[2] == str(tmp_path) and isinstance(e[2], str) for e in events)
        i.remove_watch(given)  # forgotten under any of the spellings
        assert i._wd_of == {}


def test_non_utf8_names_are_reported_with_surrogateescape(tmp_path: Path) -> None:
    raw_dir = os.fsencode(tmp_path) + b"/d\xff"
    os.mkdir(raw_dir)
    with Inotify() as i:
        i.add_watch(raw_dir, constants.IN_CREATE)
        touch(raw_dir + b"/caf\xe9")
        events = collect_until(i, bool)
    assert events[0][2] == os.fsdecode(raw_dir)
    assert events[0][3] == "caf\udce9"
    assert os.fsencode(events[0][3]) == b"caf\xe9"


def test_each_instance_numbers_its_watches_from_one(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with Inotify([tmp_path]) as first, Inotify() as second:
        assert second.add_watch(tmp_path / "a") == 1
        assert first.add_watch(tmp_path / "a") == 2
    assert Inotify.__init__.__defaults__ is not None
    assert not any(isinstance(d, list | dict | set) for d in Inotify.__init__.__defaults__)


def test_fileno_close_and_context_manager(tmp_path: Path) -> None:
    i = Inotify([tmp_path])
    fd = i.fileno()
    touch(tmp_path / "f")
    readable, _, _ = select.select([i], [], [], 5)  # usable in a user's own select loop
    assert readable == [i]
    i.close()
    assert i.closed
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF
    i.close()  # a second close does nothing
    with pytest.raises(ValueError, match="closed"):
        i.fileno()
    with Inotify() as j:
        fd = j.fileno()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_asyncio_reader_with_a_non_blocking_drain(tmp_path: Path) -> None:
    async def main() -> list[Event]:
        loop = asyncio.get_running_loop()
        got: list[Event] = []
        ready = asyncio.Event()
        with Inotify([tmp_path]) as i:
            def on_readable() -> None:
                # timeout_s=0: hand out what is queued now and return, never block the loop
                got.extend(e for e in i.event_gen(timeout_s=0, yield_nones=False) if e)
                if seen(got, tmp_path, "f", "IN_CLOSE_WRITE"):
                    ready.set()

            loop.add_reader(i.fileno(), on_readable)
            try:
                touch(tmp_path / "f")
                await asyncio.wait_for(ready.wait(), 5)
            finally:
                loop.remove_reader(i.fileno())
        return got

    events = asyncio.run(main())
    assert [e[1] for e in events] == [["IN_CREATE"], ["IN_OPEN"], ["IN_CLOSE_WRITE"]]


def test_block_duration_may_be_a_callable_and_nones_mark_each_wait(tmp_path: Path) -> None:
    calls_made: list[int] = []

    def block() -> float:
        calls_made.append(1)
        return 0.01

    with Inotify([tmp_path], block_duration_s=block) as i:
        gen = i.event_gen()
        assert next(gen) is None  # nothing queued: one wait of 10 ms, then None
        assert next(gen) is None
        assert len(calls_made) == 2
        touch(tmp_path / "f")
        events = collect_until(i, has(tmp_path, "f", "IN_CLOSE_WRITE"))
    assert len(events) == 3


def test_timeout_ends_the_generator_after_quiet(tmp_path: Path) -> None:
    with Inotify([tmp_path]) as i:
        start = time.monotonic()
        assert list(i.event_gen(timeout_s=0.3, yield_nones=False)) == []
        elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 2.0


def test_filter_predicate_false_stops_and_keeps_the_rest(tmp_path: Path) -> None:
    with Inotify([tmp_path]) as i:
        touch(tmp_path / "f")

        def stop_at_open(type_name: str, event: Event) -> bool:
            return type_name != "IN_OPEN"

        got = list(i.event_gen(timeout_s=5, yield_nones=False, filter_predicate=stop_at_open))
        assert [e[1] for e in got if e] == [["IN_CREATE"]]
        returned = i.last_success_return
        assert returned is not None
        type_name, event = returned
        assert (type_name, event[1], event[3]) == ("IN_OPEN", ["IN_OPEN"], "f")
        # The events read after it were not lost: the next call hands them out.
        rest = collect_until(i, has(tmp_path, "f", "IN_CLOSE_WRITE"))
        assert i.last_success_return is None
        assert rest[0][1] == ["IN_CLOSE_WRITE"]


def test_custom_terminal_events_raise_with_the_event(tmp_path: Path) -> None:
    with Inotify([tmp_path]) as i:
        touch(tmp_path / "f")
        (tmp_path / "f").unlink()
        with pytest.raises(adapters.TerminalEventException) as info:
            for _ in i.event_gen(timeout_s=5, terminal_events=("IN_DELETE",)):
                pass
    assert info.value.type_name == info.value.args[0] == "IN_DELETE"
    assert info.value.event[1:] == (["IN_DELETE"], str(tmp_path), "f")
    assert "IN_DELETE" in str(info.value)


def test_remove_watch_stops_events_and_unknown_ones_are_ignored(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with Inotify([a, b]) as i:
        i.remove_watch(a)
        i.remove_watch(tmp_path / "never-watched")
        i.remove_watch_with_id(999)
        touch(a / "ignored")
        touch(b / "marker")
        events = collect_until(i, has(b, "marker", "IN_CLOSE_WRITE"))
    assert not [e for e in events if e[2] == str(a)]  # not even the IN_IGNORED of a


def test_superficial_removal_only_forgets(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with Inotify([a, b]) as i:
        i.remove_watch(a, superficial=True)  # the kernel keeps the watch; we drop its events
        touch(a / "ignored")
        touch(b / "marker")
        events = collect_until(i, has(b, "marker", "IN_CLOSE_WRITE"))
        assert not [e for e in events if e[2] == str(a)]
        assert i.add_watch(a) == 1  # still the kernel's watch 1


def test_deleted_directory_reports_ignored_and_can_be_watched_again(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    with Inotify([d, tmp_path]) as i:
        d.rmdir()
        events = collect_until(i, has(d, "", "IN_IGNORED"))
        assert seen(events, d, "", "IN_DELETE_SELF")
        d.mkdir()
        wd = i.add_watch(d)  # a new watch, not the stale one of the deleted directory
        assert wd == 3
        touch(d / "f")
        collect_until(i, has(d, "f", "IN_CREATE"))


def test_adding_a_watched_path_again_changes_its_mask(tmp_path: Path) -> None:
    with Inotify() as i:
        wd = i.add_watch(tmp_path, constants.IN_DELETE)
        assert i.add_watch(tmp_path, constants.IN_CREATE) == wd
        touch(tmp_path / "f")
        events = collect_until(i, has(tmp_path, "f", "IN_CREATE"))
    assert [e[1] for e in events] == [["IN_CREATE"]]


def test_terminal_exception_message_is_for_people() -> None:
    header = adapters._INOTIFY_EVENT(-1, constants.IN_Q_OVERFLOW, 0, 0)
    err = adapters.TerminalEventException("IN_Q_OVERFLOW", (header, ["IN_Q_OVERFLOW"], "", ""))
    assert err.args == ("IN_Q_OVERFLOW",)
    assert "max_queued_events" in str(err)
    assert issubclass(adapters.EventTimeoutException, Exception)


# -- InotifyTree / InotifyTrees ---------------------------------------------------------------

def test_tree_watches_existing_subdirectories(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    with InotifyTree(tmp_path) as t:
        assert isinstance(t.inotify, Inotify)
        assert t.fileno() == t.inotify.fileno()
        touch(deep / "f")
        events = collect_until(t, has(deep, "f", "IN_CLOSE_WRITE"), yield_nones=False)
    assert events[0][0].wd == 4  # root, a, b, c: numbered in the order they were found
    assert [e[1] for e in events] == [["IN_CREATE"], ["IN_OPEN"], ["IN_CLOSE_WRITE"]]


def test_tree_reports_creations_and_deletions_whatever_the_mask(tmp_path: Path) -> None:
    with InotifyTree(tmp_path, mask=constants.IN_CLOSE_WRITE) as t:
        touch(tmp_path / "f")
        (tmp_path / "f").unlink()
        events = collect_until(t, has(tmp_path, "f", "IN_DELETE"))
    assert [e[1] for e in events] == [["IN_CREATE"], ["IN_CLOSE_WRITE"], ["IN_DELETE"]]


def test_trees_share_one_instance(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "sub").mkdir(parents=True)
    b.mkdir()
    with InotifyTrees([a, b], mask=constants.IN_CREATE) as t:
        touch(a / "sub" / "f")
        touch(b / "g")
        events = collect_until(t, has(b, "g", "IN_CREATE"))
    assert [(e[0].wd, e[2], e[3]) for e in events] == [(2, str(a / "sub"), "f"), (3, str(b), "g")]


def test_tree_of_a_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(calls.InotifyError) as info:
        InotifyTree(tmp_path / "missing")
    assert info.value.errno == errno.ENOENT
    assert str(tmp_path / "missing") in str(info.value)


def test_tree_event_gen_accepts_ignore_missing_new_folders(tmp_path: Path) -> None:
    with InotifyTree(tmp_path) as t:
        (tmp_path / "gone").mkdir()
        (tmp_path / "gone").rmdir()
        touch(tmp_path / "marker")
        events: list[Event] = []
        for e in t.event_gen(True, timeout_s=5, yield_nones=False):
            events.append(e)  # type: ignore[arg-type]
            if seen(events, tmp_path, "marker", "IN_CLOSE_WRITE"):
                break
    assert seen(events, tmp_path, "gone", "IN_DELETE")


def test_tree_paths_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    with InotifyTree("sub") as t:
        touch(tmp_path / "sub" / "f")
        events = collect_until(t, has(tmp_path / "sub", "f", "IN_CREATE"))
    assert events[0][2] == str(tmp_path / "sub")


def test_tree_out_of_watches_at_start_raises(tmp_path: Path) -> None:
    for n in range(4):
        (tmp_path / f"d{n}").mkdir()

    def attempt() -> tuple[str, int | None, str]:
        try:
            InotifyTree(tmp_path).close()
        except calls.InotifyError as e:
            return type(e).__name__, e.errno, str(e)
        return "no error", None, ""

    name, err, text = run_isolated(attempt, watches=3)
    assert (name, err) == ("WatchLimitError", errno.ENOSPC)
    assert "max_user_watches" in text


def test_tree_out_of_watches_later_warns_and_goes_on(tmp_path: Path) -> None:
    def attempt() -> tuple[list[str], list[str]]:
        warnings: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("watchd.inotify.adapters").addHandler(handler)
        with InotifyTree(tmp_path, mask=constants.IN_CREATE) as t:
            (tmp_path / "a").mkdir()  # the second watch: the last one allowed
            (tmp_path / "b").mkdir()  # over the limit
            collect_until(t, has(tmp_path, "b", "IN_CREATE"))
            touch(tmp_path / "a" / "f")
            touch(tmp_path / "b" / "g")
            touch(tmp_path / "h")
            events = collect_until(t, has(tmp_path, "h", "IN_CREATE"))
        return warnings, [e[3] for e in events]

    warnings, names = run_isolated(attempt, watches=2)
    assert names == ["f", "h"]  # events go on, but not from the directory left unwatched
    assert len(warnings) == 1
    assert "max_user_watches" in warnings[0]
    assert f"directories left unwatched under {tmp_path}: 1" in warnings[0]


def test_an_unclosed_instance_warns_and_closes() -> None:
    def open_and_drop() -> int:
        return Inotify().fileno()  # the instance goes as soon as this returns

    with pytest.warns(ResourceWarning, match="unclosed"):
        fd = open_and_drop()
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF


def test_a_trees_watches_are_the_trees(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    with InotifyTree(tmp_path) as t:
        t.inotify.remove_watch(tmp_path / "sub")
        touch(tmp_path / "sub" / "f")
        collect_until(t, has(tmp_path / "sub", "f", "IN_CLOSE_WRITE"))
