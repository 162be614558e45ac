"""The ctypes inotify binding: flags, parsing, watches and errors, on real inotify."""

from __future__ import annotations

import errno
import fcntl
import os
import pathlib
import pickle
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

import watchd.inotify.flags as flags
from tests.harness import read_until, wait_for
from tests.inotify.isolation import run_isolated
from watchd.errors import WatchdError
from watchd.inotify import (
    IN_ACCESS,
    IN_ALL_EVENTS,
    IN_ATTRIB,
    IN_CLOEXEC,
    IN_CLOSE,
    IN_CLOSE_NOWRITE,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_DONT_FOLLOW,
    IN_EXCL_UNLINK,
    IN_IGNORED,
    IN_ISDIR,
    IN_MASK_ADD,
    IN_MASK_CREATE,
    IN_MODIFY,
    IN_MOVE,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_NONBLOCK,
    IN_ONESHOT,
    IN_ONLYDIR,
    IN_OPEN,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    InotifyError,
    InotifyFd,
    InotifyLimits,
    InstanceLimitError,
    Mask,
    NotADirectoryPathError,
    PathNotFoundError,
    PermissionDeniedError,
    RawEvent,
    WatchLimitError,
    _binding,
    error_for,
    parse_events,
    read_limits,
)

HEADER = struct.Struct("iIII")

# The values of <sys/inotify.h> (and O_CLOEXEC/O_NONBLOCK on Linux x86/arm).
HEADER_VALUES = {
    "IN_ACCESS": 0x1,
    "IN_MODIFY": 0x2,
    "IN_ATTRIB": 0x4,
    "IN_CLOSE_WRITE": 0x8,
    "IN_CLOSE_NOWRITE": 0x10,
    "IN_OPEN": 0x20,
    "IN_MOVED_FROM": 0x40,
    "IN_MOVED_TO": 0x80,
    "IN_CREATE": 0x100,
    "IN_DELETE": 0x200,
    "IN_DELETE_SELF": 0x400,
    "IN_MOVE_SELF": 0x800,
    "IN_UNMOUNT": 0x2000,
    "IN_Q_OVERFLOW": 0x4000,
    "IN_IGNORED": 0x8000,
    "IN_ONLYDIR": 0x01000000,
    "IN_DONT_FOLLOW": 0x02000000,
    "IN_EXCL_UNLINK": 0x04000000,
    "IN_MASK_CREATE": 0x10000000,
    "IN_MASK_ADD": 0x20000000,
    "IN_ISDIR": 0x40000000,
    "IN_ONESHOT": 0x80000000,
    "IN_CLOSE": 0x18,
    "IN_MOVE": 0xC0,
    "IN_ALL_EVENTS": 0xFFF,
    "IN_CLOEXEC": os.O_CLOEXEC,
    "IN_NONBLOCK": os.O_NONBLOCK,
}


def pack(wd: int, mask: int, cookie: int, name: bytes, pad_to: int = 16) -> bytes:
    """One kernel event record, NUL-padded the way the kernel pads names."""
    if not name:
        return HEADER.pack(wd, mask, cookie, 0)
    length = (len(name) + 1 + pad_to - 1) // pad_to * pad_to
    return HEADER.pack(wd, mask, cookie, length) + name.ljust(length, b"\0")


@pytest.fixture
def ino() -> object:
    with InotifyFd() as fd:
        yield fd


# --- flags -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), sorted(HEADER_VALUES.items()))
def test_constant_values(name: str, value: int) -> None:
    assert getattr(flags, name) == value
    assert type(getattr(flags, name)) is int
    assert Mask[name] == value
    assert isinstance(Mask[name], Mask)


def test_mask_is_an_intflag_that_prints_its_bits() -> None:
    combined = Mask.IN_CREATE | Mask.IN_ISDIR
    assert isinstance(combined, int)
    assert combined == 0x40000100
    assert Mask.IN_CREATE in combined
    assert Mask(0x40000100).name == "IN_CREATE|IN_ISDIR"
    # IN_NONBLOCK shares its value with IN_MOVE_SELF; masks must still print as an event.
    assert Mask(0x800).name == "IN_MOVE_SELF"


