"""Starting one of the daemon's child processes (the watcher, a forwarder) and its channel."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass

from watchd.systemd import child_environment


@dataclass(frozen=True, slots=True)
class Spawned:
    """A child just started: its process, our end of its channel, its output."""

    proc: subprocess.Popen[bytes]
    sock: socket.socket  # a socketpair's end, non-blocking; the child has the other
    output: int  # the child's stdout and stderr, non-blocking: our log reads it (childlog)


def spawn(module: str, *args: str) -> Spawned:
    """Run `python -m module --fd N *args`, N the child's end of a new socketpair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # exec, not fork: the child starts clean, with none of our threads, locks or loop.
        # It gets no NOTIFY_SOCKET/WATCHDOG_*/LISTEN_*: only the main process talks to systemd.
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--fd", str(theirs.fileno()), *args],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            # Its output goes to our log (see childlog), not to our stderr, which may be
            # /dev/null in a detached daemon.
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=child_environment(os.environ), close_fds=True)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    ours.setblocking(False)
    assert proc.stdout is not None
    output = proc.stdout.fileno()
    os.set_blocking(output, False)
    return Spawned(proc, ours, output)
