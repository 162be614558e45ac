"""The `watchd` command in-process: its arguments, --check and the refusals before detaching.

Running the daemon itself is left to the end-to-end tests; everything here returns before
serve() is reached, so `main` is called directly and its exit status and output read.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.harness import config, watch
from watchd import __version__, cli

EX_USAGE = 2  # argparse's status for a command line it refuses


@pytest.fixture(autouse=True)
def no_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """As started from a shell: the tests may themselves run under a systemd unit."""
    for name in ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHD_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def valid_config(tmp_path: Path, *watches: str) -> Path:
    path = tmp_path / "watchd.toml"
    path.write_text(config(socket_line=f'socket = "{tmp_path}/s"', watches="".join(watches)))
    return path


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The message of a command line refused by argparse (status 2)."""
    with pytest.raises(SystemExit) as info:
        cli.parse_args(list(argv))
    assert info.value.code == EX_USAGE
    return capsys.readouterr().err


# --- arguments ----------------------------------------------------------------------------------

def test_defaults() -> None:
    args = cli.parse_args([])
    assert args.config == cli.DEFAULT_CONFIG == "/etc/watchd/watchd.toml"
    assert not args.check and not args.daemonize
    assert args.pidfile is None and args.log_file is None and args.log_level is None
    assert args.syslog_socket == "/dev/log"


def test_config_from_the_environment_and_the_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHD_CONFIG", "/etc/other.toml")
    assert cli.parse_args([]).config == "/etc/other.toml"
    assert cli.parse_args(["--config", "/x.toml"]).config == "/x.toml"


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_log_levels(level: str) -> None:
    assert cli.parse_args(["--log-level", level]).log_level == level


def test_an_unknown_log_level_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, "--log-level", "verbose")
    assert "--log-level" in err and "'verbose'" in err


@pytest.mark.parametrize(("argv", "says"), [
    (["--daemonize"], "--daemonize needs --pidfile FILE"),
    (["--pidfile", "/run/w.pid"], "--pidfile is used with --daemonize only"),
    (["--log-file", "/var/log/w.log"], "--log-file is used with --daemonize only"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_combinations_that_make_no_sense_are_refused(
        capsys: pytest.CaptureFixture[str], argv: list[str], says: str) -> None:
    assert says in usage_error(capsys, *argv)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"watchd {__version__}"


# --- --check ------------------------------------------------------------------------------------

def test_check_prints_a_summary_and_exits_0(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    there = tmp_path / "there"
    there.mkdir()
    cfg = valid_config(tmp_path, watch("here", there),
                       watch("later", tmp_path / "later", recursive=False, events=["create"]))
    assert cli.main(["--config", str(cfg), "--check"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"{cfg}: OK, 2 watch(es); socket {tmp_path}/s"
    assert lines[1].startswith(f"  here: {there} (recursive, ")
    assert "pending" not in lines[1]
    assert lines[2] == (f"  later: {tmp_path / 'later'} (not recursive, 1 event kinds)"
                        "  (does not exist yet: pending)")


@pytest.mark.parametrize(("text", "key"), [
    ('[[watch]]\nname = "w"\npath = "/x"\nevents = ["crete"]\n', "watch[0].events[0]"),
    ('[[watch]]\nname = "w"\npath = "relative"\n', "watch[0].path"),
    ("[daemon]\nbogus = 1\n", "daemon.bogus"),
    ("[daemon]\nreplay_buffer = 1000000000000\n", "daemon.replay_buffer"),
    ("[daemon\n", "invalid TOML"),  # not TOML: the file, and where in it (line, column)
])
def test_check_of_a_bad_file_exits_78_naming_file_and_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    assert cli.main(["--config", str(cfg), "--check"]) == cli.EX_CONFIG == 78
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"watchd: invalid configuration: {cfg}"), err
    assert key in err
    assert "Traceback" not in err
    if key == "invalid TOML":
        assert "line 1" in err


def test_a_bad_file_is_refused_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Without --check too: the status a unit's RestartPreventExitStatus= names.
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[daemon]\nclient_queue = -1\n")
    assert cli.main(["--config", str(cfg)]) == 78
    assert "daemon.client_queue" in capsys.readouterr().err


def test_a_missing_file_exits_78_naming_it(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert cli.main(["--config", str(missing), "--check"]) == 78
    assert str(missing) in capsys.readouterr().err


# --- --daemonize, refused before detaching ------------------------------------------------------

def daemonize(tmp_path: Path, *extra: str) -> int:
    cfg = valid_config(tmp_path, watch("w", tmp_path))
    return cli.main(["--config", str(cfg), "--daemonize", "--pidfile", str(tmp_path / "w.pid"),
                     *extra])


def test_daemonize_without_syslog_or_log_file_is_refused_with_78(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-syslog.sock"
    assert daemonize(tmp_path, "--syslog-socket", str(missing)) == 78
    err = capsys.readouterr().err
    assert f"its socket {missing} cannot be reached" in err
    assert "start a syslog daemon, or give --log-file FILE" in err
    assert not (tmp_path / "w.pid").exists()  # refused before detaching


def test_daemonize_under_systemd_is_refused_with_78(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
    assert daemonize(tmp_path) == 78
    err = capsys.readouterr().err
    assert "--daemonize is for hosts without systemd" in err
    assert "Type=notify" in err
    assert not (tmp_path / "w.pid").exists()


def test_daemonize_refuses_a_pid_file_of_a_live_process(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "w.pid").write_text("1\n")  # init: always alive
    assert daemonize(tmp_path) == cli.EX_FAILURE
    err = capsys.readouterr().err
    assert "already running with pid 1" in err and str(tmp_path / "w.pid") in err


def test_daemonize_refuses_a_pid_file_in_a_missing_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = valid_config(tmp_path, watch("w", tmp_path))
    pidfile = tmp_path / "no" / "w.pid"
    assert cli.main(["--config", str(cfg), "--daemonize", "--pidfile", str(pidfile)]) == 1
    assert f"{tmp_path / 'no'} does not exist" in capsys.readouterr().err


# --- the pid file and the syslog probe ----------------------------------------------------------

def test_pid_file_written_then_removed_and_a_stale_one_replaced(tmp_path: Path) -> None:
    path = tmp_path / "w.pid"
    path.write_text("999999999\n")  # no such process
    with cli.PidFile(str(path)) as pidfile:
        assert path.read_text() == f"{os.getpid()}\n"
        assert pidfile.owner() == os.getpid()
    assert not path.exists()


@pytest.mark.parametrize("content", ["", "garbage", "0", "-5"])
def test_pid_file_without_a_pid_has_no_owner(tmp_path: Path, content: str) -> None:
    path = tmp_path / "w.pid"
    path.write_text(content)
    assert cli.PidFile(str(path)).owner() is None


def test_syslog_probe(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    assert "cannot be reached" in (cli._syslog_problem(path) or "")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(path)
        assert cli._syslog_problem(path) is None