def test_combined_constants_are_unions_of_their_parts() -> None:
    assert IN_CLOSE == IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
    assert IN_MOVE == IN_MOVED_FROM | IN_MOVED_TO
    parts = (
        IN_ACCESS, IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_CLOSE_NOWRITE, IN_OPEN,
        IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF,
    )  # fmt: skip
    union = 0
    for bit in parts:
        assert bin(bit).count("1") == 1
        assert not union & bit
        union |= bit
    assert union == IN_ALL_EVENTS
    others = (IN_UNMOUNT, IN_Q_OVERFLOW, IN_IGNORED, IN_ONLYDIR, IN_DONT_FOLLOW,
              IN_EXCL_UNLINK, IN_MASK_CREATE, IN_MASK_ADD, IN_ISDIR, IN_ONESHOT)  # fmt: skip
    for bit in others:
        assert not bit & IN_ALL_EVENTS
    assert IN_CLOEXEC | IN_NONBLOCK == os.O_CLOEXEC | os.O_NONBLOCK


# --- parsing ---------------------------------------------------------------------------


def test_parse_events_splits_a_packed_buffer() -> None:
    buf = (
        pack(1, IN_CREATE, 0, b"a")
        + pack(1, IN_CREATE | IN_ISDIR, 0, b"sixteen-chars-xx")
        + pack(2, IN_DELETE_SELF, 0, b"")
        + pack(3, IN_MOVED_FROM, 77, b"caf\xe9")
        + pack(-1, IN_Q_OVERFLOW, 0, b"")
    )
    assert parse_events(buf) == [
        RawEvent(1, IN_CREATE, 0, 16, b"a"),
        RawEvent(1, IN_CREATE | IN_ISDIR, 0, 32, b"sixteen-chars-xx"),
        RawEvent(2, IN_DELETE_SELF, 0, 0, b""),
        RawEvent(3, IN_MOVED_FROM, 77, 16, b"caf\xe9"),
        RawEvent(-1, IN_Q_OVERFLOW, 0, 0, b""),
    ]


def test_parse_events_fields_and_types() -> None:
    (event,) = parse_events(pack(5, IN_MOVED_TO, 0xFFFFFFFF, b"x"))
    assert (event.wd, event.mask, event.cookie, event.length, event.name) == (
        5, IN_MOVED_TO, 0xFFFFFFFF, 16, b"x",
    )  # fmt: skip
    assert type(event.name) is bytes


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_parse_events_accepts_any_buffer(kind: type) -> None:
    raw = pack(1, IN_CREATE, 0, b"name") + pack(1, IN_DELETE, 0, b"name")
    events = parse_events(kind(raw))
    assert [e.name for e in events] == [b"name", b"name"]
    assert all(type(e.name) is bytes for e in events)


def test_parse_events_of_nothing_is_empty() -> None:
    assert parse_events(b"") == []


def test_parse_events_takes_a_name_filling_its_whole_area() -> None:
    raw = HEADER.pack(1, IN_CREATE, 0, 8) + b"abcdefgh" + pack(1, IN_DELETE, 0, b"z")
    assert parse_events(raw) == [
        RawEvent(1, IN_CREATE, 0, 8, b"abcdefgh"),
        RawEvent(1, IN_DELETE, 0, 16, b"z"),
    ]


