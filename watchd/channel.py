"""The framed channel between the daemon and its watcher process.

A SOCK_STREAM socketpair carries length-prefixed marshal frames both ways. marshal rather than
pickle or JSON: both ends are the same interpreter, the payloads are plain tuples of ints and
strings (surrogate-escaped names included), and it is the fastest serializer in the standard
library. The peer is our own child, so no untrusted input ever reaches marshal.loads.
"""

from __future__ import annotations

import marshal
import struct
from collections import deque
from typing import Any

_LEN = struct.Struct("<I")
_LEN_SIZE = _LEN.size

# Message tags. Daemon -> watcher:
# (CONFIG, generation, [spec, ...], {watch: max_directories}, [watch with resync, ...])
#   the whole desired set of watches
CONFIG = "config"
STOP = "stop"  # (STOP,)
# Watcher -> daemon:
HELLO = "hello"  # (HELLO, pid)
APPLIED = "applied"  # (APPLIED, generation)  every watch of that config is established or pending
# (EVENTS, watch, [(time, [(mask, cookie, path, src_path), ...]), ...]): reads, oldest first
EVENTS = "ev"
# (HEARTBEAT, {watch: (state, directories, unwatched, limit_message, limit)}), limit naming the
# limit a degraded watch reached: "max_directories" (its own budget) or "max_user_watches"
HEARTBEAT = "hb"
# (OVERFLOW, watch, resync)  the kernel (or our own buffer) dropped events; resync: a SCAN of
# the watch follows at once
OVERFLOW = "overflow"
# (SCAN, watch, {directory: {name: record}}, seconds)  the tree as scanned once its watches
# were in place (watchd.index), for a watch with resync: after a loss, or when established;
# None instead of the tree: a scan announced by OVERFLOW could not be made
SCAN = "scan"
LOST = "lost"  # (LOST, watch, path, reason)
RESTORED = "restored"  # (RESTORED, watch, path)
PROGRESS = "progress"  # (PROGRESS, watch, directories)  during a long scan


# Events in one EVENTS message at most. The daemon can stop taking messages (all its clients are
# behind) only between them, so one must stay well inside a client's queue.
BATCH_MAX = 1024
# Events in a message merged from several (see next_message): enough to spread the cost of a
# publish and a write over hundreds of events, and small, because every subscriber that is
# behind queues a whole message after the daemon has decided to hold the watcher back.
MERGE_MAX = 256


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


def next_message(backlog: deque[tuple[Any, ...]], limit: int = MERGE_MAX) -> tuple[Any, ...]:
    """Take the next message from a non-empty backlog.

    Consecutive EVENTS messages of one watch come out as one (up to `limit` events): a
    daemon that fell behind finds many small reads waiting, and handing them on together costs
    it one serialization pass and one write per client instead of one per read.
    """
    message = backlog.popleft()
    if message[0] != EVENTS or not backlog or backlog[0][0] != EVENTS:
        return message
    watch, reads = message[1], message[2]
    count = sum(len(items) for _, items in reads)
    merged: list[Any] | None = None
    while backlog:
        following = backlog[0]
        if following[0] != EVENTS or following[1] != watch:
            break
        more = sum(len(items) for _, items in following[2])
        if count + more > limit:
            break
        backlog.popleft()
        if merged is None:
            merged = list(reads)
        merged.extend(following[2])
        count += more
    return message if merged is None else (EVENTS, watch, merged)
