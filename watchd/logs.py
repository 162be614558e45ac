"""Logging for the daemon and its child processes: one line a record on stderr, written the
journal's way (a "<N>" priority prefix a line) when stderr is a stream into journald, and a
stream of our own into the journal for what must get there without the event loop.

Apart from watchd.systemd: the watcher and the forwarders log through it too, and none of it
needs systemd to be there (it only looks at where stderr goes).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping
from typing import TextIO

from watchd.errors import WatchdError
from watchd.levels import LOG_LEVELS, syslog_priority

LOGGER_NAME = "watchd"

# The "<N>" prefix of an error line on the journal's stderr stream.
ERROR_PRIORITY = syslog_priority(logging.ERROR)
# journald's socket for stdout/stderr streams (what systemd connects a unit's stderr to).
JOURNAL_STDOUT_SOCKET = "/run/systemd/journal/stdout"


def _log() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def _stream_is_journal(stream: TextIO, env: Mapping[str, str]) -> bool:
    # JOURNAL_STREAM survives into children whose stderr was redirected elsewhere;
    # only trust it when it names the very file our stream writes to.
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(stream.fileno())
        return (int(device), int(inode)) == (stat.st_dev, stat.st_ino)
    except (ValueError, OSError):
        return False


def stderr_is_journal(env: Mapping[str, str] | None = None) -> bool:
    """Whether our stderr is a stream into the journal (which reads "<N>" line prefixes)."""
    return _stream_is_journal(sys.stderr, os.environ if env is None else env)


def print_error(message: str) -> None:
    """Write `message` to stderr; at error priority, line by line, when stderr is the journal."""
    if stderr_is_journal():
        message = "\n".join(f"<{ERROR_PRIORITY}>{line}" for line in message.splitlines())
    print(message, file=sys.stderr)


def journal_stream(identifier: str, priority: int = ERROR_PRIORITY) -> socket.socket | None:
    """A new stream into the journal whose every line is logged at `priority`; None on failure.

    What sd_journal_stream_fd(3) opens: a connection to journald's stdout socket, introduced
    by a header that fixes the identifier and the priority. Raw writes to it, such as a
    faulthandler dump from a signal handler, need no cooperation from our own event loop.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(JOURNAL_STDOUT_SOCKET)
        sock.shutdown(socket.SHUT_RD)
        # identifier, unit id (empty: journald takes ours), priority, no "<N>" parsing, and
        # not forwarded to syslog, kmsg or the console beyond what journald is set up to do.
        header = f"{identifier}\n\n{priority}\n0\n0\n0\n0\n"
        sock.sendall(header.encode("ascii", "replace"))
    except OSError:
        sock.close()
        return None
    return sock


class _LineFormatter(logging.Formatter):
    """One line per record, tracebacks included; optionally with the journal priority."""

    def __init__(self, *, journal: bool) -> None:
        if journal:
            # The journal adds its own timestamp and reads the priority from the prefix.
            super().__init__("%(name)s: %(message)s")
        else:
            super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        lines = [line.rstrip() for line in super().format(record).splitlines()]
        text = " | ".join(line for line in lines if line)
        if self._journal:
            return f"<{syslog_priority(record.levelno)}>{text}"
        return text


def log_level(name: str) -> int:
    """The logging level of a configured level name (debug, info, warning, error)."""
    try:
        return LOG_LEVELS[name.strip().lower()]
    except KeyError as e:
        raise WatchdError(f"unknown log level {name!r}: use one of {', '.join(LOG_LEVELS)}") from e


def configure_logging(
    level: str, *, stream: TextIO | None = None, env: Mapping[str, str] | None = None,
    priority_prefix: bool | None = None,
) -> None:
    """Log "watchd" records to stderr, one line each, journal-style when stderr is the journal.

    priority_prefix forces (True) or forbids (False) the journal's "<N>" line prefix; the
    watcher child, whose output the daemon reads and logs at that priority, forces it.
    """
    numeric = log_level(level)
    stream = sys.stderr if stream is None else stream
    env = os.environ if env is None else env
    if priority_prefix is None:
        priority_prefix = _stream_is_journal(stream, env)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_LineFormatter(journal=priority_prefix))
    logger = _log()
    # Calling again (a reload with a new level) replaces the handler instead of adding one.
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(numeric)
    logger.propagate = False
