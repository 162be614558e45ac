"""watchd.systemd against real sockets: what reaches a NOTIFY_SOCKET, socket activation, logging.

Whatever depends on the process environment (NOTIFY_SOCKET, LISTEN_PID, JOURNAL_STREAM)
runs in a child process that is given that environment, as systemd would give it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from watchd.errors import WatchdError
from watchd.levels import syslog_priority
from watchd.systemd import (
    SYSTEMD_ONLY_VARIABLES,
    Notifier,
    ascii_field,
    child_environment,
    listen_sockets,
    log_level,
    under_systemd,
    watchdog_interval,
)

RECV_TIMEOUT_S = 5.0


def base_env() -> dict[str, str]:
    """The test's environment without anything systemd may have set for the test run itself."""
    env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ONLY_VARIABLES}
    for name in ("INVOCATION_ID", "JOURNAL_STREAM"):
        env.pop(name, None)
    return env


def run_child(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter (in development mode: warnings shown) with `env`."""
    return subprocess.run(
        [sys.executable, "-X", "dev", "-c", textwrap.dedent(code)],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose socket paths fit in sun_path."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="wsd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def notify_socket(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket of our own, standing in for systemd's, and its address."""
    path = str(short_dir / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(RECV_TIMEOUT_S)
    yield sock, path
    sock.close()


def datagrams(sock: socket.socket, count: int) -> list[str]:
    """The next `count` datagrams, decoded strictly as ASCII (anything else fails)."""
    return [sock.recv(65536).decode("ascii") for _ in range(count)]


def nothing_more(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(65536)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(RECV_TIMEOUT_S)
    return False


# -- Notifier ----------------------------------------------------------------------------------

def test_each_notification_is_one_datagram_in_order(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    child = run_child(
        """
        from watchd.systemd import Notifier
        with Notifier.from_env() as n:
            assert n.enabled
            n.ready("2 watches")
            n.status("3 clients")
            n.watchdog()
            n.extend_timeout(30_000_000)
            n.stopping()
        """,
        dict(base_env(), NOTIFY_SOCKET=path),
    )
    assert child.returncode == 0, child.stderr
    assert child.stderr == ""
    assert datagrams(sock, 5) == [
        "READY=1\nSTATUS=2 watches",
        "STATUS=3 clients",
        "WATCHDOG=1",
        "EXTEND_TIMEOUT_USEC=30000000",
        "STOPPING=1",
    ]
    assert nothing_more(sock)


def test_reloading_carries_the_monotonic_clock_in_the_same_datagram(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    child = run_child(
        "from watchd.systemd import Notifier\nNotifier.from_env().reloading()\n",
        dict(base_env(), NOTIFY_SOCKET=path),
    )
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert child.returncode == 0, child.stderr
    [message] = datagrams(sock, 1)
    first, second = message.split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_non_latin1_status_does_not_lose_the_ready(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    child = run_child(
        """
        from watchd.systemd import Notifier
        n = Notifier.from_env()
        n.ready("watching /srv/\u5199\u771f and caf\u00e9")
        n.status("line one\\nline two")
        """,
        dict(base_env(), NOTIFY_SOCKET=path),
    )
    assert child.returncode == 0, child.stderr
    ready, status = datagrams(sock, 2)
    assert ready == "READY=1\nSTATUS=watching /srv/\\u5199\\u771f and caf\\xe9"
    # A newline in a value would be read by systemd as the start of another assignment.
    assert status == "STATUS=line one line two"


def test_abstract_notify_socket_is_reached(short_dir: Path) -> None:
    name = f"watchd-test-{os.getpid()}-{short_dir.name}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECV_TIMEOUT_S)
        child = run_child(
            "from watchd.systemd import Notifier\nNotifier.from_env().ready()\n",
            dict(base_env(), NOTIFY_SOCKET="@" + name),
        )
        assert child.returncode == 0, child.stderr
        assert datagrams(sock, 1) == ["READY=1"]


def test_unreachable_notify_socket_warns_and_disables(short_dir: Path) -> None:
    child = run_child(
        """
        import logging, sys
        from watchd.systemd import Notifier
        logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")
        n = Notifier.from_env()
        print("enabled", n.enabled, "sent", n.send("READY=1"))
        """,
        dict(base_env(), NOTIFY_SOCKET=str(short_dir / "absent")),
    )
    assert child.returncode == 0, child.stderr
    assert "WARNING cannot reach systemd's notification socket" in child.stdout
    assert "enabled False sent False" in child.stdout
    # sdnotify's own socket, dropped on the failed connect, must not leak a warning.
    assert child.stderr == ""


def test_notifier_without_systemd_does_nothing() -> None:
    child = run_child(
        """
        from watchd.systemd import Notifier
        n = Notifier.from_env()
        n.ready("x"); n.reloading(); n.watchdog(); n.stopping()
        print(n.enabled, n.send("READY=1"))
        """,
        base_env(),
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["False", "False"]
    assert Notifier(None).send("READY=1") is False


def test_send_after_close_is_dropped(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    child = run_child(
        """
        from watchd.systemd import Notifier
        n = Notifier.from_env()
        n.close()
        print(n.enabled, n.send("READY=1"))
        """,
        dict(base_env(), NOTIFY_SOCKET=path),
    )
    assert child.stdout.split() == ["False", "False"], child.stderr
    assert nothing_more(sock)


def _fill(path: str) -> socket.socket:
    """A sender that has filled the receive queue of `path` (kept open: it owns the queue)."""
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            filler.sendto(b"FILLER=1", path)
    return filler


def _drain(sock: socket.socket) -> list[str]:
    """Every datagram waiting on `sock`, the filler's left out."""
    got = []
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            got.append(sock.recv(65536).decode("ascii"))
    sock.settimeout(RECV_TIMEOUT_S)
    return [m for m in got if m != "FILLER=1"]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def records() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("watchd")
    logger.addHandler(handler)
    level = logger.level
    # setLevel, not an assignment: it also clears the level cache that records logged
    # earlier in this process (at the old level) have filled.
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_full_receiver_never_blocks_and_the_lasting_notices_wait(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch,
    records: _Records,
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    filler = _fill(path)
    with Notifier.from_env() as n:
        started = time.monotonic()
        n.ready("up")
        for _ in range(50):
            assert n.send("WATCHDOG=1") is False
        n.reloading()
        assert n.status("periodic") is False
        n.ready()
        assert time.monotonic() - started < 1.0
        assert n.pending == 3
        assert not n.flush()
        complaints = [m for m in records.messages if "is not reading" in m]
        assert len(complaints) == 1, records.messages  # rate-limited
        assert "READY=1" in complaints[0]

        assert _drain(sock) == []
        assert n.flush()
        ready, reloading, ready_again = datagrams(sock, 3)
        assert ready == "READY=1\nSTATUS=up"
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert ready_again == "READY=1"
        assert nothing_more(sock)  # the periodic ones were dropped, not delayed
        assert any("reads its notification socket again" in m for m in records.messages)
        filler.close()

        # At exit, what waits is delivered once the receiver reads, within the close's wait.
        filler = _fill(path)
        n.stopping()
        assert n.pending == 1
        got: list[str] = []
        reader = threading.Timer(0.2, lambda: got.extend(_drain(sock)))
        reader.start()
        n.close()
        reader.join()
        assert [*got, *_drain(sock)] == ["STOPPING=1"]
        assert not n.enabled
    filler.close()


def test_a_receiver_gone_for_good_is_not_retried_and_said_once(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, records: _Records,
) -> None:
    path = str(short_dir / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with Notifier.from_env() as n:
        receiver.close()  # our socket stays connected to a peer that is gone: refused
        n.ready()
        for _ in range(20):
            n.watchdog()
        assert n.pending == 0  # nothing to retry: a refused datagram is dropped
        assert n.flush()
        warnings = [m for m in records.messages if "notification socket" in m]
        assert len(warnings) == 1, records.messages
        assert "cannot send to systemd's notification socket" in warnings[0]
        assert "READY x1" in warnings[0]


def test_close_gives_up_on_a_receiver_that_never_reads(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch,
    records: _Records,
) -> None:
    _, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with contextlib.closing(_fill(path)):
        n = Notifier.from_env()
        n.stopping()
        started = time.monotonic()
        n.close(flush_s=0.2)
        assert 0.2 <= time.monotonic() - started < 2.0
        assert any("not delivered: STOPPING=1" in m for m in records.messages), records.messages


def test_ascii_field() -> None:
    assert ascii_field("plain") == "plain"
    assert ascii_field("a\r\nb\nc") == "a b c"
    assert ascii_field("\u00e9\u5199") == "\\xe9\\u5199"
    assert ascii_field("\udcff").isascii()  # a surrogate-escaped file name


# -- the watchdog ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "3000000"}, 1.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "4242"}, 1.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env=env, pid=4242) == expected


def test_watchdog_interval_is_well_within_half_the_timeout() -> None:
    interval = watchdog_interval(env={"WATCHDOG_USEC": "2000000"}, pid=1)
    assert interval is not None
    assert 0 < interval <= 1.0


def test_watchdog_pid_set_by_an_exec_wrapper() -> None:
    code = "from watchd.systemd import watchdog_interval; print(watchdog_interval())"
    env = dict(base_env(), WATCHDOG_USEC="600000")
    ours = subprocess.run(
        ["sh", "-c", 'WATCHDOG_PID=$$ exec "$0" "$@"', sys.executable, "-c", code],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )
    assert float(ours.stdout) == pytest.approx(0.2)
    other = subprocess.run(
        ["sh", "-c", 'WATCHDOG_PID=1 exec "$0" "$@"', sys.executable, "-c", code],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )
    assert other.stdout.strip() == "None"


# -- socket activation -------------------------------------------------------------------------

ACTIVATED = """
import os, socket, sys
from watchd.errors import WatchdError
from watchd.systemd import listen_sockets
try:
    socks = listen_sockets()
except WatchdError as e:
    print("error:", e)
    sys.exit(3)
print(len(socks))
for s in socks:
    print(s.fileno(), s.family.name, s.type.name, os.get_inheritable(s.fileno()), flush=True)
    conn, _ = s.accept()
    conn.sendall(b"served\\n")
    conn.close()
"""


def activate(fd_three: socket.socket | int, listen_pid: str = "$$",
             **extra: str) -> subprocess.Popen[str]:
    """Start a child with `fd_three` as its fd 3 and LISTEN_* set, as systemd would."""
    env = dict(base_env(), LISTEN_FDS="1", **extra)
    fd = fd_three if isinstance(fd_three, int) else fd_three.fileno()
    # The descriptor comes in as stdin and the wrapper moves it to 3; LISTEN_PID=$$
    # before exec names the process that runs the check, like systemd's own fork.
    wrapper = f'exec 3<&0 </dev/null; LISTEN_PID={listen_pid} exec "$0" "$@"'
    return subprocess.Popen(
        ["sh", "-c", wrapper, sys.executable, "-X", "dev", "-c", ACTIVATED],
        stdin=fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def test_listening_socket_passed_as_fd3_is_served(short_dir: Path) -> None:
    path = str(short_dir / "s")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()
        child = activate(listener, LISTEN_FDNAMES="watchd")
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "1"
        assert child.stdout.readline().split() == ["3", "AF_UNIX", "SOCK_STREAM", "False"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(RECV_TIMEOUT_S)
            client.connect(path)
            assert client.recv(100) == b"served\n"
        _, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
    assert os.path.exists(path), "the socket file belongs to systemd and stays"


def test_sockets_for_another_process_are_ignored(short_dir: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(short_dir / "s"))
        listener.listen()
        child = activate(listener, listen_pid="1")
        out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert out.strip() == "0"


def test_datagram_socket_as_fd3_is_refused_with_a_reason(short_dir: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(short_dir / "d"))
        child = activate(sock, LISTEN_FDNAMES="watchd")
        out, err = child.communicate(timeout=30)
    assert child.returncode == 3, err
    assert "fd 3 (watchd) is AF_UNIX SOCK_DGRAM" in out
    assert "ListenStream=" in out


def test_stream_socket_not_listening_is_refused(short_dir: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(short_dir / "n"))
        child = activate(sock)
        out, err = child.communicate(timeout=30)
    assert child.returncode == 3, err
    assert "SOCK_STREAM, not listening" in out


def test_something_else_as_fd3_is_refused(short_dir: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        child = activate(read_end)
        out, err = child.communicate(timeout=30)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert child.returncode == 3, err
    assert "fd 3 is not a usable socket" in out


def test_no_activation_and_bad_counts() -> None:
    assert listen_sockets(env={}, pid=10) == []
    assert listen_sockets(env={"LISTEN_FDS": "1", "LISTEN_PID": "11"}, pid=10) == []
    with pytest.raises(WatchdError, match=r"LISTEN_FDS='many'"):
        listen_sockets(env={"LISTEN_FDS": "many", "LISTEN_PID": "10"}, pid=10)
    assert listen_sockets(env={"LISTEN_FDS": "0", "LISTEN_PID": "10"}, pid=10) == []


# -- environment -------------------------------------------------------------------------------

def test_child_environment_drops_what_only_the_main_process_may_use() -> None:
    env = dict.fromkeys(SYSTEMD_ONLY_VARIABLES, "1")
    env.update(PATH="/usr/bin", JOURNAL_STREAM="8:9", INVOCATION_ID="abc")
    child = child_environment(env)
    assert child == {"PATH": "/usr/bin", "JOURNAL_STREAM": "8:9", "INVOCATION_ID": "abc"}
    assert "NOTIFY_SOCKET" in env, "the original is left alone"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"PATH": "/bin"}, False),
        ({"INVOCATION_ID": "0123"}, True),
        ({"JOURNAL_STREAM": "8:1234"}, True),
        ({"NOTIFY_SOCKET": "/run/systemd/notify"}, True),
        ({"NOTIFY_SOCKET": ""}, False),
    ],
)
def test_under_systemd(env: dict[str, str], expected: bool) -> None:
    assert under_systemd(env) is expected


# -- logging -----------------------------------------------------------------------------------

LOGS = """
import logging, sys
from watchd.systemd import configure_logging
configure_logging(sys.argv[1])
configure_logging(sys.argv[1])  # again, as on a reload: still one line per record
log = logging.getLogger("watchd.part")
log.debug("debug line")
log.info("info line")
log.warning("two\\nlines")
try:
    raise KeyError("boom")
except KeyError:
    log.exception("failed")
"""


def run_logging(short_dir: Path, level: str, journal: bool) -> list[str]:
    stderr_path = short_dir / "stderr"
    with open(stderr_path, "w") as stderr:
        st = os.fstat(stderr.fileno())
        env = base_env()
        # A JOURNAL_STREAM naming another file must be ignored (stderr was redirected).
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino if journal else st.st_ino + 1}"
        child = subprocess.run(
            [sys.executable, "-c", LOGS, level], env=env, stderr=stderr, timeout=30, check=False,
        )
    assert child.returncode == 0
    return stderr_path.read_text().splitlines()


def test_journal_lines_carry_the_syslog_priority(short_dir: Path) -> None:
    lines = run_logging(short_dir, "debug", journal=True)
    assert lines[:3] == [
        "<7>watchd.part: debug line",
        "<6>watchd.part: info line",
        "<4>watchd.part: two | lines",
    ]
    assert len(lines) == 4, lines
    assert lines[3].startswith("<3>watchd.part: failed | Traceback (most recent call last):")
    assert lines[3].endswith("KeyError: 'boom'")


def test_plain_lines_have_a_timestamp_and_respect_the_level(short_dir: Path) -> None:
    lines = run_logging(short_dir, "info", journal=False)
    assert len(lines) == 3, lines
    assert all(not line.startswith("<") for line in lines)
    date, clock, level, rest = lines[0].split(" ", 3)
    assert time.strptime(f"{date} {clock.split(',')[0]}", "%Y-%m-%d %H:%M:%S")
    assert (level, rest) == ("INFO", "watchd.part: info line")
    assert lines[1].endswith("WARNING watchd.part: two | lines")
    assert "ERROR watchd.part: failed | Traceback" in lines[2]


def test_log_levels() -> None:
    assert log_level("Warning") == logging.WARNING
    with pytest.raises(WatchdError, match="unknown log level 'loud'"):
        log_level("loud")
    assert [syslog_priority(n) for n in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]
