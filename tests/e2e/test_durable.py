"""Durable state, end to end: the real daemon stopped (SIGTERM) or killed (SIGKILL) and started
again on the same state directory; a client that reconnects with its last seq and the old
instance gets what it missed, the start-up differences, `resynced`, then live events, and
its picture built from events alone equals the tree."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon, Line, config, is_event, wait_for, watch
from tests.picture import Picture, listing
from watchd import journal

Msg = dict[str, Any]
ROOT = os.geteuid() == 0


def durable_config(state: Path | str, watched: Path, extra: str = "") -> str:
    return config(daemon_extra=f'state_directory = "{state}"\n{extra}',
                  watches=watch("w", watched))


def resubscribe(d: Daemon, since: int, instance: str) -> tuple[Line, Msg]:
    line = d.connect()
    reply = line.request({"op": "subscribe", "id": 1, "since": since, "instance": instance})
    return line, reply


def until_resynced(line: Line) -> list[Msg]:
    """Every message up to the `resynced` that ends the start-up comparison (the journal may
    hold earlier ones, of resyncs before the restart)."""
    restarted = False

    def after_restart(m: Msg) -> bool:
        nonlocal restarted
        if m.get("type") == "overflow" and m.get("reason") == "daemon_restart":
            restarted = True
        return restarted and m.get("type") == "resynced"

    # A replay of thousands of events, then a scan and its comparison: on a loaded machine
    # this takes a while.
    return line.until(after_restart, timeout=60)


def write_files(d: Daemon, watched: Path, count: int) -> tuple[Line, str]:
    """Subscribe, write `count` files and wait for their last event: (the line, the
    instance)."""
    line, _ = d.subscribe()
    for i in range(count):
        (watched / f"f{i}").write_text("x")
    line.until(is_event(watched / f"f{count - 1}", "close_write"))
    return line, line.hello["instance"]


def kill(d: Daemon) -> None:
    """SIGKILL the daemon and its watcher at once, as a crash would."""
    assert d.proc is not None
    os.killpg(d.proc.pid, signal.SIGKILL)
    d.proc.wait()
    d.log.close()


def test_sigterm_change_start_resume_exact(start_daemon: Callable[..., Daemon],
                                           watched: Path, workdir: str) -> None:
    state = Path(workdir) / "state"
    (watched / "keep").write_text("k")
    (watched / "gone").write_text("g")
    (watched / "sub").mkdir()
    (watched / "sub" / "inner").write_text("i")
    text = durable_config(state, watched)
    d1 = start_daemon(text)
    line, _sid = d1.subscribe()
    observer, _ = d1.subscribe()
    assert line.hello["durable"] is True
    instance = line.hello["instance"]
    picture = Picture(listing(watched))
    (watched / "a").write_text("a")
    first = line.until(is_event(watched / "a", "create"))
    seen = first[-1]["seq"]
    picture.apply_all(first)
    line.close()
    # Made while the client is away: it reads them from the journal after the restart.
    (watched / "b").mkdir()
    (watched / "b" / "c").write_text("c")
    (watched / "z").mkdir()  # one event, the last: every earlier one is out before it
    observed = observer.until(is_event(watched / "z", "create"))
    assert any(m["type"] == "event" and m["path"] == str(watched / "b" / "c") for m in observed)
    last = observed[-1]["seq"]
    assert d1.stop() == 0
    # While the daemon is down.
    (watched / "gone").unlink()
    (watched / "new").write_text("n")
    os.rename(watched / "sub", watched / "moved")
    (watched / "b" / "c").unlink()

    d2 = start_daemon(text)
    line, reply = resubscribe(d2, seen, instance)
    assert reply["type"] == "subscribed", reply
    assert line.hello["instance"] == instance and line.hello["durable"] is True
    got = until_resynced(line)
    # The journal's events after since, in order (a loaded machine may have made some of them
    # synthetic, by an overflow before the stop), the notice, then the start-up differences.
    notice = next(m for m in got if m.get("reason") == "daemon_restart")
    assert notice["type"] == "overflow" and notice["resync"] is True
    journal = [m for m in got[: got.index(notice)] if m["type"] == "event"]
    synthetic = [m for m in got[got.index(notice):] if m["type"] == "event"]
    assert d2.status()["restored_from"] == last
    assert [m["seq"] for m in journal] == list(range(seen + 1, last + 1))
    assert {m["path"] for m in journal} >= {str(watched / "b"), str(watched / "b" / "c")}
    assert synthetic and all(m.get("synthetic") for m in synthetic)
    assert min(m["seq"] for m in synthetic) > last
    picture.apply_all(got)
    assert picture.paths == listing(watched)
    kinds = {(m["kind"], m["path"]) for m in synthetic}
    assert ("moved_to", str(watched / "moved")) in kinds
    assert ("delete", str(watched / "gone")) in kinds
    # Then live events.
    (watched / "live").write_text("l")
    picture.apply_all(line.until(is_event(watched / "live", "create")))
    assert picture.paths == listing(watched)
    status = d2.status()
    assert status["restored_from"] == last
    assert status["state_directory"] == str(state)
    assert status["durable"] is True
    assert 0 < status["journal_bytes"] <= status["state_bytes"]


def burst(root: Path, count: int, stop: threading.Event) -> None:
    for i in range(count):
        if stop.is_set():
            return
        (root / f"f{i}").write_text("x")


def test_sigkill_mid_burst_reuses_no_seq(start_daemon: Callable[..., Daemon],
                                         watched: Path, workdir: str) -> None:
    state = Path(workdir) / "state"
    text = durable_config(state, watched)
    d1 = start_daemon(text)
    # The index of the first scan is stored once it is made (a crash before: no resync).
    wait_for(lambda: list((state / "index").glob("*.idx")), what="the stored index")
    line, _ = d1.subscribe()
    instance = line.hello["instance"]
    picture = Picture(listing(watched))
    stop = threading.Event()
    writer = threading.Thread(target=burst, args=(watched, 3000, stop))
    writer.start()
    try:
        seen: list[Msg] = []
        while len(seen) < 300:
            msg = line.recv()
            if msg["type"] == "event":
                seen.append(msg)
        kill(d1)
        # What the client received before the kill, to the last byte the socket held.
        try:
            while True:
                msg = line.recv(timeout=5)
                if msg["type"] == "event":
                    seen.append(msg)
        except EOFError:
            pass
    finally:
        writer.join()
    by_seq = {m["seq"]: (m["kind"], m["path"]) for m in seen}
    picture.apply_all(seen[:100])
    since = seen[99]["seq"]

    d2 = start_daemon(text)
    line2, reply = resubscribe(d2, since, instance)
    assert reply["type"] == "subscribed", reply
    try:
        got = until_resynced(line2)
    except AssertionError:
        raise AssertionError(d2.log_text()[-3000:]) from None
    replayed = {m["seq"]: (m["kind"], m["path"]) for m in got
                if m["type"] == "event" and m["seq"] in by_seq}
    # Every seq the client saw, replayed from the journal, is the same event.
    assert replayed == {s: e for s, e in by_seq.items() if s > since}
    restored = d2.status()["restored_from"]
    assert restored >= max(by_seq)
    # What follows the restart's notice is new: numbered above every seq the client saw.
    notice = next(i for i, m in enumerate(got) if m.get("reason") == "daemon_restart")
    fresh = [m for m in got[notice:] if m["type"] == "event"]
    assert all(m["seq"] > restored and m.get("synthetic") for m in fresh)
    picture.apply_all(got)
    assert picture.paths == listing(watched)


@pytest.mark.parametrize("damage", ["meta_garbage", "meta_truncated", "index_truncated",
                                    "journal_flipped", "journal_truncated_clean"])
def test_unreadable_state_is_moved_aside_and_the_daemon_starts_fresh(
        start_daemon: Callable[..., Daemon], watched: Path, workdir: str, damage: str) -> None:
    state = Path(workdir) / "state"
    text = durable_config(state, watched)
    d1 = start_daemon(text)
    line, instance = write_files(d1, watched, 20)
    # A record of its own after the others: damage in the first one is not the end's.
    (watched / "z").mkdir()
    seq = line.until(is_event(watched / "z", "create"))[-1]["seq"]
    line.close()
    assert d1.stop() == 0
    segment = sorted((state / "journal").glob("*.seg"))[-1]
    index = next((state / "index").glob("*.idx"))
    target = {"meta_garbage": state / "state.json", "meta_truncated": state / "state.json",
              "index_truncated": index, "journal_flipped": segment,
              "journal_truncated_clean": segment}[damage]
    data = target.read_bytes()
    if damage == "meta_garbage":
        target.write_bytes(b"\x00garbage{")
    elif damage == "journal_flipped":
        at = len(journal.MAGIC) + 12  # in the first record's body
        target.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    else:
        target.write_bytes(data[: len(data) // 2])

    d2 = start_daemon(text)
    line2 = d2.connect()
    assert line2.hello["instance"] != instance
    assert line2.hello["durable"] is True
    if damage != "journal_truncated_clean":
        # Moved aside, named in a warning.
        d2.wait_log(str(target))
        assert Path(str(target) + ".bad").exists()
    reply = line2.request({"op": "subscribe", "id": 1, "since": seq, "instance": instance})
    assert reply["type"] == "error" and reply["code"] == "since_expired", reply
    # And it serves as ever.
    line3, _ = d2.subscribe()
    (watched / "after").write_text("a")
    line3.until(is_event(watched / "after", "create"))


def test_since_older_than_the_journal_is_expired(start_daemon: Callable[..., Daemon],
                                                  watched: Path, workdir: str) -> None:
    state = Path(workdir) / "state"
    text = durable_config(state, watched, "replay_buffer = 10")
    d1 = start_daemon(text)
    line, _ = d1.subscribe()
    instance = line.hello["instance"]
    for i in range(30):
        (watched / f"f{i}").write_text("x")
    # The last event; or, when the kernel's queue overflowed (another run may have lowered
    # it), the resync's notice, after which every change is published.
    last = is_event(watched / "f29", "close_write")
    line.until(lambda m: last(m) or m.get("type") == "resynced")
    assert d1.stop() == 0
    d2 = start_daemon(text)
    status = d2.status()
    _line2, reply = resubscribe(d2, 1, instance)
    assert reply["type"] == "error" and reply["code"] == "since_expired", reply
    _line3, reply = resubscribe(d2, status["restored_from"] - 5, instance)
    assert reply["type"] == "subscribed", reply


def test_a_watch_changed_while_down_is_rescanned_the_others_resynced(
        start_daemon: Callable[..., Daemon], watched: Path, workdir: str) -> None:
    state = Path(workdir) / "state"
    other = Path(workdir) / "other"
    other.mkdir()
    (other / "o").write_text("o")
    (watched / "keep").write_text("k")

    def text(exclude: list[str]) -> str:
        return config(daemon_extra=f'state_directory = "{state}"',
                      watches=watch("w", watched) + watch("o", other, exclude=exclude))

    d1 = start_daemon(text([]))
    line, _ = d1.subscribe()
    instance, seq = line.hello["instance"], line.hello["seq"]
    wait_for(lambda: len(list((state / "index").glob("*.idx"))) == 2, what="both indexes")
    assert d1.stop() == 0
    (watched / "new").write_text("n")
    (other / "o2").write_text("o")
    d2 = start_daemon(text(["*.tmp"]))  # "o" is another watch now: its index is not compared
    line, reply = resubscribe(d2, seq, instance)
    assert reply["type"] == "subscribed", reply
    got = until_resynced(line)
    notices = {m["watch"]: m for m in got if m["type"] == "overflow"}
    assert notices["o"]["resync"] is False and notices["o"]["reason"] == "daemon_restart"
    assert notices["w"]["resync"] is True
    assert got[-1]["watch"] == "w"
    created = {m["path"] for m in got if m["type"] == "event"}
    assert str(watched / "new") in created and str(other / "o2") not in created


def test_without_state_directory_nothing_is_durable(start_daemon: Callable[..., Daemon],
                                                     watched: Path) -> None:
    d = start_daemon(config(watches=watch("w", watched)))
    line = d.connect()
    assert line.hello["durable"] is False
    status = d.status()
    assert status["state_directory"] is None and status["restored_from"] is None


def test_systemds_state_directory_is_the_default(start_daemon: Callable[..., Daemon],
                                                 watched: Path, workdir: str) -> None:
    state = Path(workdir) / "from-systemd"
    d = start_daemon(config(watches=watch("w", watched)), env={"STATE_DIRECTORY": str(state)})
    assert d.connect().hello["durable"] is True
    status = d.status()
    assert status["state_directory"] == str(state)
    assert status["restored_from"] is None  # a first start: nothing resumed
    assert (state / "state.json").exists()
    assert (state.stat().st_mode & 0o777) == 0o700


def test_a_state_directory_inside_a_watched_tree_is_not_used(
        start_daemon: Callable[..., Daemon], watched: Path) -> None:
    # Given by systemd, so not refused with the file: its writes would be events without end.
    d = start_daemon(config(watches=watch("w", watched)),
                     env={"STATE_DIRECTORY": str(watched / "state")})
    line, _ = d.subscribe()
    assert line.hello["durable"] is False
    d.wait_log("going on without durable state")
    (watched / "x").write_text("x")
    line.until(is_event(watched / "x", "create"))
    assert not (watched / "state").exists()


# -- a file system that is read-only or full ---------------------------------------------------

@pytest.fixture
def small_fs(workdir: str) -> Any:
    if not ROOT:
        pytest.skip("mounting a small tmpfs needs root")
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mnt = Path(workdir) / "fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs",
                           str(mnt)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_read_only_state_directory_means_not_durable(start_daemon: Callable[..., Daemon],
                                                       watched: Path, small_fs: Path) -> None:
    state = small_fs / "state"
    text = durable_config(state, watched)
    d1 = start_daemon(text)
    instance = d1.connect().hello["instance"]
    assert d1.stop() == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    d2 = start_daemon(text)
    line = d2.connect()
    assert line.hello["durable"] is False
    assert line.hello["instance"] != instance  # it cannot record, so it does not resume
    d2.wait_log("going on without durable state")
    line2, _ = d2.subscribe()
    (watched / "x").write_text("x")
    line2.until(is_event(watched / "x", "create"))
    assert d2.status()["durable"] is False


def test_a_full_state_directory_means_not_durable_and_serving(
        start_daemon: Callable[..., Daemon], watched: Path, small_fs: Path) -> None:
    state = small_fs / "state"
    text = durable_config(state, watched, "journal_max_bytes = 65536")
    d1 = start_daemon(text)
    line, _ = d1.subscribe()
    assert line.hello["durable"] is True
    instance = line.hello["instance"]
    # Fill the file system to the last byte.
    fill(small_fs / "filler")
    for i in range(200):
        (watched / f"f{i}").write_text("x" * 100)
    line.until(is_event(watched / "f199", "close_write"))  # every event delivered
    d1.wait_log("going on without durable state")
    assert d1.connect().hello["durable"] is False
    assert d1.status()["durable"] is False
    (small_fs / "filler").unlink()
    assert d1.stop() == 0
    # The state was given up: the next start is a new instance.
    d2 = start_daemon(text)
    line2 = d2.connect()
    assert line2.hello["instance"] != instance and line2.hello["durable"] is True


def fill(path: Path) -> None:
    """Write to path until its file system has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


