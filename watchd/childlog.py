"""The watcher child's stdout and stderr, read by the daemon and passed on to its own log.

The child's output reaches wherever the daemon logs (the journal, syslog, a --log-file or a
terminal), so a watcher that dies before or after it set up logging says why where an operator
looks. The child writes its log records one per line as `<N>logger: message` (N the syslog
priority, as the journal reads it); anything else it writes (a traceback of an import that
failed, a faulthandler dump) is an error by nature. Sans-IO: bytes in, records out.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from watchd.levels import priority_level

# A line longer than this is passed on in pieces: a runaway write must not grow our buffer.
MAX_LINE = 16 * 1024

_PREFIXED = re.compile(r"<([0-7])>(watchd(?:\.\w+)*): (.*)", re.DOTALL)
DEFAULT_LOGGER = "watchd.watcher"


@dataclass(frozen=True, slots=True)
class Record:
    """One line of the child's output as a log record of ours."""

    logger: str
    level: int
    text: str


def parse_line(line: bytes, pid: int) -> Record | None:
    """The record of one output line (without its newline); None for a blank one."""
    text = line.decode("utf-8", "backslashreplace").rstrip()
    if not text:
        return None
    match = _PREFIXED.fullmatch(text)
    if match is not None:
        return Record(match.group(2), priority_level(int(match.group(1))), match.group(3))
    return Record(DEFAULT_LOGGER, logging.ERROR, f"watcher process {pid}: {text}")


# Put before every piece of a cut line but the first. A piece could otherwise begin with
# `<N>watchd...: ` where a long file name in a log line was cut, and be taken for a record of
# the priority and logger a writer in a watched tree chose.
CONTINUED = b"(continued) "


class LineSplitter:
    """Whole lines out of a byte stream, each at most MAX_LINE bytes (and CONTINUED)."""

    __slots__ = ("_buf", "_cut")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._cut = False  # the line under way was cut: its next piece is a continuation

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        *lines, rest = bytes(self._buf).split(b"\n")
        self._buf[:] = rest
        if lines and self._cut:
            lines[0] = CONTINUED + lines[0]
            self._cut = False
        while len(self._buf) >= MAX_LINE:
            piece = bytes(self._buf[:MAX_LINE])
            del self._buf[:MAX_LINE]
            lines.append(CONTINUED + piece if self._cut else piece)
            self._cut = True
        return lines

    def finish(self) -> list[bytes]:
        """What is left at the end of the stream, as a last line."""
        rest, self._buf = bytes(self._buf), bytearray()
        if rest and self._cut:
            rest = CONTINUED + rest
        self._cut = False
        return [rest] if rest else []


def emit(record: Record) -> None:
    """Log `record` through our own handlers, as if the daemon had logged it."""
    logging.getLogger(record.logger).log(record.level, "%s", record.text)
