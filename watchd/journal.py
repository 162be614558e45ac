"""The replay journal on disk: the history's events and markers, so that `since` works across a
restart of the daemon.

Layout: a directory of segment files, each named by the first seq it may hold (20 digits, so
that names sort as seqs do) and starting with MAGIC. A segment is a run of records:

    u32 length of the body | u32 crc32 of kind and body | u8 kind | body

    kind E  the events of one batch: their lines as sent after the subscription's part
            (protocol.event_prefix: each the members of a JSON object from "seq" on, its
            closing brace and a newline), in seq order, with consecutive seqs
    kind M  a marker (an overflow or a resync's end), as a JSON object

One record per batch, written with one writev before the batch goes to any client (see
History.recorder), so that a SIGKILL at any moment leaves on disk every seq a client may have
seen: the page cache keeps what was written when the process dies. Only a crash of the whole
machine can lose the newest records (those after the last fsync; see watchd.state for what the
daemon does then). A record cut short by a crash during its write is the end of the journal.

Bounded: a segment is closed once it holds a quarter of journal_max_bytes or of the history's
size, and the oldest segments are deleted once the rest holds journal_max_bytes less a segment
or more, or once the newer segments alone hold replay_buffer events.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from watchd.errors import WatchdError
from watchd.events import KIND_BITS, Kind
from watchd.replay import Held, Marker

log = logging.getLogger("watchd")

MAGIC = b"WDJRNL1\n"
_HEAD = struct.Struct("<IIB")
KIND_EVENTS = ord("E")
KIND_MARKER = ord("M")
# The checksum covers the kind byte, then the body: the kind's part computed once.
_KIND_CRC = {kind: zlib.crc32(bytes((kind,))) for kind in (KIND_EVENTS, KIND_MARKER)}
SUFFIX = ".seg"
# A record longer than this is garbage read as a length, not a batch (a batch holds at most a
# few thousand lines of at most a few kB).
MAX_RECORD = 64 << 20
_TAIL_HEAD = b"{"  # an event's tail (EventEncoder.tail), behind this, is a whole JSON object


class StateError(WatchdError):
    """A file of the durable state that cannot be used (the journal's, or another of
    watchd.state's): `path` names it, the message says what is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a journal holds: events in seq order, markers, and the last seq it knew of."""

    entries: list[Held]
    markers: list[Marker]
    last_seq: int


@dataclass(slots=True)
class _Segment:
    first: int  # the first seq it may hold
    path: str
    size: int
    events: int = 0


def segment_name(first: int) -> str:
    return f"{first:020d}{SUFFIX}"


def parse_tail(tail: bytes) -> dict[str, Any]:
    """An event's fields from its line after the subscription's part (protocol.event_prefix)."""
    value = json.loads(_TAIL_HEAD + tail)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _held(tail: bytes) -> Held:
    event = parse_tail(tail)
    seq, watch, path = event["seq"], event["watch"], event["path"]
    if type(seq) is not int or not isinstance(watch, str) or not isinstance(path, str):
        raise ValueError("an event without its seq, watch or path")
    return (seq, watch, KIND_BITS[Kind(event["kind"])], path, tail)


def _marker(body: bytes) -> Marker:
    """A marker from its record; ValueError for one whose fields are not of their types (a
    checksum says the bytes are as written, not that what wrote them was right)."""
    m = json.loads(body)
    if not isinstance(m, dict):
        raise ValueError("a marker that is not a JSON object")
    seq, watch, reason, resync = m["seq"], m["watch"], m["reason"], m["resync"]
    changes, duration = m["changes"], m["duration_ms"]
    if (type(seq) is not int or seq < 0 or not isinstance(reason, str)
            or (watch is not None and not isinstance(watch, str))
            or not isinstance(resync, list) or not all(isinstance(n, str) for n in resync)
            or type(changes) is not int
            or type(duration) not in (int, float)):
        raise ValueError("a marker whose fields are not of their types")
    if changes >= 0 and watch is None:
        raise ValueError("a resynced marker without its watch")
    return Marker(seq, watch, reason, frozenset(resync), changes, float(duration))


def marker_body(marker: Marker) -> bytes:
    return json.dumps({"seq": marker.seq, "watch": marker.watch, "reason": marker.reason,
                       "resync": sorted(marker.resync), "changes": marker.changes,
                       "duration_ms": marker.duration_ms}, separators=(",", ":")).encode()


def _records(data: bytes, path: str) -> tuple[list[tuple[int, bytes]], int, bool]:
    """The whole records of a segment's bytes, where the last whole one ends, and whether
    what follows it (if anything) can be a write cut short: a record that runs past the end
    of the file, or whose checksum fails and that ends where the file does. Anything else
    after it is damage."""
    if not data.startswith(MAGIC):
        raise StateError(path, "not a journal segment of this version (wrong header)")
    out: list[tuple[int, bytes]] = []
    at = len(MAGIC)
    while at < len(data):
        if at + _HEAD.size > len(data):
            return out, at, True
        length, crc, kind = _HEAD.unpack_from(data, at)
        end = at + _HEAD.size + length
        if length > MAX_RECORD:
            return out, at, False
        if end > len(data):
            return out, at, True
        body = data[at + _HEAD.size : end]
        if zlib.crc32(body, _KIND_CRC.get(kind, zlib.crc32(bytes((kind,))))) != crc:
            return out, at, end == len(data)
        out.append((kind, body))
        at = end
    return out, at, True


def _segments(directory: str) -> list[_Segment]:
    found = []
    for name in os.listdir(directory):
        if name.endswith(SUFFIX) and name[: -len(SUFFIX)].isdigit():
            path = os.path.join(directory, name)
            found.append(_Segment(int(name[: -len(SUFFIX)]), path, os.path.getsize(path)))
    return sorted(found, key=lambda s: s.first)


def load(directory: str) -> Loaded:
    """Read the journal of a previous run; raises StateError for anything but a cut-short
    last record (the write a crash interrupted), which is cut off the file."""
    segments = _segments(directory)
    entries: list[Held] = []
    markers: list[Marker] = []
    last = segments[0].first - 1 if segments else 0
    for i, seg in enumerate(segments):
        if seg.first != last + 1:
            raise StateError(seg.path, f"starts at seq {seg.first}, expected {last + 1}")
        with open(seg.path, "rb") as f:
            data = f.read()
        if i == len(segments) - 1 and len(data) < len(MAGIC) and MAGIC.startswith(data):
            # Created, and the crash came before its header was written: an empty segment.
            with open(seg.path, "wb") as f:
                f.write(MAGIC)
            data = MAGIC
        records, end, torn = _records(data, seg.path)
        if end != len(data):
            if i != len(segments) - 1 or not torn:
                raise StateError(seg.path, f"damaged record at byte {end}")
            log.warning("journal %s: a record cut short at byte %d (a crash during its write); "
                        "it is dropped", seg.path, end)
            os.truncate(seg.path, end)
        for kind, body in records:
            try:
                if kind == KIND_EVENTS:
                    batch = [_held(line + b"\n") for line in body.split(b"\n")[:-1]]
                    if not batch or batch[0][0] != last + 1 or batch[-1][0] != last + len(batch):
                        raise ValueError(f"events out of sequence after seq {last}")
                    entries.extend(batch)
                    last = batch[-1][0]
                elif kind == KIND_MARKER:
                    markers.append(_marker(body))
                else:
                    raise ValueError(f"unknown record kind {kind}")
            except (ValueError, KeyError, TypeError) as e:
                raise StateError(seg.path, f"unreadable record: {e}") from e
    return Loaded(entries, markers, last)


class Journal:
    """The journal being written: History's recorder (see watchd.replay.Recorder).

    A write that fails (a full disk, an I/O error) is reported once through on_error, after
    which the journal records nothing more; the caller decides what that means.
    """

    def __init__(self, directory: str, *, max_bytes: int, retain: Callable[[], int],
                 on_error: Callable[[str, OSError], None],
                 on_rotate: Callable[[], None]) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.retain = retain  # events the history holds (daemon.replay_buffer, which may change)
        self.on_error = on_error
        self.on_rotate = on_rotate  # a segment was closed: a snapshot of the indexes is due
        self.segments = _segments(directory)
        self.fd = -1
        self.failed = False
        self.dirty = False  # written since the last sync
        self.last_seq = 0

    def open(self, last_seq: int) -> None:
        """Append from now on, after `last_seq` (the journal's last as loaded); OSError if the
        directory cannot be written."""
        self.last_seq = last_seq
        if self.segments and self.segments[-1].first <= last_seq + 1:
            seg = self.segments[-1]
            self.fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        else:
            self._new_segment()

    @property
    def size(self) -> int:
        """The journal's size on disk."""
        return sum(seg.size for seg in self.segments)

    def events(self, entries: list[Held]) -> None:
        if self.failed:
            return
        body = b"".join([entry[4] for entry in entries])
        self._write(KIND_EVENTS, body, len(entries))
        self.last_seq = entries[-1][0]

    def marker(self, marker: Marker) -> None:
        if not self.failed:
            self._write(KIND_MARKER, marker_body(marker), 0)

    def _write(self, kind: int, body: bytes, events: int) -> None:
        head = _HEAD.pack(len(body), zlib.crc32(body, _KIND_CRC[kind]), kind)
        size = len(head) + len(body)
        seg = self.segments[-1]
        try:
            if seg.size > len(MAGIC) and (seg.size + size > self.max_bytes // 4
                                          or seg.events >= max(self.retain() // 4, 1)):
                self._rotate()
                seg = self.segments[-1]
            written = os.writev(self.fd, [head, body])
            if written != size:
                raise OSError(28, "No space left on device (a short write)")
        except OSError as e:
            self.fail(os.path.join(self.directory, os.path.basename(seg.path)), e)
            return
        seg.size += size
        seg.events += events
        self.dirty = True

    def _rotate(self) -> None:
        os.close(self.fd)
        self.fd = -1
        self._new_segment()
        self._prune()
        self.on_rotate()

    def _new_segment(self) -> None:
        path = os.path.join(self.directory, segment_name(self.last_seq + 1))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        try:
            if os.write(fd, MAGIC) != len(MAGIC):
                raise OSError(28, "No space left on device (a short write)")
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        self.segments.append(_Segment(self.last_seq + 1, path, len(MAGIC)))

    def _prune(self) -> None:
        """Delete the oldest segments that the bounds no longer allow."""
        floor = self.last_seq + 1 - self.retain()  # the oldest seq the history still holds
        limit = self.max_bytes - self.max_bytes // 4
        while len(self.segments) > 1 and (self.size > limit or self.segments[1].first <= floor):
            os.unlink(self.segments.pop(0).path)

    def sync_fd(self) -> int | None:
        """A duplicate of the current segment's descriptor for an fsync off the loop (the
        caller closes it), or None when nothing was written since the last."""
        if self.failed or self.fd < 0 or not self.dirty:
            return None
        self.dirty = False
        return os.dup(self.fd)

    def fail(self, what: str, error: OSError) -> None:
        """Stop recording (once), and say why through on_error."""
        if self.failed:
            return
        self.failed = True
        self.close()
        self.on_error(what, error)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
