"""`watchctl` run as a real subprocess against a real Unix-socket server."""

from __future__ import annotations

import json
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakeserver import FakeServer
from tests.harness import config, wait_for, watch
from watchd import __version__
from watchd.watchctl import escape, format_message

CLOCK = r"\d\d:\d\d:\d\d\.\d{3}"


@pytest.fixture(autouse=True)
def _sigint_not_ignored() -> Iterator[None]:
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored
    # across exec, so watchctl would never see the Ctrl-C these tests send. Any handler here
    # becomes the default disposition in the child.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if previous is not None:  # None: a handler not set from Python, which cannot be restored
        signal.signal(signal.SIGINT, previous)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "WATCHD_SOCKET"}
    env["TZ"] = "UTC"  # so that printed clock times can be checked exactly
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run watchctl to completion."""
    return subprocess.run(
        [sys.executable, "-m", "watchd.watchctl", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env or _env(),
    )


class Follower:
    """A running `watchctl subscribe`, its stdout read line by line on a thread."""

    def __init__(self, *args: str, cwd: str | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watchd.watchctl", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
            cwd=cwd,
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def line(self, timeout: float = 5.0) -> bytes:
        """The next line of output, waited for up to timeout seconds."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout}s") from None

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C; returns the exit status and stderr."""
        self.proc.send_signal(signal.SIGINT)
        return self.finish()

    def finish(self) -> tuple[int, str]:
        """Wait for the exit; returns the exit status and stderr."""
        code = self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read().decode()
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()
        return code, err

    def kill(self) -> None:
        """Clean up after a failed test."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.finish()


@pytest.fixture
def follow(server: FakeServer) -> Iterator[type[Follower]]:
    started: list[Follower] = []

    class Tracked(Follower):
        def __init__(self, *args: str, cwd: str | None = None) -> None:
            super().__init__("--socket", server.socket_path, *args, cwd=cwd)
            started.append(self)

    yield Tracked
    for follower in started:
        follower.kill()


# --- one-shot commands ----------------------------------------------------------------------------


def test_ping(server: FakeServer) -> None:
    result = run("--socket", server.socket_path, "ping")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"pong from watchd 0.1.0 (pid {os.getpid()})\n"
    assert result.stderr == ""