@pytest.mark.parametrize("body", [
    # A resynced of no watch, as the start-up count of unanswered resyncs would trip on.
    b'{"seq":1,"watch":null,"reason":"","resync":[],"changes":0,"duration_ms":0}',
    b'{"seq":1,"watch":7,"reason":"kernel_queue","resync":[],"changes":-1,"duration_ms":0}',
    b'{"seq":1,"watch":"w","reason":"kernel_queue","resync":"w","changes":-1,"duration_ms":0}',
    b'[1]',
], ids=["resynced_of_no_watch", "watch_not_a_name", "resync_not_a_list", "not_an_object"])
def test_a_well_formed_record_of_a_bad_marker_is_moved_aside(
        start_daemon: Callable[..., Daemon], watched: Path, workdir: str, body: bytes) -> None:
    state = Path(workdir) / "state"
    text = durable_config(state, watched)
    d1 = start_daemon(text)
    line, instance = write_files(d1, watched, 3)
    line.close()
    assert d1.stop() == 0
    segment = sorted((state / "journal").glob("*.seg"))[-1]
    kind = journal.KIND_MARKER
    crc = zlib.crc32(body, zlib.crc32(bytes((kind,))))  # its checksum is right
    with open(segment, "ab") as f:
        f.write(struct.pack("<IIB", len(body), crc, kind) + body)

    d2 = start_daemon(text)  # starts, fresh: the state is moved aside, named in a warning
    d2.wait_log(str(segment))
    assert Path(str(segment) + ".bad").exists()
    line2, _ = d2.subscribe()
    assert line2.hello["instance"] != instance and line2.hello["durable"] is True
    (watched / "after").write_text("a")
    line2.until(is_event(watched / "after", "create"))
