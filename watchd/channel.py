"""The framed channel between the daemon and its watcher process.

A SOCK_STREAM socketpair carries length-prefixed marshal frames both ways. marshal rather than
pickle or JSON: both ends are the same interpreter, the payloads are plain tuples of ints and
strings (surrogate-escaped names included), and it is the fastest serializer in the standard
library. The peer is our own child, so no untrusted input ever reaches marshal.loads.
"""

from __future__ import annotations

import enum
import marshal
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from watchd.reasons import LostReason, OverflowReason

_LEN = struct.Struct("<I")
_LEN_SIZE = _LEN.size

class Tag(enum.StrEnum):
    """The first element of every message on the wire: which record it is."""

    CONFIG = "config"
    STOP = "stop"
    HELLO = "hello"
    APPLIED = "applied"
    EVENTS = "ev"
    HEARTBEAT = "hb"
    OVERFLOW = "overflow"
    LOST = "lost"
    RESTORED = "restored"
    PROGRESS = "progress"
    SCAN = "scan"
    FILL = "fill"
    RESCAN = "rescan"
    CAUGHT = "caught"


# marshal takes no str subclass: the wire carries the tags' plain values.
_EVENTS = Tag.EVENTS.value

# One event as the watcher sends it: (mask, cookie, path, src_path or None). A plain tuple, not a
# record: one is built per event on the hot path, and marshal takes no NamedTuple.
Item = tuple[int, int, str, str | None]
# One read from the kernel: (wall-clock time, its items).
Read = tuple[float, list[Item]]
# The records of the paths a read named, for a watch with an index (watchd.records.Recorder):
# {path: record}; None for a watch without one.
Records = dict[str, int] | None


class Phase(enum.StrEnum):
    """Where a watch stands, as the watcher reports it (and status shows it)."""

    PENDING = "pending"  # its root is missing or cannot be watched yet
    ACTIVE = "active"
    DEGRADED = "degraded"  # some directories are not watched (a limit, or unreadable)


class Limit(enum.StrEnum):
    """The limit that leaves directories of a watch unwatched (watch_degraded's reason)."""

    MAX_DIRECTORIES = "max_directories"  # the watch's own budget
    MAX_USER_WATCHES = "max_user_watches"  # the kernel's


# -- daemon -> watcher ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Spec:
    """A watch as the watcher receives it.

    Events are reported under path; real_path (path with its links resolved when the
    configuration was loaded) is what is opened, following no symbolic link.
    """

    name: str
    path: str
    recursive: bool
    mask: int
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    real_path: str

    def wire(self) -> tuple[Any, ...]:
        return (self.name, self.path, self.recursive, self.mask, self.include, self.exclude,
                self.real_path)


@dataclass(frozen=True, slots=True)
class Configure:
    """The whole desired set of watches, each watch's max_directories, and the watches the
    daemon keeps an index of (watchd.resync): those are scanned when established. Of those,
    the ones in `fill` have no index yet: their first scan may come in parts (Fill), while
    events flow, instead of holding everything up (a Scan)."""

    generation: int
    specs: tuple[Spec, ...]
    budgets: dict[str, int | None]
    resync: tuple[str, ...] = ()
    fill: tuple[str, ...] = ()

    def wire(self) -> tuple[Any, ...]:
        return (Tag.CONFIG.value, self.generation, [s.wire() for s in self.specs], self.budgets,
                list(self.resync), list(self.fill))


@dataclass(frozen=True, slots=True)
class Stop:
    """Finish: close every watch and exit."""

    def wire(self) -> tuple[Any, ...]:
        return (Tag.STOP.value,)


@dataclass(frozen=True, slots=True)
class Rescan:
    """Scan this watch again and send the Scan (None in it when that fails): a resync's scan
    missed a directory that moved while it ran (watchd.resync), and a resync is announced."""

    watch: str

    def wire(self) -> tuple[Any, ...]:
        return (Tag.RESCAN.value, self.watch)


# -- watcher -> daemon ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Hello:
    """The watcher runs (its pid)."""

    pid: int

    def wire(self) -> tuple[Any, ...]:
        return (Tag.HELLO.value, self.pid)


@dataclass(frozen=True, slots=True)
class Applied:
    """Every watch of that configuration is established or pending."""

    generation: int

    def wire(self) -> tuple[Any, ...]:
        return (Tag.APPLIED.value, self.generation)


