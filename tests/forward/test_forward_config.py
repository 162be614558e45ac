"""The [[forward]] tables: values, and every problem named by file, key and what to do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from watchd import cli
from watchd.config import ForwardConfig, parse_config
from watchd.config.forward import EXTRA_HINT
from watchd.errors import ConfigError
from watchd.events import Kind

FILE = "/etc/watchd/watchd.toml"
WATCHES = '[[watch]]\nname = "up"\npath = "/srv/up"\n[[watch]]\nname = "logs"\npath = "/srv/l"\n'


def forward_toml(extra: str = "", head: str = 'name = "central"\ntype = "nats"\n'
                 'url = "nats://nats.example:4222"\n') -> str:
    return WATCHES + "[[forward]]\n" + head + extra + "\n"


def only_forward(extra: str = "") -> ForwardConfig:
    (forward,) = parse_config(forward_toml(extra), FILE).forwards
    return forward


def refused(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, FILE)
    return str(info.value)


def test_no_forward_table_forwards_nothing() -> None:
    assert parse_config(WATCHES, FILE).forwards == ()


def test_the_defaults() -> None:
    assert only_forward() == ForwardConfig(name="central", urls=("nats://nats.example:4222",))
    f = only_forward()
    assert f.subject == "watchd.{host}.{watch}" and f.stream == "WATCHD"
    assert f.watches is None and f.events is None and f.create_stream is False


def test_a_credentials_file_needs_nkeys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "nats.creds"
    creds.write_text("x")
    monkeypatch.setitem(sys.modules, "nkeys", None)
    message = refused(forward_toml(f'credentials = "{creds}"\n'))
    assert message.startswith(f"{FILE}: forward[0].credentials: "), message
    assert "pip install nkeys" in message


def test_every_key_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "nats.creds"
    creds.write_text("x")
    monkeypatch.setitem(sys.modules, "nkeys", sys)  # (any module: it is only looked for)
    f = only_forward(f'credentials = "{creds}"\nsubject = "fleet.{{watch}}.{{host}}"\n'
                     'stream = "FLEET"\nwatches = ["up"]\nevents = ["create", "close_write"]\n'
                     "create_stream = true\nping_interval = 2.5\n")
    assert f.ping_interval == 2.5 and only_forward().ping_interval == 30.0
    assert f.credentials == str(creds) and f.subject == "fleet.{watch}.{host}"
    assert f.stream == "FLEET" and f.watches == ("up",) and f.create_stream
    assert f.events == frozenset({Kind.CREATE, Kind.CLOSE_WRITE})
    g = only_forward('user = "u"\npassword = "p"\n')
    assert (g.user, g.password) == ("u", "p")
    assert only_forward('token = "t"\n').token == "t"


def test_a_list_of_urls() -> None:
    f = parse_config(forward_toml(head='name = "c"\ntype = "nats"\n'
                                  'url = ["nats://a:4222", "tls://b:4222"]\n'), FILE).forwards[0]
    assert f.urls == ("nats://a:4222", "tls://b:4222")


@pytest.mark.parametrize(("extra", "key", "problem"), [
    ('subject = "watchd.*.{watch}"\n', "forward[0].subject", "wildcards"),
    ('subject = "watchd..{watch}"\n', "forward[0].subject", "empty token"),
    ('subject = "watchd.{hots}"\n', "forward[0].subject", "unknown placeholder {hots}"),
    ('subject = "watchd-{host}.x"\n', "forward[0].subject", "whole token"),
    ('subject = "a.b._notice"\n', "forward[0].subject", "notices"),
    ('stream = "A.B"\n', "forward[0].stream", "not a valid stream name"),
    ('watches = ["nope"]\n', "forward[0].watches[0]", "no watch is named 'nope'"),
    ("watches = []\n", "forward[0].watches", "must not be empty"),
    ('events = ["crete"]\n', "forward[0].events[0]", "unknown event kind"),
    ("create_stream = 1\n", "forward[0].create_stream", "expected true or false"),
    ('token = "t"\nuser = "u"\npassword = "p"\n', "forward[0].user", "not token and user"),
    ('user = "u"\n', "forward[0].password", "user and password go together"),
    ('credentials = "/no/such.creds"\n', "forward[0].credentials", "cannot read"),
    ('bogus = 1\n', "forward[0].bogus", "unknown key"),
    ("ping_interval = 0\n", "forward[0].ping_interval", "greater than 0"),
    ('ping_interval = "30s"\n', "forward[0].ping_interval", "expected a number of seconds"),
    # Below a second it would PING on every tick and give up connections that are fine.
    ("ping_interval = 1e-6\n", "forward[0].ping_interval", "must be at least 1 s, got 1e-06"),
    ("ping_interval = 0.5\n", "forward[0].ping_interval", "must be at least 1 s, got 0.5"),
    ("ping_interval = inf\n", "forward[0].ping_interval", "must be a finite number"),
    ("ping_interval = nan\n", "forward[0].ping_interval", "must be a finite number"),
])
def test_a_bad_key_is_named_with_its_problem(extra: str, key: str, problem: str) -> None:
    message = refused(forward_toml(extra))
    assert message.startswith(f"{FILE}: {key}: "), message
    assert problem in message
    assert "(in forward 'central')" in message


@pytest.mark.parametrize(("head", "key", "problem"), [
    ('type = "nats"\nurl = "nats://a:1"\n', "forward[0].name", "missing"),
    ('name = "a b"\ntype = "nats"\nurl = "nats://a:1"\n', "forward[0].name", "not a valid name"),
    ('name = "c"\nurl = "nats://a:1"\n', "forward[0].type", "missing"),
    ('name = "c"\ntype = "kafka"\nurl = "nats://a:1"\n', "forward[0].type", "unknown type"),
    ('name = "c"\ntype = "nats"\n', "forward[0].url", "missing"),
    ('name = "c"\ntype = "nats"\nurl = "http://a:1"\n', "forward[0].url", "not a NATS server"),
    ('name = "c"\ntype = "nats"\nurl = "nats://a:x"\n', "forward[0].url", "not a valid URL"),
    ('name = "c"\ntype = "nats"\nurl = "ws://a:8080"\n', "forward[0].url",
     "WebSocket URLs are not supported"),
    ('name = "c"\ntype = "nats"\nurl = ["nats://a:1", "wss://a:443"]\n', "forward[0].url[1]",
     "WebSocket URLs are not supported"),
    ('name = "c"\ntype = "nats"\nurl = []\n', "forward[0].url", "must not be empty"),
    ('name = "c"\ntype = "nats"\nurl = ["nats://a:1", 3]\n', "forward[0].url[1]", "a string"),
])
def test_the_required_keys(head: str, key: str, problem: str) -> None:
    message = refused(forward_toml(head=head))
    assert message.startswith(f"{FILE}: {key}: "), message
    assert problem in message


def test_names_are_unique() -> None:
    text = forward_toml() + '[[forward]]\nname = "central"\ntype = "nats"\nurl = "nats://b:1"\n'
    message = refused(text)
    assert message.startswith(f"{FILE}: forward[1].name: duplicate name 'central'"), message


def test_forward_must_be_tables() -> None:
    assert "forward: expected an array of tables" in refused('forward = "x"\n')


def test_without_the_client_library_a_forward_names_the_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)  # import nats now fails
    message = refused(forward_toml())
    assert message.startswith(f"{FILE}: forward[0]: "), message
    assert EXTRA_HINT in message
    # Without a [[forward]], the library is not needed.
    assert parse_config(WATCHES, FILE).forwards == ()


def test_check_exits_78_for_a_bad_forward(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[daemon]\nsocket = "{tmp_path}/s"\n' + forward_toml('stream = "a b"\n'))
    assert cli.main(["--config", str(cfg), "--check"]) == 78
    _, err = capsys.readouterr()
    assert f"{cfg}: forward[0].stream: 'a b' is not a valid stream name" in err
    assert "Traceback" not in err


def test_the_daemon_refuses_a_ping_interval_under_a_second(tmp_path: Path) -> None:
    cfg = tmp_path / "ping.toml"
    cfg.write_text(f'[daemon]\nsocket = "{tmp_path}/s"\n' + forward_toml('ping_interval = 1e-6\n'))
    result = subprocess.run([sys.executable, "-m", "watchd", "--config", str(cfg)],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 78, result.stderr
    assert f"{cfg}: forward[0].ping_interval: must be at least 1 s, got 1e-06" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_daemon_runs_without_the_client_library() -> None:
    # Only a [[forward]] needs it: the daemon, its command line and the forwarders' supervisor
    # import no NATS code.
    code = ("import sys; sys.modules['nats'] = None\n"
            "import watchd.cli, watchd.daemon, watchd.forward.supervise\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr


def test_check_exits_78_for_a_websocket_url(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "ws.toml"
    cfg.write_text(f'[daemon]\nsocket = "{tmp_path}/s"\n' + forward_toml(
        head='name = "central"\ntype = "nats"\nurl = "wss://n1:443"\n'))
    assert cli.main(["--config", str(cfg), "--check"]) == 78
    _, err = capsys.readouterr()
    assert f"{cfg}: forward[0].url: 'wss://n1:443': WebSocket URLs are not supported" in err


@pytest.mark.parametrize(("url", "shown"), [
    ("nats://fwd:s3cret@n1:x", "'nats://***@n1:x' is not a valid URL"),
    ("nats://fwd:s3cret/x@n1:4222", "'nats://***@n1:4222' is not a valid URL (check its "
     "port; a password holding '/', '?' or '#' goes in the password key, not in the URL)"),
    ("http://fwd:s3cret@n1:4222", "'http://***@n1:4222' is not a NATS server URL"),
    ("wss://fwd:s3cret@n1:443", "'wss://***@n1:443': WebSocket URLs are not supported"),
])
def test_a_refused_url_is_shown_without_its_password(tmp_path: Path, url: str,
                                                     shown: str) -> None:
    cfg = tmp_path / "secret.toml"
    cfg.write_text(f'[daemon]\nsocket = "{tmp_path}/s"\n' + forward_toml(
        head=f'name = "central"\ntype = "nats"\nurl = ["nats://n0:4222", "{url}"]\n'))
    # The daemon as it starts: the file refused, exit 78, and its message.
    result = subprocess.run([sys.executable, "-m", "watchd", "--config", str(cfg)],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 78, result.stderr
    assert f"{cfg}: forward[0].url[1]: {shown}" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
