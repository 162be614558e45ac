"""Line framing: a byte stream cut into lines, with a cap on a line's length."""

from __future__ import annotations

from watchd.protocol.wire import ErrorCode, ProtocolError


class LineTooLong(ProtocolError):
    """A line past the limit; `lines` holds the complete lines that came before it."""

    def __init__(self, limit: int, lines: list[bytes]) -> None:
        super().__init__(
            ErrorCode.LINE_TOO_LONG,
            f"line longer than {limit} bytes (daemon.max_line_bytes); closing the connection",
        )
        self.lines = lines


class LineFramer:
    """Splits a byte stream into lines, refusing any line longer than max_line_bytes."""

    __slots__ = ("_broken", "_limit", "_parts", "_size")

    def __init__(self, max_line_bytes: int) -> None:
        self._limit = max_line_bytes
        # The unfinished line as a list of chunks: joined once when its newline arrives, so a
        # line that trickles in byte by byte costs linear, not quadratic, copying.
        self._parts: list[bytes] = []
        self._size = 0
        self._broken = False

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished line held so far."""
        return self._size

    def feed(self, data: bytes) -> list[bytes]:
        """The lines completed by data, without "\\n" or a trailing "\\r"; raises LineTooLong.

        The limit counts the bytes before the newline. After LineTooLong the framer refuses all
        input: the connection is to be closed.
        """
        if self._broken:
            raise LineTooLong(self._limit, [])
        lines: list[bytes] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            piece = data[start:end]
            if self._parts:
                self._parts.append(piece)
                size = self._size + len(piece)
                line = b"".join(self._parts) if size <= self._limit else b""
                self._parts.clear()
                self._size = 0
            else:
                size = len(piece)
                line = piece
            if size > self._limit:
                self._broken = True
                raise LineTooLong(self._limit, lines)
            lines.append(line[:-1] if line.endswith(b"\r") else line)
            start = end + 1
        if start < len(data):
            rest = data[start:]
            self._size += len(rest)
            if self._size > self._limit:
                self._broken = True
                self._parts.clear()
                self._size = 0
                raise LineTooLong(self._limit, lines)
            self._parts.append(rest)
        return lines
