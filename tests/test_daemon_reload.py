"""A reload applied by the daemon in-process: what it keeps when applying fails half-way."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from watchd.config.load import load_config
from watchd.daemon import Daemon
from watchd.systemd import Notifier

CONFIG = """
[daemon]
socket = "{dir}/watchd.sock"
client_queue = {queue}
replay_buffer = {replay}
[[watch]]
name = "w"
path = "{dir}"
"""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose socket paths fit in sun_path."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="wrl-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def received(sock: socket.socket) -> list[str]:
    """The notification datagrams waiting on sock, their first field each."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode().split("\n")[0])
        except BlockingIOError:
            return out


def test_a_reload_that_fails_while_applying_keeps_the_old_configuration(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(short_dir / "notify"))
    systemd.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "notify"))
    cfg = short_dir / "watchd.toml"
    cfg.write_text(CONFIG.format(dir=short_dir, queue=50, replay=100))

    async def main() -> None:
        daemon = Daemon(load_config(str(cfg)), Notifier.from_env(), None)
        cfg.write_text(CONFIG.format(dir=short_dir, queue=70, replay=4_000_000))

        # Memory cannot be made to run out on cue without taking the test down with it: the
        # history's resize, the step of applying that takes memory, says it ran out.
        def out_of_memory(size: int) -> None:
            raise MemoryError

        monkeypatch.setattr(daemon.broker._history, "resize", out_of_memory)
        await daemon.reload(asyncio.Lock())

        assert daemon.config.daemon.replay_buffer == 100
        assert (daemon.broker.client_queue, daemon.broker.replay_buffer) == (50, 100)
        status = daemon.status.fields()
        assert status["reloads"] == 0
        assert status["last_reload_error"] == (
            f"{cfg}: daemon.replay_buffer: not enough memory for 4000000 events; "
            "choose a smaller history")
        assert received(systemd) == ["RELOADING=1", "READY=1"]
        daemon.notifier.close(flush_s=0.1)

    try:
        asyncio.run(main())
    finally:
        systemd.close()