def test_socket_from_environment(server: FakeServer) -> None:
    result = run("ping", env=_env(WATCHD_SOCKET=server.socket_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pong from watchd")


def test_status_readable(server: FakeServer) -> None:
    server.status_extra = {
        "uptime_s": 3723.5,
        "reloads": 2,
        "last_reload_error": "watch[1].path: must be absolute, got 'srv'",
        "dropped": 7,
        "overflows": 1,
        "watches": [
            {
                "name": "uploads",
                "path": "/srv/uploads",
                "recursive": True,
                "state": "active",
                "directories": 12,
            },
            {
                "name": "l",
                "path": "/var/log/app",
                "recursive": False,
                "state": "pending",
                "directories": 0,
            },
        ],
        # Beyond the documented fields: shown when present.
        "version": "0.1.1",
        "watcher": {"pid": 4242, "restarts": 3},
        "inotify_watches": 12,
        "max_user_watches": 8192,
        "restart_needed": ["daemon.socket"],
    }
    server.publish("uploads", "create", "/srv/uploads/a")
    result = run("--socket", server.socket_path, "status")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == f"watchd 0.1.1, pid {os.getpid()}, instance {server.instance}, up 1h 02m 03s"
    assert (
        "config:  /etc/watchd/watchd.toml (reloads: 2, last reload error: "
        "watch[1].path: must be absolute, got 'srv')"
    ) in out
    assert "seq:     1" in out
    assert "clients: 1 (0 subscriptions)" in out
    assert "events:  1, dropped 7, overflows 1" in out
    assert "watcher: pid 4242, restarts 3" in out
    assert "inotify: 12 watches (fs.inotify.max_user_watches=8192)" in out
    assert "restart needed to apply: daemon.socket" in out
    assert out[-3:] == [
        "watches: 2",
        "  uploads  active   /srv/uploads  (recursive, 12 directories)",
        "  l        pending  /var/log/app  (not recursive, 0 directories)",
    ]


def test_status_readable_with_only_the_documented_fields(server: FakeServer) -> None:
    result = run("--socket", server.socket_path, "status")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0].startswith("watchd 0.1.0, pid")
    assert not [line for line in out if line.startswith(("watcher:", "inotify:", "restart"))]
    assert "  uploads  active   /srv/uploads  (recursive, 1 directory)" in out


def test_status_json(server: FakeServer) -> None:
    result = run("--socket", server.socket_path, "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["type"] == "status"
    assert status["pid"] == os.getpid()
    assert [w["name"] for w in status["watches"]] == ["uploads", "logs"]
    assert result.stdout.count("\n") == 1


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout == f"watchctl {__version__}\n"


# --- errors ---------------------------------------------------------------------------------------


def test_missing_socket_exits_1_with_a_helpful_message(sock_path: str) -> None:
    result = run("--socket", sock_path, "ping")
    assert result.returncode == 1
    assert result.stdout == ""
    assert sock_path in result.stderr
    assert "is watchd running? start it or set WATCHD_SOCKET" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_missing_socket_from_environment(sock_path: str) -> None:
    result = run("status", env=_env(WATCHD_SOCKET=sock_path))
    assert result.returncode == 1
    assert sock_path in result.stderr


def test_server_error_reply_exits_1_with_code_and_message(server: FakeServer) -> None:
    result = run("--socket", server.socket_path, "subscribe", "--watch", "nope")
    assert result.returncode == 1
    assert 'unknown_watch: "watch": no watch named "nope"' in result.stderr
    assert "watchctl status" in result.stderr
    assert "Traceback" not in result.stderr


def test_since_expired_says_what_to_do(server: FakeServer) -> None:
    server.hold = 2
    for i in range(5):
        server.publish("uploads", "create", f"/srv/uploads/{i}")
    result = run("--socket", server.socket_path, "subscribe", "--since", "1")
    assert result.returncode == 1
    assert "since_expired" in result.stderr
    assert "--since 3" in result.stderr


def test_too_many_clients(sock_path: str) -> None:
    with FakeServer(sock_path, max_clients=0):
        result = run("--socket", sock_path, "ping")
    assert result.returncode == 1
    assert "too_many_clients" in result.stderr
    assert "max_clients" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["subscribe", "--event", "bogus"],
        ["subscribe", "--since", "-1"],
        ["subscribe", "--since", "x"],
        ["status", "--verbose"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: watchctl")
    assert "Traceback" not in result.stderr


# --- subscribe ------------------------------------------------------------------------------------


def test_subscribe_sends_the_filters(
    server: FakeServer, follow: type[Follower], tmp_path: Path
) -> None:
    follower = follow(
        "subscribe",
        *("--watch", "uploads", "--watch", "logs"),
        *("--event", "create", "--event", "close_write"),
        *("--path", "incoming", "--path", "/srv/uploads/../x"),
        *("--glob", "*.csv", "--since", "0"),
        cwd=str(tmp_path),
    )
    server.wait_subscriptions(1)
    assert server.requests[-1] == {
        "op": "subscribe",
        "id": 1,
        "watch": ["uploads", "logs"],
        "events": ["create", "close_write"],
        "paths": [str(tmp_path / "incoming"), "/srv/x"],
        "glob": ["*.csv"],
        "since": 0,
        "batch": True,
    }
    code, err = follower.interrupt()
    assert (code, err) == (0, "")


def test_subscribe_json_prints_the_raw_lines(server: FakeServer, follow: type[Follower]) -> None:
    follower = follow("subscribe", "--json")
    (sid,) = server.wait_subscriptions(1)
    server.publish("uploads", "create", "/srv/uploads/a")
    # Spacing, key order and escapes that re-serializing would change.
    template = (
        '{ "seq": 2, "type": "event", "subscription": "SID", "time": 1.50, "watch": "uploads", '
        '"kind": "delete", "path": "/srv/uploads/\\u00e9t\\u00e9", "is_dir": false, '
        '"mask": ["IN_DELETE"], "cookie": 0, "future": {"x": [1e3]} }\n'
    )
    odd = template.replace("SID", sid).encode()
    server.push_raw(sid, odd)
    first = follower.line()
    assert first.startswith(b'{"type":"event","subscription":"%s","seq":1,' % sid.encode())
    assert json.loads(first)["path"] == "/srv/uploads/a"
    assert follower.line() == odd
    server.notice("overflow", watch="uploads")
    assert json.loads(follower.line())["type"] == "overflow"
    code, err = follower.interrupt()
    assert code == 0
    assert "Traceback" not in err


def test_subscribe_readable_lines(server: FakeServer, follow: type[Follower]) -> None:
    follower = follow("subscribe")
    (sid,) = server.wait_subscriptions(1)
    at = 5 * 3600 + 61.25  # 05:01:01.250 UTC
    server.publish("uploads", "create", "/srv/uploads/a.csv", when=at)
    server.publish("uploads", "create", "/srv/uploads/new", is_dir=True, when=at)
    server.publish(
        "uploads", "moved_to", "/srv/uploads/b.csv", src_path="/srv/uploads/a.csv", when=at
    )
    assert follower.line() == b"05:01:01.250 create        /srv/uploads/a.csv\n"
    assert follower.line() == b"05:01:01.250 create        /srv/uploads/new (dir)\n"
    assert (
        follower.line() == b"05:01:01.250 moved_to      /srv/uploads/b.csv <- /srv/uploads/a.csv\n"
    )
    server.publish("uploads", "delete", "/srv/uploads/gone", when=at, synthetic=True)
    assert follower.line() == (
        b"05:01:01.250 delete        /srv/uploads/gone (found by the resync)\n")

    server.notice("overflow", watch="uploads")
    server.notice("overflow", reason="watcher_restart")
    server.dropped(sid, 10, 19)
    server.notice("watch_lost", watch="uploads", reason="deleted")
    server.notice("watch_restored", watch="uploads")
    server.notice("watch_lost", watch="uploads", reason="forbidden")
    server.notice("watch_degraded", watch="uploads", unwatched=3500, reason="max_directories")
    server.notice("overflow", watch="uploads", resync=True)
    server.notice("resynced", watch="uploads", changes=3, duration_ms=41.5)
    notices = [follower.line().decode().rstrip("\n") for _ in range(9)]
    expected = [
        "!! overflow (kernel_queue) on watch uploads: events may have been lost; rescan",
        "!! overflow (watcher_restart) on all watches: events may have been lost; rescan",
        "!! dropped 10 events (seq 10..19): this client read too slowly; "
        "subscribe again with --since 9 to get them",
        "!! watch uploads lost: /srv/uploads was deleted",
        "!! watch uploads restored: /srv/uploads is watched again",
        "!! watch uploads lost: /srv/uploads may no longer be seen by this user "
        "(the watch's allow_users / allow_groups)",
        "!! watch uploads degraded: 3500 directories are not watched, past the watch's "
        "max_directories; changes in them are not reported until watches are freed "
        "(then an overflow notice says to rescan)",
        "!! overflow (kernel_queue) on watch uploads: events were lost; what changed follows, "
        "up to a resynced notice",
        "!! resynced watch uploads: 3 changes found in 41.5 ms; the events above are complete",
    ]
    for line, text in zip(notices, expected, strict=True):
        assert re.fullmatch(CLOCK + " " + re.escape(text), line), line
    assert follower.interrupt() == (0, "")


def test_subscribe_prints_non_utf8_names_as_their_bytes(
    server: FakeServer, follow: type[Follower]
) -> None:
    follower = follow("subscribe")
    server.wait_subscriptions(1)
    server.publish("uploads", "create", os.fsdecode(b"/srv/uploads/caf\xe9.csv"))
    # Shown as ls -b shows it: the byte that is not UTF-8 as \xNN, never raw.
    assert follower.line().endswith(b" /srv/uploads/caf\\xe9.csv\n")
    assert follower.interrupt() == (0, "")


@pytest.mark.parametrize(("name", "shown"), [
    ("plain name.txt", "plain name.txt"),
    ("caf\u00e9 \u5199\u771f", "caf\u00e9 \u5199\u771f"),  # printable: as it is
    ("a\nb", "a\\nb"),
    ("tab\there\r", "tab\\there\\r"),
    ("\x1b[2Jclear", "\\033[2Jclear"),
    ("del\x7f nul\x00 bell\x07", "del\\177 nul\\000 bell\\a"),
    ("back\\slash", "back\\\\slash"),
    (os.fsdecode(b"bad\xff\xfe"), "bad\\xff\\xfe"),
    ("\u202egnp.exe", "\\u202egnp.exe"),  # right-to-left override
    ("csi\u009b", "csi\\u009b"),  # the one-byte CSI of some terminals
])
def test_escape_shows_names_as_ls_b_does(name: str, shown: str) -> None:
    assert escape(name) == shown
    assert escape(name).isprintable()


def test_a_hostile_name_cannot_forge_a_line(server: FakeServer, follow: type[Follower]) -> None:
    follower = follow("subscribe")
    server.wait_subscriptions(1)
    server.publish("uploads", "create",
                   "/srv/uploads/report.txt\n15:40:00.000 delete        /var/log/audit.log",
                   when=61.25)
    server.notice("watch_lost", watch="uploads", reason="\x1b]0;pwned\x07")
    assert follower.line() == (b"00:01:01.250 create        /srv/uploads/report.txt\\n"
                               b"15:40:00.000 delete        /var/log/audit.log\n")
    assert follower.line().endswith(b"!! watch uploads lost: /srv/uploads is gone "
                                    b"(\\033]0;pwned\\a)\n")
    assert follower.interrupt() == (0, "")


HOSTILE = [
    b"report.txt\n15:40:00.000 delete        audit.log",
    b"\x1b[2J\x1b[31mred",
    b"tab\there",
    b"bad\xff\xfe",
    b"back\\slash",
    "\u202egnp.exe".encode(),
]
SHOWN = [
    "report.txt\\n15:40:00.000 delete        audit.log",
    "\\033[2J\\033[31mred",
    "tab\\there",
    "bad\\xff\\xfe",
    "back\\\\slash",
    "\\u202egnp.exe",
]


def test_hostile_names_of_real_files_through_the_daemon(start_daemon, watched: Path) -> None:
    daemon = start_daemon(config(watches=watch("w", watched)))
    readable = Follower("--socket", daemon.socket, "subscribe", "--event", "create")
    exact = Follower("--socket", daemon.socket, "subscribe", "--event", "create", "--json")
    try:
        wait_for(lambda: daemon.status()["subscriptions"] == 2, what="both subscriptions")
        root = os.fsencode(watched)
        for name in HOSTILE:
            with open(root + b"/" + name, "wb"):
                pass
        for shown in SHOWN:
            line = readable.line().decode("ascii")  # one line each, nothing raw
            assert re.fullmatch(CLOCK + r" create +" + re.escape(f"{watched}/{shown}") + "\n",
                                line), line
        for name in HOSTILE:
            event = json.loads(exact.line())  # --json: the daemon's line, byte-exact
            assert os.fsencode(event["path"]) == root + b"/" + name
        assert readable.interrupt()[0] == 0
        assert exact.interrupt()[0] == 0
    finally:
        readable.kill()
        exact.kill()


def test_ctrl_c_while_waiting_ends_with_0(server: FakeServer, follow: type[Follower]) -> None:
    follower = follow("subscribe", "--watch", "uploads")
    server.wait_subscriptions(1)
    code, err = follower.interrupt()
    assert code == 0
    assert err == ""


def test_closed_pipe_ends_quietly(server: FakeServer) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchd.watchctl", "--socket", server.socket_path, "subscribe"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        server.wait_subscriptions(1)
        server.publish("uploads", "create", "/srv/uploads/first")
        assert proc.stdout is not None
        assert proc.stdout.readline().endswith(b"/srv/uploads/first\n")
        proc.stdout.close()  # as `| head -n 1` does once it has its line

        def exited_after_another_event() -> bool:
            server.publish("uploads", "create", "/srv/uploads/more")
            return proc.poll() is not None

        wait_for(exited_after_another_event, what="watchctl to notice the closed pipe")
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        assert proc.returncode == 0
        assert err == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_daemon_going_away_exits_1(server: FakeServer, follow: type[Follower]) -> None:
    follower = follow("subscribe")
    server.wait_subscriptions(1)
    server.disconnect_all()
    code, err = follower.finish()
    assert code == 1
    assert "watchd closed the connection" in err
    assert server.socket_path in err
    assert "Traceback" not in err


# --- subscribe --follow ---------------------------------------------------------------------------


def test_subscribe_follow_goes_on_through_a_drop_and_a_restart(
    server: FakeServer, follow: type[Follower]
) -> None:
    follower = follow("subscribe", "--follow", "--json", "--watch", "uploads")
    server.wait_subscriptions(1)
    server.publish("uploads", "create", "/srv/uploads/a")
    assert json.loads(follower.line())["seq"] == 1
    server.disconnect_all()  # the same daemon: resumed with since, nothing twice
    server.publish("uploads", "create", "/srv/uploads/b")
    assert json.loads(follower.line())["seq"] == 2
    wait_for(lambda: any(r.get("since") == 1 for r in server.requests), what="a resumption")
    server.stop()
    with FakeServer(server.socket_path, instance="fake-instance-2") as second:
        notice = json.loads(follower.line())
        assert {k: v for k, v in notice.items() if k != "subscription"} == {
            "type": "overflow", "seq": 0, "reason": "daemon_restart", "watch": None,
            "resync": False}
        second.publish("uploads", "create", "/srv/uploads/c")
        event = json.loads(follower.line())
        assert (event["seq"], event["path"]) == (1, "/srv/uploads/c")
        assert second.requests == [{"op": "subscribe", "id": 1, "watch": ["uploads"],
                                    "batch": True}]
        code, err = follower.interrupt()
    assert code == 0
    assert "Traceback" not in err
    # Each outage is told once on stderr, however many attempts it took.
    assert err.count("connecting again (--follow)") == err.count("watchctl: watchd closed") >= 1


def test_subscribe_follow_waits_for_the_daemon(sock_path: str) -> None:
    follower = Follower("--socket", sock_path, "subscribe", "--follow")
    try:
        # The daemon is started only once watchctl has found it missing.
        assert follower.proc.stderr is not None
        ready, _, _ = select.select([follower.proc.stderr], [], [], 10)
        assert ready, "watchctl said nothing about the missing daemon"
        first = follower.proc.stderr.readline().decode()
        assert "is watchd running?" in first
        with FakeServer(sock_path) as server:
            server.wait_subscriptions(1, timeout=10)
            server.publish("logs", "create", "/var/log/app/x")
            assert follower.line().endswith(b"create        /var/log/app/x\n")
            code, err = follower.interrupt()
        assert code == 0
        assert err.count("connecting again (--follow)") == 1
        assert "watchctl:" not in err.replace("watchctl: connecting again", "")
    finally:
        follower.kill()


def test_subscribe_follow_exits_1_on_what_it_cannot_retry(
    server: FakeServer, follow: type[Follower]
) -> None:
    follower = follow("subscribe", "--follow", "--watch", "upload")
    code, err = follower.finish()
    assert code == 1
    assert "unknown_watch" in err
    assert "see `watchctl status`" in err


def test_a_rescan_notice_of_the_follower_reads_as_one() -> None:
    line = format_message({"type": "overflow", "subscription": "a1", "seq": 0,
                           "reason": "daemon_restart", "watch": None, "resync": False})
    assert re.fullmatch(CLOCK + r" !! overflow \(daemon_restart\) on all watches: "
                        "events may have been lost; rescan", line)


def test_subscribe_follow_ctrl_c_while_waiting_for_the_daemon(sock_path: str) -> None:
    follower = Follower("--socket", sock_path, "subscribe", "--follow")
    try:
        assert follower.proc.stderr is not None
        ready, _, _ = select.select([follower.proc.stderr], [], [], 10)
        assert ready, "watchctl said nothing about the missing daemon"
        code, err = follower.interrupt()  # in the backoff wait, or in an attempt
        assert code == 0
        assert "Traceback" not in err
    finally:
        follower.kill()


def test_subscribe_follow_since_that_expired_prints_the_rescan_notice(
    server: FakeServer, follow: type[Follower]
) -> None:
    server.hold = 2
    for i in range(5):
        server.publish("uploads", "create", f"/srv/uploads/{i}")
    follower = follow("subscribe", "--follow", "--since", "1")
    line = follower.line().decode()
    assert re.fullmatch(CLOCK + r" !! overflow \(since_expired\) on all watches: "
                        "events may have been lost; rescan\n", line)
    server.publish("uploads", "create", "/srv/uploads/new")
    assert follower.line().endswith(b"create        /srv/uploads/new\n")
    code, err = follower.interrupt()
    assert (code, err) == (0, "")
