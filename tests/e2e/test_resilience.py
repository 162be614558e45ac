"""Faults the daemon survives: watcher crash and hang, kernel overflow, watch limit, bad clients."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from pathlib import Path

import pytest

from tests.harness import config, is_event, is_type, wait_for, watch
from tests.picture import Picture, listing
from tests.sysctl import sysctl

pytestmark = pytest.mark.timeout(90)

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change inotify sysctls")


def inotify_watches_in_use() -> int:
    """Inotify watches held by every process on the machine (what max_user_watches counts)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fdinfo"):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    total += sum(1 for line in f if line.startswith("inotify wd:"))
    return total


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM])
def test_watcher_killed_is_replaced_with_notice_first(start_watching, watched: Path, sig) -> None:
    daemon = start_watching()
    line, sid = daemon.subscribe()
    old = daemon.watcher_pid()
    os.kill(old, sig)
    notice = line.until(is_type("overflow"))[-1]
    assert notice == {"type": "overflow", "subscription": sid, "seq": notice["seq"],
                      "reason": "watcher_restart", "watch": None, "resync": True}
    wait_for(lambda: daemon.status()["watches"][0]["state"] == "active",
             what="the watch re-established")
    (watched / "after").touch()
    got = line.until(is_event(watched / "after"))
    # Nothing changed while no watcher ran: the resync finds no difference.
    assert [m["type"] for m in got] == ["resynced", "event"]
    assert got[0]["changes"] == 0 and got[0]["watch"] == "w"
    status = daemon.status()
    assert status["watcher"]["pid"] != old
    assert status["watcher"]["restarts"] == 1
    assert "watcher" in daemon.log_text()


def notice_then_create(line, path: Path, timeout: float = 20) -> dict:
    """Wait for the watcher_restart notice and create `path` the moment it arrives.

    What a client that rescans on the notice does: anything made after the notice must be
    reported, or the rescan (done before it was made) and the events miss it both.
    """
    notice = line.until(lambda m: m.get("type") == "overflow", timeout=timeout)[-1]
    path.touch()
    assert notice["reason"] == "watcher_restart", notice
    return notice


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["crash", "hang"])
def test_restart_notice_comes_once_the_new_watches_exist(start_watching, watched: Path,
                                                         sig) -> None:
    # SIGSTOP: a hung watcher, killed after daemon.watcher_timeout and replaced.
    daemon = start_watching("watcher_timeout = 1.5")
    line, _ = daemon.subscribe(events=["create"])
    (watched / "before").touch()
    before = line.until(is_event(watched / "before"))[-1]
    os.kill(daemon.watcher_pid(), sig)
    notice = notice_then_create(line, watched / "at-notice")
    got = line.until(is_event(watched / "at-notice"), timeout=20)
    assert not [m for m in got if m["type"] == "overflow"]  # one notice per restart
    # A replay holds the notice at the same point: after what came before, before the rest.
    again = daemon.connect()
    again.request({"op": "subscribe", "id": 1, "since": before["seq"] - 1,
                   "instance": again.hello["instance"], "events": ["create"]})
    replayed = again.until(is_event(watched / "at-notice"))
    # Nothing changed while no watcher ran: the resync has no event, only its notice.
    assert [(m["type"], m["seq"]) for m in replayed] == [
        ("event", before["seq"]), ("overflow", notice["seq"]), ("resynced", notice["seq"]),
        ("event", got[-1]["seq"])]


