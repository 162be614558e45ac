"""Fixtures shared by the end-to-end tests: the real daemon in a short temporary directory."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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