@dataclass(frozen=True, slots=True)
class Events:
    """Reads of one watch, oldest first, and each read's records (aligned with reads; see
    Records). The watcher frames them with events_frame instead.

    The records travel beside the event tuples, not in them: the fan-out serializes the tuples
    as they are and never looks at the records; only the index does (watchd.resync).
    """

    watch: str
    reads: list[Read]
    records: list[Records] | None = None  # None: no read has any

    def wire(self) -> tuple[Any, ...]:
        return (_EVENTS, self.watch, self.reads,
                [None] * len(self.reads) if self.records is None else self.records)


class WatchReport(NamedTuple):
    """One watch in a heartbeat. A NamedTuple: it goes on the wire as the plain tuple it is."""

    state: Phase
    directories: int
    unwatched: int
    problem: str | None  # why it is pending or degraded, for status and the log
    limit: Limit | None  # the limit a degraded watch reached, if that is why


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Every watch's state; sent every second, and before each APPLIED."""

    reports: dict[str, WatchReport]

    def wire(self) -> tuple[Any, ...]:
        return (Tag.HEARTBEAT.value, {
            name: (r.state.value, r.directories, r.unwatched, r.problem,
                   None if r.limit is None else r.limit.value)
            for name, r in self.reports.items()})


@dataclass(frozen=True, slots=True)
class Overflow:
    """Events of the watch were lost (`reason`: the kernel's queue or the watcher's own buffer
    overflowed, a file system mounted in it was unmounted, a limit left directories
    unwatched until now, or the watch failed); resync: a Scan of it follows."""

    watch: str
    resync: bool = False
    reason: OverflowReason = OverflowReason.KERNEL_QUEUE

    def wire(self) -> tuple[Any, ...]:
        if self.reason is OverflowReason.KERNEL_QUEUE:  # the common case, as before reasons
            return (Tag.OVERFLOW.value, self.watch, self.resync)
        return (Tag.OVERFLOW.value, self.watch, self.resync, self.reason.value)


