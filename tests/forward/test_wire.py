"""The publishing connection's protocol parts that need no server: the scan of what a server
sends, and the credentials file."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from watchd.config.model import ForwardConfig
from watchd.forward.urls import shown
from watchd.forward.wire import (
    Reply,
    Wire,
    WireError,
    connect_options,
    plain_acks,
    read_credentials,
    scan,
)

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


PLAIN = plain_acks(INBOX)


@pytest.mark.parametrize("plain", [None, PLAIN], ids=["general", "fast"])
def test_a_scan_of_the_whole_stream(plain: re.Pattern[bytes] | None) -> None:
    assert scan(STREAM, len(INBOX), plain) == (WANT_OK, WANT_OTHER, WANT_CONTROLS, b"")


@pytest.mark.parametrize("plain", [None, PLAIN], ids=["general", "fast"])
def test_the_stream_cut_anywhere_gives_the_same(plain: re.Pattern[bytes] | None) -> None:
    for cut in range(1, len(STREAM)):  # as two reads of the socket would
        ok, other, controls, rest = scan(STREAM[:cut], len(INBOX), plain)
        ok2, other2, controls2, rest2 = scan(rest + STREAM[cut:], len(INBOX), plain)
        assert (ok + ok2, other + other2, controls + controls2, rest2) == (
            WANT_OK, WANT_OTHER, WANT_CONTROLS, b""), cut


@pytest.mark.parametrize("data", [
    b'{"stream":"WATCHD","seq":7}', b'{"stream":"WATCHD","seq":7,"duplicate":true}',
    b'{"stream":"WATCHD","domain":"hub","seq":7}',  # not the fast path's shape: all the same
    b'{"stream":"W\\"X","seq":7}', b'{"stream":"WATCHD","seq":7,"error":{"code":1}}',
    b'{"error":{"code":503}}', b"{}", b"",
])
# A size that disagrees with the body (a broken or hostile server) is read by the size, on
# both paths: short (the body's rest is a control line), long (more than the body), too long
# for what came (a partial operation).
@pytest.mark.parametrize("wrong", [0, -3, 3, 1000], ids=["right", "short", "long", "partial"])
def test_the_fast_path_reads_each_reply_as_the_general_one(data: bytes, wrong: int) -> None:
    sized = b"MSG %b43 1 %d\r\n%b\r\n" % (INBOX, max(0, len(data) + wrong), data)
    stream = msg(41, data) * 3 + b"PING\r\n" + sized + msg(42, data)
    assert scan(stream, len(INBOX), PLAIN) == scan(stream, len(INBOX))
    # And a token of another inbox's length is no acknowledgement of ours.
    other = b"MSG _INBOX.ABCD41 1 %d\r\n%b\r\n" % (len(data), data)
    assert scan(other, len(INBOX), PLAIN) == scan(other, len(INBOX))


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


def test_a_url_is_shown_without_its_password() -> None:
    assert shown("nats://fwd:s3cret@n1:4222") == "nats://n1:4222"
    assert shown("tls://t0k@n1:4222") == "tls://n1:4222"
    assert shown("nats://n1:4222") == "nats://n1:4222"
    assert shown("nats://fwd:s3/cr#et@n1:4222") == "nats://n1:4222"  # not percent-encoded
    assert shown("fwd:s3cret@n1:4222", "***@") == "***@n1:4222"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def bad_server(answer: bytes) -> Iterator[int]:
    """A listener that answers each connection with `answer` (after CONNECT when it is an
    -ERR), then keeps it open until the client closes it: the port."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            if answer.startswith(b"-ERR"):
                conn.sendall(b'INFO {"server_id":"X"}\r\n')
                conn.recv(4096)  # CONNECT and PING
            conn.sendall(answer)
            while not stop.is_set() and conn.recv(4096):
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        listener.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 400 Bad Request\r\n", b"INFO {not json\r\n",
    b"-ERR 'Authorization Violation'\r\n"])
def test_a_failed_open_closes_its_socket_and_hides_the_password(answer: bytes) -> None:
    config = ForwardConfig(name="central", urls=("nats://x:4222",))

    async def attempts(port: int) -> tuple[int, int, list[str]]:
        url = f"nats://fwd:s3cret@127.0.0.1:{port}"
        errors = []
        for _ in range(3):  # the first ones may open what a loop keeps for good
            with pytest.raises(WireError) as e:
                await Wire.open(url, config)
        before = open_fds()
        for _ in range(20):
            with pytest.raises(WireError) as e:
                await Wire.open(url, config)
            errors.append(str(e.value))
        await asyncio.sleep(0.05)  # a transport closes its socket at the loop's next turn
        return before, open_fds(), errors

    with bad_server(answer) as port, warnings.catch_warnings(record=True) as warned:
        # A socket not closed is closed when its writer is collected, with a warning.
        warnings.simplefilter("always", ResourceWarning)
        before, after, errors = asyncio.run(attempts(port))
        gc.collect()
    assert not [w for w in warned if issubclass(w.category, ResourceWarning)], warned
    assert after <= before, f"{after - before} sockets left open by 20 failed attempts"
    assert all("s3cret" not in error for error in errors), errors


@pytest.mark.parametrize("sent", [b"MSG _INBOX.X.abc 1 2\r\nok\r\n", b"MSG x 1 y\r\n",
                                  b"HMSG x 1 zz 16\r\n"])
def test_a_malformed_message_is_a_protocol_error(sent: bytes) -> None:
    async def read(port: int) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        wire = Wire(reader, writer, {})
        try:
            with pytest.raises(WireError) as e:
                await wire.replies(lambda ok, other: None)
            return str(e.value)
        finally:
            await wire.close()

    with bad_server(sent) as port:
        message = asyncio.run(read(port))
    assert message.startswith("the NATS server sent a malformed message: b'"), message


def test_the_acknowledgements_before_an_error_in_one_read_are_handled() -> None:
    # A server that acknowledges three messages and then reports an error, in one write: the
    # connection ends, and the three are stored all the same.
    sent = msg(1, b'{"stream":"WATCHD","seq":7}') + msg(2, b'{"stream":"WATCHD","seq":8}') + (
        b"-ERR 'Slow Consumer Detected'\r\n") + msg(3, b'{"stream":"WATCHD","seq":9}')

    async def read(port: int) -> tuple[list[int], str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        wire = Wire(reader, writer, {})
        wire.inbox = INBOX
        acked: list[int] = []
        try:
            with pytest.raises(WireError) as e:
                await wire.replies(lambda ok, other: acked.extend(ok))
            return acked, str(e.value)
        finally:
            await wire.close()

    with bad_server(sent) as port:
        acked, error = asyncio.run(read(port))
    assert error == "the NATS server reported an error: Slow Consumer Detected"
    assert acked == [1, 2, 3]
