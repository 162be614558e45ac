"""Shared fixtures: the real daemon in a short temporary directory (end-to-end tests), and a
stand-in server for the client and watchctl tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakeserver import FakeServer
from tests.harness import Daemon, short_tmpdir


@pytest.fixture
def workdir() -> Iterator[str]:
    with short_tmpdir() as path:
        yield path


@pytest.fixture
def watched(workdir: str) -> Path:
    path = Path(workdir) / "watched"
    path.mkdir()
    return path


@pytest.fixture
def start_daemon(workdir: str) -> Iterator[Callable[..., Daemon]]:
    """Start the real daemon on a config text (with @SOCKET@ for its socket path)."""
    daemons: list[Daemon] = []

    def start(config_text: str, *, wait_ready: bool = True, env: dict[str, str] | None = None,
              **kwargs: object) -> Daemon:
        sub = os.path.join(workdir, f"d{len(daemons)}")
        os.mkdir(sub)
        daemon = Daemon(sub, config_text, env)
        daemons.append(daemon)
        return daemon.start(wait_ready=wait_ready, **kwargs)  # type: ignore[arg-type]

    yield start
    for daemon in daemons:
        daemon.cleanup()


@pytest.fixture
def sock_path() -> Iterator[str]:
    # Not tmp_path: a Unix socket path must fit in 108 bytes.
    with short_tmpdir() as directory:
        yield os.path.join(directory, "s")


@pytest.fixture
def server(sock_path: str) -> Iterator[FakeServer]:
    """A stand-in watchd on sock_path that the test scripts."""
    with FakeServer(sock_path) as fake:
        yield fake
