"""The framed channel between the daemon and its watcher process.

A SOCK_STREAM socketpair carries length-prefixed marshal frames both ways. marshal rather than
pickle or JSON: both ends are the same interpreter, the payloads are plain tuples of ints and
strings (surrogate-escaped names included), and it is the fastest serializer in the standard
library. The peer is our own child, so no untrusted input ever reaches marshal.loads.
"""

from __future__ import annotations

import marshal
import struct
from typing import Any

_LEN = struct.Struct("<I")
_LEN_SIZE = _LEN.size

# Message tags. Daemon -> watcher:
CONFIG = "config"  # (CONFIG, generation, [spec, ...])  the whole desired set of watches
STOP = "stop"  # (STOP,)
# Watcher -> daemon:
HELLO = "hello"  # (HELLO, pid)
APPLIED = "applied"  # (APPLIED, generation)  every watch of that config is established or pending
EVENTS = "ev"  # (EVENTS, watch, time, [(mask, cookie, path, src_path), ...])
HEARTBEAT = "hb"  # (HEARTBEAT, {watch: (state, directories, unwatched, limit_message)})
OVERFLOW = "overflow"  # (OVERFLOW, watch)  the kernel (or our own buffer) dropped events
LOST = "lost"  # (LOST, watch, path, reason)
RESTORED = "restored"  # (RESTORED, watch, path)
PROGRESS = "progress"  # (PROGRESS, watch, directories)  during a long scan


def frame(message: tuple[Any, ...]) -> bytes:
    """One message as it goes on the channel."""
    body = marshal.dumps(message)
    return _LEN.pack(len(body)) + body


class FrameReader:
    """Splits a byte stream into messages; tolerant of any chunking."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        """Add bytes read from the channel and return every complete message."""
        buf = self._buf
        buf += data
        out: list[tuple[Any, ...]] = []
        offset = 0
        end = len(buf)
        while end - offset >= _LEN_SIZE:
            (size,) = _LEN.unpack_from(buf, offset)
            start = offset + _LEN_SIZE
            if end - start < size:
                break
            with memoryview(buf) as view:
                out.append(marshal.loads(view[start : start + size]))  # noqa: S302 -- our child
            offset = start + size
        del buf[:offset]
        return out
