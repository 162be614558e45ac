"""Client.follow through daemon restarts with durable state, while the tree changes.

Every kind of change (create, modify, close_write, attrib, delete, moves of files and
directories within the tree) is made without pause before the daemon is stopped (SIGTERM) or
killed (SIGKILL, its watcher too), while it is down, and after it is back. The follower must end
with the tree's exact picture, built from what it yielded alone, with no seq yielded twice and
no call to rescan: the daemon resumed its instance.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon, config, wait_for, watch
from tests.picture import Picture, listing
from watchd.client import Backoff, Client, Follower

pytestmark = pytest.mark.timeout(90)

QUICK = Backoff(initial=0.02, maximum=0.3)
EVERY_KIND = {"create", "modify", "close_write", "attrib", "delete", "moved_from", "moved_to"}


def churn_round(root: Path, n: int) -> None:
    """One round of every kind of change; it leaves a few paths behind, so that the picture
    has something to be wrong about. Those in `stable` (made before the daemon starts) are
    all seen as they happen; those in a new directory may be seen as its listing."""
    kept = root / "stable" / f"k{n}"
    kept.write_bytes(b"k")  # create, modify, close_write
    os.chmod(kept, 0o600)  # attrib
    os.rename(kept, root / "stable" / f"m{n}")  # moved_from / moved_to (file)
    d = root / f"d{n}"
    d.mkdir()  # create (directory)
    f = d / "f"
    f.write_bytes(b"x")  # create, modify, close_write
    with f.open("ab") as out:
        out.write(b"y")  # modify, close_write
    os.chmod(f, 0o600)  # attrib
    os.rename(f, d / "g")  # moved_from / moved_to (file)
    (d / "sub").mkdir()
    (d / "sub" / "leaf").write_bytes(b"z")
    os.rename(d / "sub", d / "moved")  # moved_from / moved_to (directory, with contents)
    (root / f"gone{n}").write_bytes(b"z")
    os.unlink(root / f"gone{n}")  # delete (file)
    (d / "empty").mkdir()
    os.rmdir(d / "empty")  # delete (directory)
    if n % 3 == 2:
        os.rename(root / f"d{n - 1}", root / f"renamed{n - 1}")  # a directory of an older round
    if n % 3 == 0 and n >= 3:
        os.unlink(root / f"d{n - 3}" / "g")  # never one of those renamed


class Churn:
    """Rounds of changes in a thread, flat out until stopped: each new directory is renamed
    into while the tree walks it, and the start-up scan meets directories that move under it
    (the races of tests/inotify/test_tree_walk_races.py and tests/test_scan_moved_away.py)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rounds = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                churn_round(self.root, self.rounds)
                self.rounds += 1
        except BaseException as e:  # handed to the test, which raises it
            self.error = e

    def start(self) -> None:
        self._thread.start()

    def wait_rounds(self, count: int) -> None:
        """Wait until count more rounds are done."""
        target = self.rounds + count
        wait_for(lambda: self.rounds >= target or self.error is not None, 30,
                 f"{count} rounds of changes")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        if self.error is not None:
            raise self.error


class Reader:
    """What a follower yields, read in a thread so that it never falls behind."""

    def __init__(self, follower: Follower) -> None:
        self.follower = follower
        self.messages: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for message in self.follower:
                self.messages.append(message)
        except BaseException as e:  # handed to the test, which raises it
            self.error = e

    def count(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        return sum(1 for m in list(self.messages) if predicate(m))

    def wait(self, predicate: Callable[[dict[str, Any]], bool], what: str, at_least: int = 1,
             timeout: float = 60) -> None:
        wait_for(lambda: self.error is not None or self.count(predicate) >= at_least, timeout,
                 what)
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.follower.close()
        self._thread.join(30)


def stop_daemon(daemon: Daemon, sig: signal.Signals) -> None:
    """SIGTERM the daemon (and wait for it), or SIGKILL it and its watcher at once."""
    assert daemon.proc is not None
    if sig == signal.SIGKILL:
        os.killpg(daemon.proc.pid, signal.SIGKILL)
        daemon.proc.wait()
    assert daemon.stop() in (0, -signal.SIGKILL)
    daemon.notify.poll()
    daemon.notify.messages.clear()  # so that start() waits for the new READY=1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_follow_through_restarts_during_every_kind_of_change(
        start_daemon: Callable[..., Daemon], watched: Path, workdir: str,
        sig: signal.Signals) -> None:
    state = Path(workdir) / "state"
    (watched / "stable").mkdir()
    daemon = start_daemon(config(daemon_extra=f'state_directory = "{state}"',
                                 watches=watch("w", watched)))
    picture = Picture(listing(watched))
    churn = Churn(watched)
    follower = Client.follow(socket_path=daemon.socket, backoff=QUICK)
    follower.start()
    instance = follower.instance
    reader = Reader(follower)
    try:
        churn.start()
        for restart in range(2):
            churn.wait_rounds(3)  # changes just before
            stop_daemon(daemon, sig)
            churn.wait_rounds(2)  # changes while it is down
            daemon.start()
            reader.wait(lambda m: m["type"] == "resynced", "the start-up comparison's resynced",
                        at_least=restart + 1)
            churn.wait_rounds(3)  # and just after
        churn.stop()
        (watched / "marker").touch()
        reader.wait(lambda m: m["type"] == "event" and m["path"] == str(watched / "marker"),
                    "the marker's create")
    finally:
        churn.stop()
        reader.close()
    messages = reader.messages
    picture.apply_all(messages)
    assert picture.paths == listing(watched)
    assert follower.instance == instance, "the daemon did not resume its instance"
    seqs = [m["seq"] for m in messages if m["type"] == "event"]
    assert len(seqs) == len(set(seqs)) and seqs == sorted(seqs), "a seq was yielded twice"
    notices = [m for m in messages if m["type"] == "overflow"]
    # Another run lowering fs.inotify.max_queued_events may make the kernel queue overflow
    # too: resynchronized all the same.
    assert [n["reason"] for n in notices].count("daemon_restart") == 2, notices
    assert all(n["resync"] is True for n in notices), "told to rescan"
    assert {m["kind"] for m in messages if m["type"] == "event"} >= EVERY_KIND
    assert picture.synthetic > 0, "nothing changed while the daemon was down"


def test_a_follower_handed_nothing_yet_resumes_from_where_it_subscribed(
        start_daemon: Callable[..., Daemon], watched: Path, workdir: str) -> None:
    # The daemon goes down before the follower has been handed anything (on a loaded machine,
    # before its first event reached it): the follower resumes from its subscription's seq,
    # so the restart's notice and the start-up comparison's differences reach it.
    state = Path(workdir) / "state"
    daemon = start_daemon(config(daemon_extra=f'state_directory = "{state}"',
                                 watches=watch("w", watched)))
    follower = Client.follow(socket_path=daemon.socket, backoff=QUICK)
    follower.start()
    instance = follower.instance
    reader = Reader(follower)
    try:
        stop_daemon(daemon, signal.SIGTERM)
        (watched / "while-down").touch()
        daemon.start()
        reader.wait(lambda m: m["type"] == "resynced", "the start-up comparison's resynced",
                    timeout=20)
    finally:
        reader.close()
    assert follower.instance == instance
    got = [(m["type"], m.get("reason"), m.get("resync"), m.get("kind"), m.get("path"))
           for m in reader.messages]
    assert got == [("overflow", "daemon_restart", True, None, None),
                   ("event", None, None, "create", str(watched / "while-down")),
                   ("resynced", None, None, None, None)]