def test_one_notice_when_the_watches_are_back_after_a_crash_loop(start_watching,
                                                                 watched: Path) -> None:
    # Each replacement is killed as soon as it appears, most likely before its watches exist;
    # meanwhile a reader creates a file the moment any notice arrives, as a rescan would look.
    daemon = start_watching()
    line, _ = daemon.subscribe()
    sentinel = watched / "sentinel"
    got: list[dict] = []
    made: list[Path] = []

    def read() -> None:
        while not got or got[-1].get("path") != str(sentinel):
            got.append(line.recv(timeout=60))
            if got[-1]["type"] == "overflow":
                made.append(watched / f"at-notice-{len(made)}")
                made[-1].touch()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(3):
            pid = daemon.watcher_pid()
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda p=pid: daemon.status()["watcher"]["pid"] not in (None, p),
                     timeout=20, what="a new watcher")
        wait_for(lambda: daemon.status()["watches"][0]["state"] == "active", timeout=20,
                 what="the watches back")
        # Its event comes after the last watcher's notice, if any: that watcher is established.
        sentinel.touch()
    finally:
        reader.join(70)
    notices = [m for m in got if m["type"] == "overflow"]
    # One per replacement whose watches got established; the last one's at least.
    assert 1 <= len(notices) <= 3, notices
    assert all(m["reason"] == "watcher_restart" for m in notices)
    # What was made at the last notice is reported: then the watches were in place.
    line.pushed = [m for m in got if m["type"] == "event"]
    line.until(is_event(made[-1]), timeout=20)


def test_crash_loop_backs_off(start_watching) -> None:
    daemon = start_watching()
    for expected in (1, 2, 3):
        pid = daemon.watcher_pid()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda p=pid: daemon.status()["watcher"]["pid"] not in (None, p), timeout=20,
                 what="a new watcher")
        assert daemon.status()["watcher"]["crashes_in_a_row"] == expected
    assert "next start in" in daemon.log_text()
    daemon.notify.wait_for_text("watcher restarts")


def test_hung_watcher_is_killed_and_replaced(start_watching, watched: Path) -> None:
    daemon = start_watching("watcher_timeout = 1.5")
    line, _ = daemon.subscribe()
    old = daemon.watcher_pid()
    os.kill(old, signal.SIGSTOP)
    notice = line.until(lambda m: m.get("type") == "overflow", timeout=15)[-1]
    assert notice["reason"] == "watcher_restart"
    assert "sent nothing for" in daemon.log_text()
    wait_for(lambda: daemon.status()["watches"][0]["state"] == "active",
             what="the watch re-established")
    (watched / "after").touch()
    line.until(is_event(watched / "after"))
    assert not os.path.exists(f"/proc/{old}")


@root_only
def test_kernel_queue_overflow_is_announced_and_resynced(start_watching, watched: Path) -> None:
    # The queue limit is taken when the inotify instance is created: start under a low limit.
    with sysctl("max_queued_events", 64):
        daemon = start_watching()
    line, sid = daemon.subscribe()
    watcher = daemon.watcher_pid()
    os.kill(watcher, signal.SIGSTOP)
    try:
        for i in range(300):
            (watched / f"f{i}").touch()
        (watched / "newdir").mkdir()  # created while events are being lost
    finally:
        os.kill(watcher, signal.SIGCONT)
    notice = line.until(is_type("overflow"))[-1]
    assert notice == {"type": "overflow", "subscription": sid, "seq": notice["seq"],
                      "reason": "kernel_queue", "watch": "w", "resync": True}
    wait_for(lambda: daemon.status()["overflows"] >= 1, what="overflow counted")
    # The tree was re-synchronised: the directory created in the lost window is watched.
    (watched / "newdir" / "inside").touch()
    line.until(is_event(watched / "newdir" / "inside"))


