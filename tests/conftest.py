"""Shared fixtures: the real daemon in a short temporary directory (end-to-end tests), and a
stand-in server for the client and watchctl tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakeserver import FakeServer
from tests.harness import Daemon, config, short_tmpdir, watch


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
def start_watching(start_daemon: Callable[..., Daemon], watched: Path) -> Callable[..., Daemon]:
    """Start the real daemon with one watch, "w" on `watched`: the most common setup.

    daemon_extra is text for the [daemon] table, events the watch's kinds; other keyword
    arguments go to start_daemon (env, shell_prefix, wait_ready, ...).
    """
    def start(daemon_extra: str = "", *, events: list[str] | None = None,
              **kwargs: object) -> Daemon:
        keys = {} if events is None else {"events": events}
        return start_daemon(config(daemon_extra=daemon_extra, watches=watch("w", watched, **keys)),
                            **kwargs)

    return start


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
