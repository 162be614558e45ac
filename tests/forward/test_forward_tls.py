"""The forwarder over TLS (tls:// URLs) to a real nats-server with a certificate made here:
trusted, it publishes; not trusted, it says so in its status and tries again, and connects
once the server has a certificate it trusts."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.forward.test_forward_e2e import burst, event_seqs, forward, forwarder, wait_connected
from tests.harness import Daemon, config, wait_for, watch
from tests.nats_server import NatsServer, wait_stream_count

pytest.importorskip("nats")


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def authority(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate authority of our own: (its certificate, its key)."""
    cert, key = directory / f"{name}-ca.pem", directory / f"{name}-ca.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", f"/CN={name} test CA")
    return cert, key


def server_certificate(directory: Path, ca: tuple[Path, Path], name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by `ca`: (certificate, key)."""
    cert, key, request = (directory / f"{name}.pem", directory / f"{name}.key",
                          directory / f"{name}.csr")
    extensions = directory / f"{name}.ext"
    extensions.write_text("subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(request), "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions))
    return cert, key


def tls_options(pair: tuple[Path, Path]) -> tuple[str, ...]:
    return ("--tls", "--tlscert", str(pair[0]), "--tlskey", str(pair[1]))


Pair = tuple[Path, Path]


@dataclass(frozen=True)
class Certificates:
    ca: Path  # our authority's certificate
    trusted: Pair  # a server's certificate and key, signed by it
    untrusted: Pair  # the same, signed by another authority


@pytest.fixture
def certificates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Certificates:
    """Our authority, trusted by the tests' own client (and by the daemon, which inherits
    our environment), and a server certificate signed by it and one signed by another."""
    ours = authority(tmp_path, "ours")
    theirs = authority(tmp_path, "theirs")
    # Where OpenSSL looks for the authorities it trusts, read at each new TLS context.
    monkeypatch.setenv("SSL_CERT_FILE", str(ours[0]))
    return Certificates(ours[0], server_certificate(tmp_path, ours, "trusted"),
                        server_certificate(tmp_path, theirs, "untrusted"))


@pytest.fixture
def tls_forward(start_daemon: Callable[..., Daemon], watched: Path, workdir: str
                ) -> Iterator[Callable[[Pair], tuple[NatsServer, str, Daemon]]]:
    """Start a nats-server with a certificate, and the daemon forwarding to its tls:// URL."""
    servers: list[NatsServer] = []

    def start(pair: Pair) -> tuple[NatsServer, str, Daemon]:
        server = NatsServer(workdir, extra=tls_options(pair))
        servers.append(server)
        server.start()
        url = f"tls://127.0.0.1:{server.port}"
        return server, url, start_daemon(
            config(watches=watch("uploads", watched, events=["create"])) + forward(url))

    yield start
    for server in servers:
        server.kill()


def test_a_tls_url_publishes_over_tls(
        tls_forward: Callable[[Pair], tuple[NatsServer, str, Daemon]], watched: Path,
        certificates: Certificates) -> None:
    server, url, daemon = tls_forward(certificates.trusted)
    status = wait_connected(daemon)
    assert status["server"] == url and status["last_error"] is None
    burst(watched, 100)
    wait_stream_count(url, 100)
    assert event_seqs(url) == list(range(1, 101))
    # Both connections went over TLS: the server takes no other.
    assert "TLS required for client connections" in server.log_text()


def test_a_certificate_not_trusted_is_reported_and_retried(
        tls_forward: Callable[[Pair], tuple[NatsServer, str, Daemon]], watched: Path,
        certificates: Certificates) -> None:
    server, url, daemon = tls_forward(certificates.untrusted)
    pid = forward_pid(daemon)
    status = wait_for(lambda: (f := forwarder(daemon))["errors"] >= 2 and f, 30.0,
                      "two failed attempts")
    assert not status["connected"] and status["server"] is None
    assert str(status["last_error"]).startswith(
        "the NATS server's TLS certificate is not trusted (unable to get local issuer "
        "certificate): "), status
    daemon.wait_log("forward central: the NATS server's TLS certificate is not trusted")
    (watched / "early").write_bytes(b"")  # lag until it can publish
    # The server gets a certificate the forwarder trusts: the same process goes on.
    server.kill()
    server.extra = tls_options(certificates.trusted)
    server.start()
    wait_connected(daemon, 60.0)
    wait_stream_count(url, 1)
    assert event_seqs(url) == [1]
    assert forward_pid(daemon) == pid
    assert "Traceback" not in daemon.log_text()


def forward_pid(daemon: Daemon) -> int:
    """The pid of the daemon's forwarder process, once it runs."""
    def pid() -> int | None:
        for child in Path(f"/proc/{daemon.proc.pid}/task").glob("*/children"):
            for pid in child.read_text().split():
                with contextlib.suppress(OSError):
                    if b"watchd.forward" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        return int(pid)
        return None
    return wait_for(pid, 20.0, "the forwarder process")  # type: ignore[no-any-return]
