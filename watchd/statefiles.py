"""The files of the durable state (watchd.state): written whole and atomically, and the
stored indexes' format.

An index file: INDEX_MAGIC, then the crc32 and the length of the rest, then a marshal of
(watch name, what the watch was, seq, {directory: {name: record}}).
"""

from __future__ import annotations

import contextlib
import marshal
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from watchd.journal import StateError
from watchd.listing import Dirs, Index, thawed

META = "state.json"
JOURNAL = "journal"
INDEX = "index"
INDEX_MAGIC = b"WDINDEX1"
INDEX_SUFFIX = ".idx"
_INDEX_HEAD = struct.Struct("<IQ")  # crc32 and length of what follows


@dataclass(frozen=True, slots=True)
class StoredIndex:
    """A watch's index as a previous run stored it."""

    spec: str  # what the watch was (watchd.restore.index_spec): another watch is not compared
    seq: int  # the last seq published when it was taken
    dirs: Dirs


Replace = Callable[[str, str], None]  # (tmp, path): puts a written file in its place


def write_atomic(path: str, data: bytes, replace: Replace = os.replace) -> None:
    """Replace a file with data so that a crash leaves the old one or the new one, whole."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    replace(tmp, path)
    dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def index_file(directory: str, name: str) -> str:
    # Hex: a watch's name may be "." or "..".
    return os.path.join(directory, INDEX, name.encode().hex() + INDEX_SUFFIX)


def encode_index(name: str, spec: str, seq: int, dirs: Index) -> bytes:
    # As the index holds it: directories at rest stay so (watchd.listing.freeze), about half
    # the bytes of a dict each.
    body = marshal.dumps((name, spec, seq, dirs))
    return INDEX_MAGIC + _INDEX_HEAD.pack(zlib.crc32(body), len(body)) + body


def decode_index(data: bytes, path: str) -> tuple[str, StoredIndex]:
    """(watch name, index) from a file's bytes; StateError when it is not one."""
    head = len(INDEX_MAGIC) + _INDEX_HEAD.size
    if not data.startswith(INDEX_MAGIC) or len(data) < head:
        raise StateError(path, "not an index of this version (wrong header)")
    crc, length = _INDEX_HEAD.unpack_from(data, len(INDEX_MAGIC))
    body = data[head:]
    if len(body) != length or zlib.crc32(body) != crc:
        raise StateError(path, "damaged (its length or checksum does not match)")
    try:
        # Safe here: the file is in a directory of mode 0700 of the daemon's own user, and its
        # checksum matched: only the daemon (or root) wrote it.
        name, spec, seq, dirs = marshal.loads(body)  # noqa: S302
    except (ValueError, EOFError, TypeError) as e:
        raise StateError(path, f"unreadable: {e}") from e
    if not (isinstance(name, str) and isinstance(spec, str) and type(seq) is int
            and isinstance(dirs, dict) and all(type(v) is dict or _at_rest(v)
                                               for v in dirs.values())):
        raise StateError(path, "unreadable: not an index")
    try:
        return name, StoredIndex(spec, seq, thawed(dirs))
    except (ValueError, TypeError) as e:  # names and records that do not pair up
        raise StateError(path, f"unreadable: {e}") from e


def _at_rest(value: object) -> bool:
    """Whether a stored directory is one at rest: (names, records)."""
    return (type(value) is tuple and len(value) == 2 and type(value[0]) is str
            and type(value[1]) is bytes)


def directory_bytes(path: str) -> int:
    """The size of the files below path."""
    total = 0
    for parent, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


# The lock file's content (it is otherwise empty): written by a run that gave its state up
# and could not remove state.json (State.fail), one line per file it left. The lock is open for
# writing while a daemon runs, so this write needs neither a writable directory nor state.json
# itself; a start that finds it does not resume the state (State.open).
_GIVEN_UP = b"given up, left: "


def note_given_up(fd: int, paths: Iterable[str]) -> None:
    """Note in the open lock file that the state was given up, leaving these files."""
    data = b"".join(_GIVEN_UP + os.fsencode(path) + b"\n" for path in paths)
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def given_up(fd: int) -> list[str]:
    """The files that a run which gave the state up noted as left (none: it did not)."""
    data = os.pread(fd, 1 << 16, 0)
    return [os.fsdecode(line[len(_GIVEN_UP):]) for line in data.splitlines()
            if line.startswith(_GIVEN_UP)]


def fsync_close(fd: int) -> OSError | None:
    """fsync a descriptor and close it (in a thread); the error, if any."""
    try:
        os.fsync(fd)
    except OSError as e:
        return e
    finally:
        os.close(fd)
    return None


class Removals:
    """Files removed on the event loop while a thread may be writing them: such a write, of
    bytes taken before the removal, must not put the file back. Each write's rename and each
    removal hold the lock, so one of them is last: the removal, or a rename that it undoes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._removed: set[str] = set()

    def begin(self) -> None:
        """A new write starts, of bytes taken after every removal so far."""
        with self._lock:
            self._removed.clear()

    def remove(self, path: str) -> None:
        """Remove a file now, and keep the write under way from bringing it back."""
        with self._lock:
            self._removed.add(path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def replace(self, tmp: str, path: str) -> None:
        """os.replace, unless path was removed since the write began (then tmp goes)."""
        with self._lock:
            if path not in self._removed:
                os.replace(tmp, path)
                return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_all(blobs: list[tuple[str, bytes | None]],
              replace: Replace = os.replace) -> list[tuple[str, OSError]]:
    """Write each file atomically (None: remove it); the errors, by file."""
    errors = []
    for path, data in blobs:
        try:
            if data is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            else:
                write_atomic(path, data, replace)
        except OSError as e:
            errors.append((path, e))
    return errors
