"""Events end to end: kinds, recursion, renames, filters, names that are not UTF-8."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.harness import config, is_event, wait_for, watch

pytestmark = pytest.mark.timeout(60)


def events_of(messages: list[dict]) -> list[tuple[str, str]]:
    return [(m["kind"], m["path"]) for m in messages if m.get("type") == "event"]


def test_event_shape(start_watching, watched: Path) -> None:
    daemon = start_watching()
    line, sid = daemon.subscribe()
    (watched / "f").write_text("x")
    got = line.until(is_event(watched / "f", "close_write"))
    create = next(m for m in got if m["kind"] == "create")
    assert list(create) == ["type", "subscription", "seq", "time", "watch", "kind", "path",
                            "is_dir", "mask", "cookie"]
    assert create["subscription"] == sid
    assert create["watch"] == "w"
    assert create["is_dir"] is False
    assert create["mask"] == ["IN_CREATE"]
    assert create["cookie"] == 0
    assert isinstance(create["time"], float)
    kinds = [m["kind"] for m in got if m["type"] == "event"]
    assert kinds == ["create", "modify", "close_write"]
    seqs = [m["seq"] for m in got if m["type"] == "event"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_default_kinds_leave_out_reads(start_watching, watched: Path) -> None:
    (watched / "f").write_text("x")
    daemon = start_watching()
    line, _ = daemon.subscribe()
    (watched / "f").read_text()  # open, access, close_nowrite: not in the default kinds
    (watched / "g").touch()
    got = line.until(is_event(watched / "g", "create"))
    assert events_of(got) == [("create", str(watched / "g"))]


def test_all_kinds(start_daemon, watched: Path) -> None:
    (watched / "f").write_text("x")
    daemon = start_daemon(config(watches=watch("w", watched, events=["all"])))
    line, _ = daemon.subscribe()
    (watched / "f").read_text()
    got = line.until(is_event(watched / "f", "close_nowrite"))
    assert [k for k, _ in events_of(got)] == ["open", "access", "close_nowrite"]


def test_new_directory_is_watched_and_scanned(start_watching, watched: Path) -> None:
    daemon = start_watching()
    line, _ = daemon.subscribe(events=["create"])
    deep = watched / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "f").touch()
    got = line.until(is_event(deep / "f", "create"))
    paths = [p for _, p in events_of(got)]
    for p in (watched / "a", watched / "a/b", deep, deep / "f"):
        assert paths.count(str(p)) == 1, (p, paths)
    dirs = {m["path"]: m["is_dir"] for m in got}
    assert dirs[str(deep)] is True and dirs[str(deep / "f")] is False
    # Every level is watched: a later change at the bottom arrives.
    (deep / "g").touch()
    line.until(is_event(deep / "g", "create"))


def test_burst_into_new_directory_reports_each_file_once(start_watching, watched: Path) -> None:
    daemon = start_watching(events=["create"])
    line, _ = daemon.subscribe()
    for i in range(20):
        d = watched / f"d{i}"
        d.mkdir()
        for j in range(10):
            (d / f"f{j}").touch()
    (watched / "end").touch()
    got = line.until(is_event(watched / "end"))
    paths = [p for _, p in events_of(got)]
    expected = [str(watched / f"d{i}" / f"f{j}") for i in range(20) for j in range(10)]
    assert sorted(p for p in paths if "/f" in p.rpartition("/d")[2]) == sorted(expected)


def test_rename_pairs_and_new_paths(start_watching, watched: Path) -> None:
    (watched / "old" / "sub").mkdir(parents=True)
    daemon = start_watching()
    line, _ = daemon.subscribe()
    (watched / "old").rename(watched / "new")
    got = line.until(is_event(watched / "new", "moved_to"))
    moved_from = next(m for m in got if m.get("kind") == "moved_from")
    moved_to = got[-1]
    assert moved_from["path"] == str(watched / "old")
    assert moved_to["cookie"] == moved_from["cookie"] != 0
    assert moved_to["src_path"] == str(watched / "old")
    assert moved_to["is_dir"] is True
    # Events below the renamed directory carry its new path.
    (watched / "new" / "sub" / "f").touch()
    line.until(is_event(watched / "new" / "sub" / "f", "create"))


def test_moved_in_and_out(start_watching, watched: Path, workdir: str) -> None:
    outside = Path(workdir) / "outside"
    (outside / "tree" / "deep").mkdir(parents=True)
    (outside / "tree" / "deep" / "file").touch()
    daemon = start_watching()
    line, _ = daemon.subscribe()
    (outside / "tree").rename(watched / "tree")
    got = line.until(is_event(watched / "tree", "moved_to"))
    assert "src_path" not in got[-1]
    line.until(is_event(watched / "tree" / "deep" / "file", "create"))  # scanned on arrival
    (watched / "tree" / "deep" / "new").touch()
    line.until(is_event(watched / "tree" / "deep" / "new", "create"))
    (watched / "tree").rename(outside / "back")
    line.until(is_event(watched / "tree", "moved_from"))
    (outside / "back" / "deep" / "ignored").touch()
    (watched / "marker").touch()
    got = line.until(is_event(watched / "marker"))
    assert not [p for _, p in events_of(got) if "ignored" in p]


def test_non_utf8_names(start_watching, watched: Path) -> None:
    daemon = start_watching()
    line, _ = daemon.subscribe(events=["create"])
    raw = os.path.join(os.fsencode(watched), b"caf\xe9")
    with open(raw, "wb"):
        pass
    expected = os.fsdecode(raw)
    got = line.until(is_event(expected, "create"))
    assert os.fsencode(got[-1]["path"]) == raw
    assert b"\\udce9" in line.raw[-1]  # JSON-escaped, so the line itself is valid UTF-8
    line.raw[-1].decode("utf-8")


def test_filters(start_daemon, watched: Path) -> None:
    (watched / "a").mkdir()
    (watched / "ab").mkdir()
    daemon = start_daemon(config(watches=watch("w", watched) + watch("x", watched / "a")))
    by_path, _ = daemon.subscribe(paths=[str(watched / "a")])
    by_glob, _ = daemon.subscribe(glob=["*.csv"])
    by_kind, _ = daemon.subscribe(events=["delete"])
    by_watch, _ = daemon.subscribe(watch="x")
    (watched / "ab" / "f.csv").touch()
    (watched / "a" / "g.txt").touch()
    os.unlink(watched / "a" / "g.txt")
    (watched / "end.csv").touch()
    got = by_path.until(is_event(watched / "a" / "g.txt", "delete"))
    assert {p for _, p in events_of(got)} == {str(watched / "a" / "g.txt")}
    got = by_glob.until(is_event(watched / "end.csv"))
    assert {p for _, p in events_of(got)} == {str(watched / "ab" / "f.csv"),
                                              str(watched / "end.csv")}
    got = by_kind.until(is_event(watched / "a" / "g.txt", "delete"))
    assert {k for k, _ in events_of(got)} == {"delete"}
    got = by_watch.until(is_event(watched / "a" / "g.txt", "delete"))
    assert {m["watch"] for m in got if m.get("type") == "event"} == {"x"}


def test_several_subscriptions_on_one_connection(start_watching, watched: Path) -> None:
    daemon = start_watching()
    line = daemon.connect()
    first = line.request({"op": "subscribe", "id": 1})["subscription"]
    second = line.request({"op": "subscribe", "id": 2, "events": ["create"]})["subscription"]
    (watched / "f").touch()
    got = line.until(lambda m: m.get("kind") == "close_write")
    creates = [m for m in got if m.get("kind") == "create"]
    assert sorted(m["subscription"] for m in creates) == sorted([first, second])
    assert creates[0]["seq"] == creates[1]["seq"]


def test_include_and_exclude(start_daemon, watched: Path) -> None:
    daemon = start_daemon(config(watches=watch(
        "w", watched, include=["*.csv", "keep*"], exclude=[".*", "skip*"])))
    line, _ = daemon.subscribe(events=["create"])
    (watched / "skipdir").mkdir()
    (watched / "skipdir" / "x.csv").touch()  # an excluded directory is not descended into
    (watched / "keepdir").mkdir()
    (watched / "keepdir" / "a.csv").touch()
    (watched / "keepdir" / "a.txt").touch()
    (watched / ".hidden.csv").touch()
    (watched / "end.csv").touch()
    got = line.until(is_event(watched / "end.csv"))
    assert sorted(p for _, p in events_of(got)) == sorted(
        [str(watched / "keepdir"), str(watched / "keepdir" / "a.csv"), str(watched / "end.csv")])
    # The root and keepdir are watched, skipdir is not (the count comes with the heartbeat).
    wait_for(lambda: daemon.status()["watches"][0]["directories"] == 2,
             what="two watched directories")


def test_since_replays_without_gaps_or_repeats(start_watching, watched: Path) -> None:
    daemon = start_watching(events=["create"])
    first, _ = daemon.subscribe()
    for i in range(5):
        (watched / f"f{i}").touch()
    got = first.until(is_event(watched / "f4"))
    seqs = [m["seq"] for m in got]
    instance = first.hello["instance"]
    line = daemon.connect()
    reply = line.request({"op": "subscribe", "id": 1, "since": seqs[1], "instance": instance})
    assert reply["type"] == "subscribed"
    (watched / "live").touch()
    got = line.until(is_event(watched / "live"))
    assert [m["seq"] for m in got][:3] == seqs[2:]
    all_seqs = [m["seq"] for m in got]
    assert all_seqs == sorted(set(all_seqs))


def test_non_recursive_watch(start_daemon, watched: Path) -> None:
    (watched / "sub").mkdir()
    daemon = start_daemon(config(watches=watch("w", watched, recursive=False)))
    line, _ = daemon.subscribe()
    (watched / "sub" / "deep").touch()
    (watched / "top").touch()
    got = line.until(is_event(watched / "top", "create"))
    assert not [p for _, p in events_of(got) if "deep" in p]
    shutil.rmtree(watched / "sub")