# A scan (watchd.listing.AtRest): {directory: (its names joined by "/", its records packed)}.
AtRest = dict[str, tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Scan:
    """The watch's tree as scanned once its watches were in place (watchd.index), and how
    long that took; dirs None: a scan that an Overflow announced could not be made."""

    watch: str
    dirs: AtRest | None
    seconds: float

    def wire(self) -> tuple[Any, ...]:
        return (Tag.SCAN.value, self.watch, self.dirs, self.seconds)


@dataclass(frozen=True, slots=True)
class Caught:
    """The watcher has read, and sent, every event the kernel held for a watch when its last
    Scan was made: what came before the scan (replays of what it shows, and the coming of a
    directory it listed but could not enter) is all out. The resync's `resynced` notices wait
    for this (watchd.resync)."""

    watch: str

    def wire(self) -> tuple[Any, ...]:
        return (Tag.CAUGHT.value, self.watch)


@dataclass(frozen=True, slots=True)
class Fill:
    """A part of a watch's first scan, made while its events flow: whole directories, listed
    after the events sent before this part. `start`: the first part (what the index held is
    dropped); `done`: the last one (the index is complete)."""

    watch: str
    dirs: AtRest
    start: bool
    done: bool

    def wire(self) -> tuple[Any, ...]:
        return (Tag.FILL.value, self.watch, self.dirs, self.start, self.done)


@dataclass(frozen=True, slots=True)
class Lost:
    """The watch's root went away."""

    watch: str
    path: str
    reason: LostReason

    def wire(self) -> tuple[Any, ...]:
        return (Tag.LOST.value, self.watch, self.path, self.reason.value)


@dataclass(frozen=True, slots=True)
class Restored:
    """The watch's root is back and watched again."""

    watch: str
    path: str

    def wire(self) -> tuple[Any, ...]:
        return (Tag.RESTORED.value, self.watch, self.path)


@dataclass(frozen=True, slots=True)
class Progress:
    """A long scan of the watch has got this far."""

    watch: str
    directories: int

    def wire(self) -> tuple[Any, ...]:
        return (Tag.PROGRESS.value, self.watch, self.directories)


ToWatcher = Configure | Stop | Rescan
# What the watcher says besides events, decoded into records by from_watcher. Events are told
# apart by their tag and handed on as their fields (see watchd.supervisor).
Notice = (Hello | Applied | Heartbeat | Overflow | Lost | Restored | Progress | Scan | Caught
          | Fill)
FromWatcher = Events | Notice
Message = ToWatcher | FromWatcher


def _heartbeat(raw: tuple[Any, ...]) -> Heartbeat:
    return Heartbeat({name: WatchReport(Phase(s), d, u, p, None if lim is None else Limit(lim))
                      for name, (s, d, u, p, lim) in raw[1].items()})


_FROM_WATCHER: dict[str, Callable[[tuple[Any, ...]], Notice]] = {
    Tag.HELLO.value: lambda m: Hello(m[1]),
    Tag.APPLIED.value: lambda m: Applied(m[1]),
    Tag.HEARTBEAT.value: _heartbeat,
    # Without a reason: the kernel's queue (see Overflow.wire).
    Tag.OVERFLOW.value: lambda m: Overflow(m[1], bool(m[2]), OverflowReason(
        m[3] if len(m) > 3 else OverflowReason.KERNEL_QUEUE)),
    Tag.SCAN.value: lambda m: Scan(m[1], m[2], m[3]),
    Tag.CAUGHT.value: lambda m: Caught(m[1]),
    Tag.FILL.value: lambda m: Fill(m[1], m[2], bool(m[3]), bool(m[4])),
    Tag.LOST.value: lambda m: Lost(m[1], m[2], LostReason(m[3])),
    Tag.RESTORED.value: lambda m: Restored(m[1], m[2]),
    Tag.PROGRESS.value: lambda m: Progress(m[1], m[2]),
}
_TO_WATCHER: dict[str, Callable[[tuple[Any, ...]], ToWatcher]] = {
    Tag.CONFIG.value: lambda m: Configure(m[1], tuple(Spec(*s) for s in m[2]), m[3],
                                          tuple(m[4]), tuple(m[5])),
    Tag.STOP.value: lambda m: Stop(),
    Tag.RESCAN.value: lambda m: Rescan(m[1]),
}


def from_watcher(raw: tuple[Any, ...]) -> Notice | None:
    """The record a message from the watcher other than events stands for (events go straight
    to the broker, see supervisor); None for a tag we do not know."""
    decoder = _FROM_WATCHER.get(raw[0])
    return None if decoder is None else decoder(raw)


def to_watcher(raw: tuple[Any, ...]) -> ToWatcher | None:
    """The record a message from the daemon stands for; None for a tag we do not know."""
    decoder = _TO_WATCHER.get(raw[0])
    return None if decoder is None else decoder(raw)


# Events in one EVENTS message at most. The daemon can stop taking messages (all its clients are
# behind) only between them, so one must stay well inside a client's queue.
BATCH_MAX = 1024
# Events in a message merged from several (see next_message): enough to spread the cost of a
# publish and a write over hundreds of events, and small, because every subscriber that is
# behind queues a whole message after the daemon has decided to hold the watcher back.
MERGE_MAX = 256


def frame(message: Message) -> bytes:
    """One message as it goes on the channel."""
    return _frame_raw(message.wire())


def events_frame(watch: str, reads: list[Read], records: list[Records]) -> bytes:
    """An Events message as it goes on the channel, built without the record: the watcher sends
    one per read, and a record's constructor would cost as much as the rest of the framing."""
    return _frame_raw((_EVENTS, watch, reads, records))


def _frame_raw(wire: tuple[Any, ...]) -> bytes:
    body = marshal.dumps(wire)
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
    if message[0] != _EVENTS or not backlog or backlog[0][0] != _EVENTS:
        return message
    watch, reads = message[1], message[2]
    count = sum(len(items) for _, items in reads)
    merged: list[Any] | None = None
    records: list[Any] = []
    while backlog:
        following = backlog[0]
        if following[0] != _EVENTS or following[1] != watch:
            break
        more = sum(len(items) for _, items in following[2])
        if count + more > limit:
            break
        backlog.popleft()
        if merged is None:
            merged = list(reads)
            records = list(message[3])
        merged.extend(following[2])
        # Each read keeps its own records: they hold for the end of that read, not of the
        # merged message (a path a later read deletes must not come back).
        records.extend(following[3])
        count += more
    return message if merged is None else (_EVENTS, watch, merged, records)
