"""Event lines, the hot path: each event serialized once for every subscriber."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from operator import itemgetter
from typing import Final

from watchd.events import SYNTHETIC
from watchd.inotify.flags import (
    IN_ALL_EVENTS,
    IN_IGNORED,
    IN_ISDIR,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    Mask,
)

EVENT_HEAD: Final = b'{"type":"event","subscription":"'
# A batched subscription's frame: frame_head(sid) + frame_body(tails) + FRAME_END.
FRAME_HEAD: Final = b'{"type":"events","subscription":"'
FRAME_END: Final = b"]}\n"
# The most events in a frame unless daemon.max_batch says otherwise: past a few hundred a larger
# frame saves a client nothing measurable (docs/performance.md), and a frame of the longest
# paths stays within a client's line limit (16 MiB for watchd.client).
DEFAULT_MAX_BATCH: Final = 256
# The most daemon.max_batch may be: frames of typical events stay below a megabyte.
MAX_BATCH: Final = 4096

# The members an event object may have, in the order the daemon writes them. A subscription may
# ask for some of them only ("fields"); its events then carry those of them they have.
EVENT_MEMBERS: Final = (
    "seq", "time", "watch", "kind", "path", "is_dir", "mask", "synthetic", "cookie", "src_path",
)
# The members every event has ("synthetic" and "src_path" only some): a subscription's fields
# name at least one of them, so that no event of it is an empty object.
ALWAYS_MEMBERS: Final = frozenset(EVENT_MEMBERS) - {"synthetic", "src_path"}

# The bits named in an event's "mask": the kind bits and those the kernel adds to them,
# in ascending order (the order a Flag iterates its bits in).
_MASK_NAMES: Final = tuple(
    (int(bit), str(bit.name))
    for bit in Mask(IN_ALL_EVENTS | IN_UNMOUNT | IN_Q_OVERFLOW | IN_IGNORED | IN_ISDIR)
)
_KNOWN_BITS: Final = sum(bit for bit, _ in _MASK_NAMES)


def mask_names(mask: int) -> list[str]:
    """The IN_* names of the bits set in mask, in ascending bit order (unknown bits left out)."""
    return [name for bit, name in _MASK_NAMES if mask & bit]


def _mask_fragment(mask: int) -> str:
    """The JSON of the "is_dir" and "mask" members for one mask value."""
    is_dir = "true" if mask & IN_ISDIR else "false"
    if mask & SYNTHETIC:
        # Made up after a loss: no kernel bits to show.
        return f'"is_dir":{is_dir},"mask":[],"synthetic":true'
    names = ",".join(f'"{name}"' for name in mask_names(mask))
    return f'"is_dir":{is_dir},"mask":[{names}]'


# Cached event fragments: far more than watches times the masks a watch produces.
_FRAGMENTS_MAX: Final = 4096


# Decimals of an event's time: 10 µs. Unix times then have 15 significant digits (until the
# year 2286), the most a decimal-to-double parser converts on its exact fast path; a 16th digit
# (microseconds) cost CPython's json.loads 1,500 more instructions per event, 7% of what a Python
# client spends on an event of a frame (docs/performance.md). The time is when the watcher read
# the event, shared by the events of one read, and reads come at least 100 µs apart when
# events trickle: the 16th digit told a client nothing the event's real time was known to.
TIME_DECIMALS: Final = 5


def _time_json(time: float) -> str:
    return repr(round(float(time), TIME_DECIMALS))


class EventEncoder:
    """Serializes events once for every subscriber, caching what repeats.

    An event line is the same text around three values of its own (seq, path, cookie). What
    depends on the watch and the mask (kind, is_dir, mask) is formatted once per pair and kept;
    the time once per watcher read, which its events share (formatting the float alone took
    longer than all the rest together); and the two joined once per read and mask, so that an
    event costs one small f-string.
    """

    __slots__ = ("_fragments", "_read", "_time", "_time_text", "_watch")

    def __init__(self) -> None:
        # (watch, mask) -> (text from "watch" to the path's opening, text from after the path
        # to the cookie's value)
        self._fragments: dict[tuple[str, int], tuple[str, str]] = {}
        self._time = math.nan  # equal to no time: the first event formats its own
        self._time_text = ""
        self._watch = ""
        # mask -> the fragments of the current read's watch, the first with the time before it
        self._read: dict[int, tuple[str, str]] = {}

    def tail(  # noqa: PLR0917 -- positional on the hot path: one call per event
        self,
        seq: int,
        time: float,
        watch: str,
        kind: str,
        path: str,
        mask: int,
        cookie: int,
        src_path: str | None,
    ) -> bytes:
        """An event line after its subscription's part: event_prefix(sid) + this is the whole
        line. It begins with '"seq":', so that the objects of a frame are spliced from the lines
        with one replace of a single byte (frame_body)."""
        if time != self._time or watch != self._watch:
            if time != self._time:
                self._time = time
                self._time_text = _time_json(time)
            self._watch = watch
            self._read = {}
        # Only the named bits matter, which also bounds the caches.
        mask &= _KNOWN_BITS | SYNTHETIC
        parts = self._read.get(mask)
        if parts is None:
            before, after = self._fragment(watch, kind, mask)
            parts = self._read[mask] = (f',"time":{self._time_text}{before}', after)
        before, after = parts
        if src_path is None:
            line = f'"seq":{seq}{before}{encode_basestring_ascii(path)}{after}{cookie}}}\n'
            return line.encode("ascii")
        return (
            f'"seq":{seq}{before}{encode_basestring_ascii(path)}{after}{cookie},'
            f'"src_path":{encode_basestring_ascii(src_path)}}}\n'
        ).encode("ascii")

    def _fragment(self, watch: str, kind: str, mask: int) -> tuple[str, str]:
        parts = self._fragments.get((watch, mask))
        if parts is None:
            if len(self._fragments) >= _FRAGMENTS_MAX:
                self._fragments.clear()  # watches renamed by many reloads: start afresh
            parts = self._fragments[watch, mask] = (
                f',"watch":{encode_basestring_ascii(watch)},"kind":"{kind}","path":',
                f',{_mask_fragment(mask)},"cookie":',
            )
        return parts


# Where each member after "seq" begins in a tail, with the member's place in EVENT_MEMBERS.
# A raw '":' occurs only after a member's name: inside an encoded string every '"' is escaped,
# and a string's closing quote is followed by ',', '}' or ']' (the names in "mask"). So each
# mark occurs once, where its member begins.
_MARKS: Final = tuple(
    (place, b',"' + name.encode("ascii") + b'":')
    for place, name in enumerate(EVENT_MEMBERS) if place
)


def members(tail: bytes) -> list[bytes]:
    """An event's tail (EventEncoder.tail) cut into its members, each '"name":value' exactly as
    written, at its place in EVENT_MEMBERS (b"" for one the event does not have): one search per
    member name, nothing decoded."""
    found = [b""] * len(EVENT_MEMBERS)
    place, start = 0, 0
    for next_place, mark in _MARKS:
        at = tail.find(mark, start)
        if at >= 0:
            found[place] = tail[start:at]
            place, start = next_place, at + 1
    found[place] = tail[start:-2]  # up to the object's '}' and the newline
    return found


# eq=False: compared and hashed by identity, cheap where each event's shapes are looked up; the
# broker keeps one per distinct set of names (see subscription.FilterCache).
@dataclass(frozen=True, slots=True, eq=False)
class Fields:
    """The event members a subscription asked for, in the order events have them; never all of
    them, and always one that every event has (so that no event of it is an empty object: a
    line's subscription part ends with a comma)."""

    names: tuple[str, ...]
    # The members' places, picked from members() in C (see shaped).
    pick: Callable[[list[bytes]], tuple[bytes, ...]] = field(compare=False, repr=False)

    @classmethod
    def of(cls, wanted: Iterable[str]) -> Fields:
        chosen = set(wanted)
        names = tuple(name for name in EVENT_MEMBERS if name in chosen)
        places = [EVENT_MEMBERS.index(name) for name in names]
        picker = itemgetter(*places, places[0])  # two at least: always a tuple
        return cls(names, lambda parts: picker(parts)[:-1])


def shaped(parts: list[bytes], fields: Fields) -> bytes:
    """The tail of an event cut into parts (members()) with only the members in fields that it
    has."""
    return b",".join(filter(None, fields.pick(parts))) + b"}\n"


def project(tail: bytes, fields: Fields) -> bytes:
    """An event's tail with only the members in fields (see shaped)."""
    return shaped(members(tail), fields)


class Shapes:
    """The projections of one publish's events: each event cut once, and joined once for each
    set of fields asked for, however many filters (and subscriptions) ask for the same."""

    __slots__ = ("_cut", "_joined")

    def __init__(self) -> None:
        self._cut: dict[int, list[bytes]] = {}  # seq -> members
        self._joined: dict[tuple[int, Fields], bytes] = {}

    def of(self, fields: Fields, seq: int, tail: bytes) -> bytes:
        """The tail of event seq with only the members in fields."""
        key = (seq, fields)
        out = self._joined.get(key)
        if out is None:
            parts = self._cut.get(seq)
            if parts is None:
                parts = self._cut[seq] = members(tail)
            out = self._joined[key] = shaped(parts, fields)
        return out


def event_prefix(sid: str) -> bytes:
    """What an event line of subscription sid begins with, before EventEncoder.tail."""
    return EVENT_HEAD + sid.encode("ascii") + b'",'


def frame_head(sid: str) -> bytes:
    """What a frame of subscription sid begins with, up to its first event's first member."""
    return FRAME_HEAD + sid.encode("ascii") + b'","events":[{'


def frame_body(tails: list[bytes]) -> bytes:
    """The events of a frame from their line tails (EventEncoder.tail), without re-encoding.

    A tail is '"seq":...}' and a newline. A raw newline ends a tail and nothing else does
    (JSON escapes control characters inside strings), so one replace of that single byte (a
    fast path of bytes.replace, several times faster than a longer pattern) turns the joined
    tails into the objects of the "events" list: frame_head(sid) + this + FRAME_END is the
    frame.
    """
    if len(tails) == 1:
        return tails[0][:-1]  # most reads are one event
    return b"".join(tails).replace(b"\n", b",{")[:-2]


def bodies(tails: list[bytes], max_batch: int) -> list[bytes]:
    """The bodies of the frames that carry tails, at most max_batch events each."""
    if len(tails) <= max_batch:
        return [frame_body(tails)]
    return [frame_body(tails[start : start + max_batch])
            for start in range(0, len(tails), max_batch)]


class Run:
    """The events one publish queues for the batched subscriptions of one filter that are
    behind: their tails, and the bodies of their frames, made by the first connection that
    drains the run and written as they are by every other (the same bytes, not a join and a
    replace per connection).

    A replay fills a run of its own while it queues it; nothing is framed before the run
    leaves a queue, and nothing is added to it after.
    """

    __slots__ = ("_bodies", "_max_batch", "tails")

    def __init__(self, tails: list[bytes]) -> None:
        self.tails = tails
        self._bodies: list[bytes] = []
        self._max_batch = 0  # of _bodies; 0: none made yet

    def bodies(self, max_batch: int) -> list[bytes]:
        """The bodies of its frames; a reload that changed daemon.max_batch makes them anew."""
        if self._max_batch != max_batch:
            self._bodies = bodies(self.tails, max_batch)
            self._max_batch = max_batch
        return self._bodies


def frames(head: bytes, tails: list[bytes], max_batch: int) -> list[bytes]:
    """The chunks of the frames that carry tails, at most max_batch events each."""
    if len(tails) <= max_batch:
        return [head, frame_body(tails), FRAME_END]
    chunks: list[bytes] = []
    for body in bodies(tails, max_batch):
        chunks += (head, body, FRAME_END)
    return chunks
