"""A watchd for a benchmark: one watch on a fresh directory, started and cleaned up."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.fidelity import wait_ready


@dataclass(frozen=True)
class Running:
    proc: subprocess.Popen[bytes]
    socket: str
    root: Path  # the watched directory, empty at the start


@contextmanager
def running(fs: Path, name: str, profile_var: str, watch_extra: str = "") -> Iterator[Running]:
    """A daemon watching a new directory under fs as watch `name`, ready to serve;
    watch_extra: more keys of the watch's table (TOML lines).

    If the environment variable profile_var names a file, the daemon runs under cProfile
    and writes its profile there.
    """
    work = Path(tempfile.mkdtemp(prefix=f"wd-{name}.", dir="/tmp"))
    root = fs / f"{name}-{os.getpid()}"
    root.mkdir()
    sock = str(work / "w.sock")
    cfg = work / "w.toml"
    cfg.write_text(f'[daemon]\nsocket = "{sock}"\nlog_level = "warning"\n'
                   f'[[watch]]\nname = "{name}"\npath = "{root}"\n{watch_extra}')
    profile = os.environ.get(profile_var)
    extra = ["-m", "cProfile", "-o", profile] if profile else []
    proc = subprocess.Popen([sys.executable, *extra, "-m", "watchd", "--config", str(cfg)])
    try:
        if not wait_ready(sock, proc):
            raise RuntimeError("watchd did not start")
        yield Running(proc, sock, root)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def subscribe(path: str) -> socket.socket:
    """A non-blocking connection subscribed to everything, past its hello and `subscribed`."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rb")
    f.readline()  # hello
    s.sendall(b'{"op":"subscribe","id":1}\n')  # every default kind, as the peer harness does
    assert b'"subscribed"' in f.readline()
    f.close()
    s.setblocking(False)
    return s
