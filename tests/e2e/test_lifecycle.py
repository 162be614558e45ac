"""Start-up, --check, exit statuses, pending and lost roots, orderly stop."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import (
    NOBODY,
    REPO,
    config,
    is_type,
    python_for_nobody,
    run_watchd,
    wait_for,
    watch,
)
from watchd.watcher_nice import priority_targets

pytestmark = pytest.mark.timeout(60)


def test_check_valid_file(tmp_path: Path) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text(config(socket_line=f'socket = "{tmp_path}/s"', watches=watch("w", tmp_path)))
    result = run_watchd("--check", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "w:" in result.stdout


def test_check_invalid_file_exits_78(tmp_path: Path) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text('[[watch]]\nname = "w"\npath = "/x"\nevents = ["crete"]\n')
    result = run_watchd("--check", "--config", str(cfg))
    assert result.returncode == 78
    assert str(cfg) in result.stderr and "watch[0].events[0]" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_file_at_start_exits_78(tmp_path: Path) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text("[daemon]\nbogus = 1\n")
    result = run_watchd("--config", str(cfg))
    assert result.returncode == 78
    assert "daemon.bogus" in result.stderr and "Traceback" not in result.stderr


def test_missing_file_exits_78(tmp_path: Path) -> None:
    result = run_watchd("--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 78
    assert "nope.toml" in result.stderr


def test_config_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text(config(socket_line=f'socket = "{tmp_path}/s"'))
    result = run_watchd("--check", env=dict(os.environ, WATCHD_CONFIG=str(cfg)))
    assert result.returncode == 0 and str(cfg) in result.stdout


def test_sigterm_stops_cleanly_and_removes_the_socket(start_watching) -> None:
    daemon = start_watching()
    line = daemon.connect()
    watcher = daemon.watcher_pid()
    assert os.path.exists(daemon.socket)
    assert daemon.stop() == 0
    assert not os.path.exists(daemon.socket)
    with pytest.raises(EOFError):
        line.recv()
    wait_for(lambda: not os.path.exists(f"/proc/{watcher}"), what="the watcher to be reaped")
    daemon.notify.wait("STOPPING=1")


def test_sigint_stops_cleanly(start_watching) -> None:
    daemon = start_watching()
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(10) == 0
    assert "Traceback" not in daemon.log_text()


def test_socket_mode(start_watching) -> None:
    daemon = start_watching('socket_mode = "0640"')
    assert os.stat(daemon.socket).st_mode & 0o777 == 0o640


def test_stale_socket_is_replaced_live_one_refused(start_daemon, start_watching,
                                                   watched: Path) -> None:
    import socket as socketlib

    first = start_watching()
    # A second daemon on the same socket path is refused with a clear message.
    second_cfg = os.path.join(first.dir, "second.toml")
    with open(second_cfg, "w") as f:
        f.write(config(socket_line=f'socket = "{first.socket}"', watches=watch("w", watched)))
    result = run_watchd("--config", second_cfg)
    assert result.returncode != 0
    assert "already serving" in result.stderr
    assert first.connect().request({"op": "ping"})["type"] == "pong"
    # A stale file (nobody listening) is replaced.
    first.proc.kill()
    first.proc.wait()
    stale = socketlib.socket(socketlib.AF_UNIX)
    if not os.path.exists(first.socket):
        stale.bind(first.socket)
    stale.close()
    again = start_daemon(config(socket_line=f'socket = "{first.socket}"',
                                watches=watch("w", watched)))
    line = again.line(first.socket)
    assert line.recv()["pid"] == again.proc.pid


def test_pending_root_becomes_active(start_daemon, workdir: str) -> None:
    root = Path(workdir) / "later"
    daemon = start_daemon(config(watches=watch("w", root)))
    line, sid = daemon.subscribe()
    assert daemon.status()["watches"][0]["state"] == "pending"
    root.mkdir()
    restored = line.until(is_type("watch_restored"))[-1]
    assert restored == {"type": "watch_restored", "subscription": sid, "watch": "w",
                        "path": str(root)}
    (root / "f").touch()
    line.until(lambda m: m.get("path") == str(root / "f"))
    assert daemon.status()["watches"][0]["state"] == "active"


def test_deleted_root_is_lost_then_restored(start_daemon, workdir: str) -> None:
    root = Path(workdir) / "root"
    (root / "sub").mkdir(parents=True)
    daemon = start_daemon(config(watches=watch("w", root)))
    line, sid = daemon.subscribe()
    shutil.rmtree(root)
    lost = line.until(is_type("watch_lost"))[-1]
    assert lost == {"type": "watch_lost", "subscription": sid, "watch": "w", "path": str(root),
                    "reason": "deleted"}
    wait_for(lambda: daemon.status()["watches"][0]["state"] == "pending", what="pending state")
    root.mkdir()
    line.until(is_type("watch_restored"))
    (root / "back").touch()
    line.until(lambda m: m.get("path") == str(root / "back"))


def test_a_root_that_comes_back_reports_what_it_holds(start_watching, watched: Path) -> None:
    root = watched
    daemon = start_watching()
    line, _ = daemon.subscribe()
    root.rmdir()
    line.until(is_type("watch_lost"))
    # Recreated with content before the daemon looks again: the content is reported.
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "early.csv").touch()
    got = line.until(lambda m: m.get("path") == str(root / "sub" / "early.csv"))
    kinds = [m["type"] for m in got]
    assert "watch_restored" in kinds
    assert kinds.index("watch_restored") < len(kinds) - 1
    assert got[-1]["kind"] == "create"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs CAP_SYS_NICE")
def test_the_watcher_is_scheduled_before_the_daemon(start_watching) -> None:
    # The kernel queue is the one place where events are lost for good: under load, the
    # process that drains it must get the CPU before the fan-out does.
    daemon = start_watching()
    assert daemon.proc is not None
    own = os.getpriority(os.PRIO_PROCESS, daemon.proc.pid)
    assert os.getpriority(os.PRIO_PROCESS, daemon.watcher_pid()) == max(-20, own - 10)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
def test_an_unprivileged_watcher_stays_at_the_daemons_priority() -> None:
    # No CAP_SYS_NICE and no RLIMIT_NICE to spare: the boost is skipped, not an error.
    def drop() -> None:
        resource.setrlimit(resource.RLIMIT_NICE, (0, 0))
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    code = "from watchd.watcher_nice import raise_priority; print(raise_priority())"
    result = subprocess.run([python_for_nobody(), "-c", code], preexec_fn=drop,
                            env={"PYTHONPATH": str(REPO)}, cwd="/", capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == os.getpriority(os.PRIO_PROCESS, 0)


@pytest.mark.parametrize(("current", "rlimit", "targets"), [
    (0, 0, [-10]),  # root: the whole boost (RLIMIT_NICE does not bind CAP_SYS_NICE)
    (0, 25, [-10, -5]),  # LimitNICE=-5: the boost, else what the limit allows
    (0, 30, [-10]),  # LimitNICE=-10, as the shipped unit sets
    (0, resource.RLIM_INFINITY, [-10]),
    (-15, 0, [-20]),  # never past -20
    (-20, 40, []),  # nothing to gain
    (5, 0, [-5]),  # relative to the daemon's own value (a unit's Nice=)
])
def test_priority_targets(current: int, rlimit: int, targets: list[int]) -> None:
    assert priority_targets(current, rlimit) == targets


def test_a_watcher_of_another_version_refuses_to_talk() -> None:
    # A package upgrade under a running daemon: the old daemon must not misread the new
    # watcher's channel; the watcher says what to do and exits with EX_CONFIG.
    result = subprocess.run([sys.executable, "-m", "watchd.watcher", "--fd", "99",
                             "--daemon-version", "0.0.1"], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 78
    assert "running daemon is 0.0.1" in result.stderr
    assert "restart the service" in result.stderr
    assert "Traceback" not in result.stderr