names = st.binary(max_size=255).map(lambda b: b.replace(b"\0", b"_").replace(b"/", b"_"))
records = st.tuples(
    st.integers(-1, 2**31 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    names,
    st.sampled_from([1, 4, 16]),
)


@given(st.lists(records, max_size=40))
def test_parse_events_round_trips(recs: list[tuple[int, int, int, bytes, int]]) -> None:
    buf = b"".join(pack(wd, mask, cookie, name, pad) for wd, mask, cookie, name, pad in recs)
    parsed = parse_events(buf)
    assert [(e.wd, e.mask, e.cookie, e.name) for e in parsed] == [r[:4] for r in recs]
    assert sum(16 + e.length for e in parsed) == len(buf)


# --- the fd ----------------------------------------------------------------------------


def test_add_read_rm_on_a_real_directory(ino: InotifyFd, tmp_path: pathlib.Path) -> None:
    wd = ino.add_watch(str(tmp_path), IN_CREATE | IN_DELETE)
    assert wd > 0
    assert ino.read_events() == []  # non-blocking: nothing queued yet
    (tmp_path / "f").touch()
    (tmp_path / "f").unlink()
    got = read_until(ino, lambda ev: len(ev) >= 2)
    assert [(e.wd, e.mask, e.cookie, e.name) for e in got] == [
        (wd, IN_CREATE, 0, b"f"),
        (wd, IN_DELETE, 0, b"f"),
    ]
    assert all(e.length >= 2 and e.length % 4 == 0 for e in got)  # the kernel's padded len
    ino.rm_watch(wd)
    got = read_until(ino, lambda ev: len(ev) >= 1)
    assert got == [RawEvent(wd, IN_IGNORED, 0, 0, b"")]
    ino.rm_watch(wd)  # already gone: EINVAL is not an error


def test_str_bytes_and_pathlike_paths_name_the_same_watch(
    ino: InotifyFd, tmp_path: pathlib.Path
) -> None:
    wd = ino.add_watch(str(tmp_path), IN_CREATE)
    assert ino.add_watch(os.fsencode(tmp_path), IN_CREATE) == wd
    assert ino.add_watch(tmp_path, IN_CREATE) == wd
    assert ino.add_watch(tmp_path, Mask.IN_CREATE | Mask.IN_DELETE) == wd


def test_non_utf8_directory_names(ino: InotifyFd, tmp_path: pathlib.Path) -> None:
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    os.mkdir(odd)
    wd = ino.add_watch(odd, IN_CREATE)
    assert ino.add_watch(os.fsdecode(odd), IN_CREATE) == wd
    open(os.path.join(odd, b"\xff\xfe"), "wb").close()
    (event,) = read_until(ino, lambda ev: len(ev) >= 1)
    assert event.name == b"\xff\xfe"


def test_mask_create_refuses_an_inode_already_watched(
    ino: InotifyFd, tmp_path: pathlib.Path
) -> None:
    ino.add_watch(tmp_path, IN_CREATE)
    with pytest.raises(InotifyError) as info:
        ino.add_watch(tmp_path, IN_CREATE | IN_MASK_CREATE)
    assert info.value.errno == errno.EEXIST
    assert str(tmp_path) in str(info.value)
    assert "already watches it" in str(info.value)


def test_a_path_with_a_nul_byte_is_refused(ino: InotifyFd, tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="NUL"):
        ino.add_watch(f"{tmp_path}\0x", IN_CREATE)


def test_one_read_returns_a_whole_burst(ino: InotifyFd, tmp_path: pathlib.Path) -> None:
    ino.add_watch(tmp_path, IN_CREATE)
    count = 3000  # ~96 KB of events: more than a small buffer, less than the kernel queue
    for i in range(count):
        (tmp_path / f"file-{i:05d}").touch()
    wait_for(lambda: ino.wait_readable(0), what="the inotify fd readable")
    events = ino.read_events()  # FIONREAD sized: everything queued comes in one read
    if events and events[-1].mask & flags.IN_Q_OVERFLOW:
        pytest.skip(f"the kernel's queue overflowed after {len(events) - 1} events: "
                    "fs.inotify.max_queued_events was lowered (by another test?) when the fd "
                    "was made")
    assert len(events) == count
    assert events[-1].name == f"file-{count - 1:05d}".encode()
    assert ino.read_events() == []


def test_wait_readable(ino: InotifyFd, tmp_path: pathlib.Path) -> None:
    ino.add_watch(tmp_path, IN_CREATE)
    assert ino.wait_readable(0) is False
    assert ino.wait_readable(0.01) is False
    (tmp_path / "x").touch()
    assert ino.wait_readable(5.0) is True
    ino.read_events()
    assert ino.wait_readable(0) is False


def test_blocking_fd_reads_what_is_queued(tmp_path: pathlib.Path) -> None:
    with InotifyFd(IN_CLOEXEC) as ino:
        ino.add_watch(tmp_path, IN_CREATE)
        (tmp_path / "x").touch()
        assert [e.name for e in ino.read_events()] == [b"x"]


def test_fd_flags() -> None:
    with InotifyFd() as ino:
        assert fcntl.fcntl(ino.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert fcntl.fcntl(ino.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
    with InotifyFd(0) as ino:
        assert not fcntl.fcntl(ino.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert not fcntl.fcntl(ino.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK


def test_close_is_idempotent_and_final(tmp_path: pathlib.Path) -> None:
    ino = InotifyFd()
    fd = ino.fileno()
    ino.wait_readable(0)  # creates the epoll that close() must also release
    was_closed = ino.closed
    assert not was_closed
    assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    ino.close()
    assert ino.closed
    ino.close()
    assert "closed" in repr(ino)
    for call in (ino.fileno, ino.read_events, lambda: ino.add_watch(tmp_path, IN_CREATE)):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_context_manager_closes(tmp_path: pathlib.Path) -> None:
    with InotifyFd() as ino:
        fd = ino.fileno()
        ino.add_watch(tmp_path, IN_CREATE)
    assert ino.closed
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


def test_an_unclosed_fd_warns(tmp_path: pathlib.Path) -> None:
    ino = InotifyFd()
    with pytest.warns(ResourceWarning, match="unclosed"):
        ino.__del__()
    assert ino.closed


# --- errors ----------------------------------------------------------------------------


def test_missing_path(ino: InotifyFd, tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(PathNotFoundError) as info:
        ino.add_watch(missing, IN_CREATE)
    e = info.value
    assert (e.errno, e.path) == (errno.ENOENT, str(missing))
    assert str(missing) in str(e)
    assert "no such file or directory" in str(e)
    assert isinstance(e, InotifyError)
    assert isinstance(e, WatchdError)
    assert isinstance(e, FileNotFoundError)


def test_not_a_directory(ino: InotifyFd, tmp_path: pathlib.Path) -> None:
    file = tmp_path / "file"
    file.touch()
    assert ino.add_watch(file, IN_MODIFY) > 0  # a file may be watched...
    with pytest.raises(NotADirectoryPathError) as info:  # ...unless a directory is required
        ino.add_watch(file, IN_MODIFY | IN_ONLYDIR)
    assert (info.value.errno, info.value.path) == (errno.ENOTDIR, str(file))
    assert f"'{file}'" in str(info.value)
    assert "not a directory" in str(info.value)
    with pytest.raises(NotADirectoryPathError):
        ino.add_watch(file / "below", IN_MODIFY)


def test_dont_follow_watches_the_link(ino: InotifyFd, tmp_path: pathlib.Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    assert ino.add_watch(tmp_path / "link", IN_CREATE) == ino.add_watch(tmp_path / "d", IN_CREATE)
    with pytest.raises(NotADirectoryPathError):
        ino.add_watch(tmp_path / "link", IN_CREATE | IN_DONT_FOLLOW | IN_ONLYDIR)


def test_permission_denied(tmp_path: pathlib.Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)

    def attempt() -> InotifyError | None:
        with InotifyFd() as ino:
            try:
                ino.add_watch(private, IN_CREATE)
            except InotifyError as e:
                return e
        return None

    e = run_isolated(attempt, uid=65534)
    assert isinstance(e, PermissionDeniedError)
    assert isinstance(e, PermissionError)
    assert (e.errno, e.path) == (errno.EACCES, str(private))
    assert str(private) in str(e)
    assert "permission denied" in str(e)


def test_watch_limit(tmp_path: pathlib.Path) -> None:
    dirs = [tmp_path / f"d{i}" for i in range(4)]
    for d in dirs:
        d.mkdir()

    def attempt() -> tuple[list[int], InotifyError | None]:
        wds: list[int] = []
        with InotifyFd() as ino:
            try:
                for d in dirs:
                    wds.append(ino.add_watch(d, IN_CREATE))
            except InotifyError as e:
                return wds, e
        return wds, None

    wds, e = run_isolated(attempt, watches=3)
    assert len(wds) == 3
    assert isinstance(e, WatchLimitError)
    assert (e.errno, e.path) == (errno.ENOSPC, str(dirs[3]))
    text = str(e)
    assert f"fs.inotify.max_user_watches={read_limits().max_user_watches}" in text
    assert "user.max_inotify_watches=3" in text  # the limit that bit, in that namespace
    assert "sysctl fs.inotify.max_user_watches=N" in text
    assert str(dirs[3]) in text


def test_instance_limit() -> None:
    def attempt() -> InotifyError | None:
        with InotifyFd():
            try:
                InotifyFd().close()
            except InotifyError as e:
                return e
        return None

    e = run_isolated(attempt, instances=1)
    assert isinstance(e, InstanceLimitError)
    assert e.errno == errno.EMFILE
    text = str(e)
    assert f"fs.inotify.max_user_instances={read_limits().max_user_instances}" in text
    assert "user.max_inotify_instances=1" in text
    assert "sysctl fs.inotify.max_user_instances=N" in text


def test_error_for_builds_the_fitting_class() -> None:
    cases = {
        errno.ENOSPC: WatchLimitError,
        errno.EMFILE: InstanceLimitError,
        errno.EACCES: PermissionDeniedError,
        errno.ENOENT: PathNotFoundError,
        errno.ENOTDIR: NotADirectoryPathError,
        errno.EEXIST: InotifyError,
        errno.ENOMEM: InotifyError,
    }
    for code, cls in cases.items():
        e = error_for(code, b"/some/p\xe4th", "inotify_add_watch")
        assert type(e) is cls
        assert e.errno == code
        assert e.path == "/some/p\udce4th"
        if code != errno.EMFILE:  # creating an instance involves no path
            assert "/some/p\\udce4th" in str(e)
    generic = error_for(errno.ENOMEM, "/x", "inotify_add_watch")
    assert str(generic) == f"inotify inotify_add_watch failed '/x': {os.strerror(errno.ENOMEM)}"


def test_errors_survive_pickling() -> None:
    e = error_for(errno.ENOENT, "/gone", "inotify_add_watch")
    copy = pickle.loads(pickle.dumps(e))
    assert type(copy) is PathNotFoundError
    assert (copy.errno, copy.path, str(copy)) == (e.errno, e.path, str(e))


def test_read_limits() -> None:
    limits = read_limits()
    assert isinstance(limits, InotifyLimits)
    with open("/proc/sys/fs/inotify/max_user_watches") as f:
        assert limits.max_user_watches == int(f.read())
    assert limits.max_user_instances is not None
    assert limits.max_user_instances > 0
    assert limits.max_queued_events is not None
    assert limits.max_queued_events > 0


def test_parse_raw_gives_the_fields_of_parse_events_as_plain_tuples() -> None:
    header = struct.Struct("iIII")
    buf = (header.pack(3, 0x100, 0, 16) + b"caf\xe9".ljust(16, b"\0")
           + header.pack(-1, 0x4000, 0, 0)
           + header.pack(4, 0x40, 77, 32) + b"x" * 20 + b"\0" * 12)
    raw = _binding.parse_raw(buf)
    assert [type(t) for t in raw] == [tuple, tuple, tuple]
    assert raw == [tuple(e) for e in _binding.parse_events(buf)]
    assert raw[0] == (3, 0x100, 0, 16, b"caf\xe9")
    assert raw[2] == (4, 0x40, 77, 32, b"x" * 20)
