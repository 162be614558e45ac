"""The publishing connection's protocol parts that need no server: the scan of what a server
sends, and the credentials file."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchd.config.model import ForwardConfig
from watchd.forward.wire import Reply, WireError, connect_options, read_credentials, scan

INBOX = b"_INBOX.ABC."


def msg(token: int, data: bytes) -> bytes:
    return b"MSG %b%d 1 %d\r\n%b\r\n" % (INBOX, token, len(data), data)


STREAM = b"".join([
    msg(1, b'{"stream":"WATCHD","seq":7}'),
    msg(2, b'{"stream":"WATCHD","seq":7,"duplicate":true}'),
    b"PING\r\n",
    msg(3, b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},'
           b'"stream":"WATCHD"}'),
    b"HMSG %b4 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n" % INBOX,
    b'INFO {"server_id":"X","connect_urls":["10.0.0.2:4222"]}\r\n',
    msg(5, b'{"stream":"WATCHD","seq":8}'),
])
WANT_OK = [1, 2, 5]
WANT_OTHER = [Reply(3, b"", b'{"error":{"code":503,"err_code":10077,"description":"maximum '
                    b'messages exceeded"},"stream":"WATCHD"}'),
              Reply(4, b"NATS/1.0 503\r\n\r\n", b"")]
WANT_CONTROLS = [b"PING", b'INFO {"server_id":"X","connect_urls":["10.0.0.2:4222"]}']


def test_a_scan_of_the_whole_stream() -> None:
    assert scan(STREAM, len(INBOX)) == (WANT_OK, WANT_OTHER, WANT_CONTROLS, b"")


def test_the_stream_cut_anywhere_gives_the_same() -> None:
    for cut in range(1, len(STREAM)):  # as two reads of the socket would
        ok, other, controls, rest = scan(STREAM[:cut], len(INBOX))
        ok2, other2, controls2, rest2 = scan(rest + STREAM[cut:], len(INBOX))
        assert (ok + ok2, other + other2, controls + controls2, rest2) == (
            WANT_OK, WANT_OTHER, WANT_CONTROLS, b""), cut


CREDS = """-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.

-----BEGIN USER NKEY SEED-----
SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4
------END USER NKEY SEED------
"""


def test_a_credentials_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "user.creds"
    path.write_text(CREDS)
    assert read_credentials(str(path)) == (
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln",
        b"SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4")


def test_a_credentials_file_without_a_seed_is_named(tmp_path: Path) -> None:
    path = tmp_path / "user.creds"
    path.write_text(CREDS.split("***", maxsplit=1)[0])
    with pytest.raises(WireError, match=f"the credentials file {path} holds no user seed"):
        read_credentials(str(path))
    with pytest.raises(WireError, match="cannot read the credentials file"):
        read_credentials(str(tmp_path / "missing.creds"))


@pytest.mark.parametrize(("keys", "url_user", "url_password", "want"), [
    ({}, None, None, {}),
    ({"token": "t0k"}, None, None, {"auth_token": "t0k"}),
    ({"user": "fwd", "password": "pw"}, None, None, {"user": "fwd", "pass": "pw"}),
    ({}, "fwd", "pw", {"user": "fwd", "pass": "pw"}),
    ({}, "t0k", None, {"auth_token": "t0k"}),
])
def test_the_credentials_in_connect(keys: dict[str, str], url_user: str | None,
                                    url_password: str | None, want: dict[str, str]) -> None:
    config = ForwardConfig(name="central", urls=("nats://x:4222",), **keys)  # type: ignore[arg-type]
    options = connect_options(config, {"nonce": "n"}, url_user, url_password)
    assert {k: options[k] for k in ("auth_token", "user", "pass") if k in options} == want
    assert options["headers"] and options["no_responders"] and not options["verbose"]