@root_only
def test_kernel_queue_overflow_events_alone_rebuild_the_tree(start_daemon, watched: Path) -> None:
    for d in range(5):
        (watched / f"d{d}" / "sub").mkdir(parents=True)
        for f in range(20):
            (watched / f"d{d}" / f"f{f}").write_text("x")
    with sysctl("max_queued_events", 64):
        daemon = start_daemon(config(watches=watch("w", watched)))
    line, _ = daemon.subscribe()
    picture = Picture(listing(watched))
    watcher = daemon.watcher_pid()
    os.kill(watcher, signal.SIGSTOP)
    try:
        for i in range(200):
            (watched / f"d{i % 5}" / f"new{i}").write_text("n")
        for f in range(10):
            (watched / "d0" / f"f{f}").unlink()
            os.rename(watched / "d1" / f"f{f}", watched / "d2" / f"from-d1-{f}")
        os.rename(watched / "d4", watched / "d4-renamed")
        (watched / "d3" / "sub" / "deep").mkdir()
    finally:
        os.kill(watcher, signal.SIGCONT)
    got = line.until(lambda m: m.get("type") == "overflow", timeout=30)
    assert got[-1]["resync"] is True and got[-1]["reason"] == "kernel_queue"
    got += line.until(lambda m: m.get("type") == "resynced", timeout=30)
    picture.apply_all(got)
    assert picture.paths == listing(watched)
    assert picture.synthetic > 0
    (watched / "zz-sentinel").touch()
    picture.apply_all(line.until(is_event(watched / "zz-sentinel"), timeout=30))
    assert picture.paths == listing(watched)
    assert daemon.status()["watches"][0]["resyncs"] == 1


@root_only
def test_watch_limit_degrades_only_that_watch(start_daemon, watched: Path) -> None:
    (watched / "small").mkdir()
    big = watched / "big"
    for i in range(60):
        (big / f"d{i}").mkdir(parents=True)
    # The kernel's limit lowered for the daemon alone, in a user namespace of its own: a
    # lowered global sysctl would race every other inotify user on the machine. The big
    # watch's own budget is above it, so the kernel's limit is what stops it.
    limit = 25
    in_namespace = (f"exec unshare --user --map-root-user bash -c 'echo {limit} > "
                    '/proc/sys/user/max_inotify_watches && exec "$@"\' bash "$@"')
    daemon = start_daemon(config(watches=watch("small", watched / "small")
                                 + watch("big", big, max_directories=1000)),
                          shell_prefix=in_namespace)
    status = daemon.status()
    by_name = {w["name"]: w for w in status["watches"]}
    assert by_name["small"]["state"] == "active"
    assert by_name["big"]["state"] == "degraded"
    assert by_name["big"]["unwatched"] > 0
    assert f"user.max_inotify_watches={limit}" in by_name["big"]["problem"]
    assert daemon.log_text().count("is degraded") == 1
    wait_for(lambda: any("unwatched on big (max_user_watches)" in m
                         for m in daemon.notify.messages),
             what="the STATUS= line to say why directories of big are unwatched")
    line, _ = daemon.subscribe(watch="small")
    (watched / "small" / "f").touch()
    line.until(is_event(watched / "small" / "f"))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_bad_clients_leave_nothing_behind(start_watching, watched: Path) -> None:
    daemon = start_watching("max_line_bytes = 4096")
    good, _ = daemon.subscribe()
    pid = daemon.proc.pid
    baseline = fd_count(pid)
    for i in range(30):
        s = socket.socket(socket.AF_UNIX)
        s.connect(daemon.socket)
        kind = i % 5
        if kind == 0:
            s.sendall(b'{"op": "ping", "id"')  # vanishes mid-line
        elif kind == 1:
            s.sendall(os.urandom(512) + b"\n")  # garbage
        elif kind == 2:
            s.sendall(b'{"op":"ping"}\n' * 2000)  # a flood, never read
        elif kind == 3:
            s.sendall(b"x" * 10000)  # too long, no newline
        else:
            s.sendall(b'{"op":"subscribe"}\n')  # subscribes and never reads
        s.close()
    for i in range(200):
        (watched / f"f{i}").touch()
    good.until(is_event(watched / "f199"))
    assert good.request({"op": "ping"})["type"] == "pong"
    wait_for(lambda: fd_count(pid) <= baseline, what="every bad client's fd closed")
    # Two: the good client and the connection that asks for the status.
    wait_for(lambda: daemon.status()["clients"] == 2, what="only the good client left")
