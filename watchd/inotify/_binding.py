"""A ctypes binding of inotify(7): one fd, watches, and fast parsing of the events read from it."""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import functools
import os
import select
import struct
import termios
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

from watchd.inotify.errors import error_for, proc_limit
from watchd.inotify.flags import IN_CLOEXEC, IN_NONBLOCK

# struct inotify_event {int wd; uint32_t mask; uint32_t cookie; uint32_t len; char name[len];}
_HEADER = struct.Struct("iIII")
HEADER_SIZE = _HEADER.size

# Never read less than this: a tiny read buffer turns one burst into hundreds of syscalls.
MIN_READ_SIZE = 64 * 1024

_FIONREAD_ARG = bytes(4)


class RawEvent(NamedTuple):
    """One kernel event as read from the fd.

    A NamedTuple rather than a dataclass because one is built per event on the hot path.
    `length` is the kernel's `len` field: the size of the NUL-padded name area (0 without a
    name); `name` is that area with the padding stripped (b"" when the kernel gave none).
    """

    wd: int
    mask: int
    cookie: int
    length: int
    name: bytes


# tuple.__new__ bound to RawEvent: builds one from a plain tuple in C, skipping the
# Python-level argument handling of NamedTuple.__new__.
_as_raw_event = functools.partial(tuple.__new__, RawEvent)


@dataclasses.dataclass(frozen=True, slots=True)
class InotifyLimits:
    """The per-user inotify limits of /proc/sys/fs/inotify (None where unreadable)."""

    max_user_watches: int | None
    max_user_instances: int | None
    max_queued_events: int | None


def read_limits() -> InotifyLimits:
    """Read the current inotify limits from /proc/sys/fs/inotify."""
    return InotifyLimits(
        max_user_watches=proc_limit("max_user_watches"),
        max_user_instances=proc_limit("max_user_instances"),
        max_queued_events=proc_limit("max_queued_events"),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Libc:
    init1: Callable[..., int]
    add_watch: Callable[..., int]
    rm_watch: Callable[..., int]


@functools.cache
def _libc() -> _Libc:
    # Loaded on first use, not at import, so importing watchd never touches the C library.
    lib = ctypes.CDLL(None, use_errno=True)
    init1 = lib.inotify_init1
    init1.argtypes = [ctypes.c_int]
    init1.restype = ctypes.c_int
    add = lib.inotify_add_watch
    add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    add.restype = ctypes.c_int
    rm = lib.inotify_rm_watch
    rm.argtypes = [ctypes.c_int, ctypes.c_int]
    rm.restype = ctypes.c_int
    return _Libc(init1, add, rm)


def _call(fn: Callable[..., int], *args: Any) -> int:
    """Call a libc function, retrying on EINTR; return its result or -errno on failure."""
    while True:
        ret = fn(*args)
        if ret != -1:
            return ret
        err = ctypes.get_errno()
        if err != errno.EINTR:
            return -err


# (wd, mask, cookie, length, name): a RawEvent's fields as a plain tuple, for the hot path.
RawTuple = tuple[int, int, int, int, bytes]


def parse_raw(buf: bytes | bytearray | memoryview) -> list[RawTuple]:
    """Split a buffer read from an inotify fd into plain (wd, mask, cookie, length, name) tuples.

    The daemon's watcher reads through this: a plain tuple costs one allocation where a
    NamedTuple costs two and a call, a third of the parsing time.
    """
    if not isinstance(buf, bytes):
        buf = bytes(buf)  # one copy up front so that every name slice below is a plain bytes
    events: list[RawTuple] = []
    append = events.append
    unpack_from = _HEADER.unpack_from
    end = len(buf)
    pos = 0
    while pos + 16 <= end:
        wd, mask, cookie, length = unpack_from(buf, pos)
        pos += 16
        if length:
            # A name holds no NUL, so stripping the padding is exact (and beats find+slice).
            name = buf[pos : pos + length].rstrip(b"\0")
            pos += length
        else:
            name = b""
        append((wd, mask, cookie, length, name))
    return events


def parse_events(buf: bytes | bytearray | memoryview) -> list[RawEvent]:
    """Split a buffer read from an inotify fd into RawEvents, in order."""
    return list(map(_as_raw_event, parse_raw(buf)))


class InotifyFd:
    """An inotify instance: add and remove watches, read and parse what is queued."""

    __slots__ = ("_epoll", "_fd")

    def __init__(self, flags: int = IN_CLOEXEC | IN_NONBLOCK) -> None:
        self._fd = -1
        self._epoll: select.epoll | None = None
        fd = _call(_libc().init1, int(flags))
        if fd < 0:
            raise error_for(-fd, None, "inotify_init1")
        self._fd = fd

    def fileno(self) -> int:
        """The inotify file descriptor (for select/epoll)."""
        if self._fd < 0:
            raise ValueError("inotify fd is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._fd < 0

    def add_watch(
        self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes], mask: int
    ) -> int:
        """Watch `path` for the events in `mask`; return its watch descriptor."""
        raw = os.fsencode(path)
        if b"\0" in raw:
            raise ValueError(f"cannot watch {os.fsdecode(raw)!r}: the path contains a NUL byte")
        wd = _call(_libc().add_watch, self.fileno(), raw, int(mask))
        if wd < 0:
            raise error_for(-wd, raw, "inotify_add_watch")
        return wd

    def add_watch_raw(self, path: bytes, mask: int) -> int:
        """add_watch for a path already encoded and free of NUL bytes: the wd, or -errno.

        For walks that add thousands of watches and handle each failure themselves.
        """
        return _call(_libc().add_watch, self.fileno(), path, mask)

    def rm_watch(self, wd: int) -> None:
        """Remove a watch; a watch that is already gone (EINVAL) is not an error."""
        ret = _call(_libc().rm_watch, self.fileno(), int(wd))
        if ret < 0 and ret != -errno.EINVAL:
            raise error_for(-ret, None, f"inotify_rm_watch(wd={wd})")

    def read_events(self) -> list[RawEvent]:
        """Read and parse every queued event in one read; [] when nothing is queued."""
        return list(map(_as_raw_event, self.read_raw()))

    def queued(self) -> int:
        """How many bytes of events the kernel holds for the next read (FIONREAD)."""
        return int.from_bytes(fcntl.ioctl(self.fileno(), termios.FIONREAD, _FIONREAD_ARG),
                              "little")

    def read_raw(self) -> list[RawTuple]:
        """read_events as plain tuples (see parse_raw). One read takes every event queued when
        it starts (watchd.watcher relies on it: see Watch.scan_sent)."""
        fd = self.fileno()
        queued = int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, _FIONREAD_ARG), "little")
        try:
            buf = os.read(fd, queued if queued > MIN_READ_SIZE else MIN_READ_SIZE)
        except BlockingIOError:
            return []
        return parse_raw(buf)

    def wait_readable(self, timeout: float | None) -> bool:
        """Block until events are queued or `timeout` seconds pass (None: forever)."""
        ep = self._epoll
        if ep is None:
            ep = select.epoll(1)
            ep.register(self.fileno(), select.EPOLLIN)
            self._epoll = ep
        return bool(ep.poll(-1 if timeout is None else timeout, 1))

    def close(self) -> None:
        """Close the fd (every watch goes with it); calling it again does nothing."""
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> InotifyFd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A safety net only: owners must close() explicitly, and are told when they did not.
        if getattr(self, "_fd", -1) >= 0:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
            self.close()

    def __repr__(self) -> str:
        return f"<InotifyFd fd={self._fd}>" if self._fd >= 0 else "<InotifyFd closed>"
