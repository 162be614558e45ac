"""Lowering an inotify sysctl for a while, and never leaving it lowered.

The kernel's limits are global: a run that lowers one (to make the queue overflow, or the
watch limit bite) and is killed before it puts it back would leave every later run, and
everything else on the machine, with the lowered value. So the value found is written down
first, in a folder only root may write (/run/watchd-tests), and removed once it is restored;
a run that finds such a file knows the one before it was killed, and restores that value
before it reads the "old" one. Runs that lower a sysctl must not overlap (the test suite runs
them one after another; two suites, or a suite and a benchmark that lowers one, take
/tmp/watchd-suite.lock).

Used by the tests (tests/sysctl.py) and by the benchmarks that lower a limit (bench.fidelity).
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path


class CannotSet(OSError):
    """The sysctl cannot be written (not root, or no such limit): nothing was changed."""


def records_dir() -> Path:
    """The folder the values found are written down in: root's own (made 0700, and refused if
    anyone else owns it or it is a symlink), so no other user can plant a value or a link in
    it. WATCHD_TEST_SYSCTL_DIR names another, for the tests of this module."""
    folder = Path(os.environ.get("WATCHD_TEST_SYSCTL_DIR", "/run/watchd-tests"))
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    st = folder.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise RuntimeError(f"{folder}: not a directory of ours that only we can write")
    return folder


def record_of(name: str) -> Path:
    """Where the value found of fs.inotify.<name> is written down."""
    return records_dir() / f"sysctl-{name}.orig"


def read_record(record: Path) -> int:
    fd = os.open(record, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as f:
        return int(f.read())


def write_record(record: Path, value: int) -> None:
    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(str(value))


def restore_leftover(name: str) -> None:
    """Put back the value a killed run left written down, if there is one."""
    record = record_of(name)
    with contextlib.suppress(FileNotFoundError, ValueError):
        value = read_record(record)
        Path(f"/proc/sys/fs/inotify/{name}").write_text(str(value))
        print(f"fs.inotify.{name} restored to {value}, left lowered by a run that was killed",
              file=sys.stderr)
        record.unlink()


@contextlib.contextmanager
def lowered(name: str, value: int) -> Iterator[int]:
    """Set /proc/sys/fs/inotify/<name> for the duration (put back however it ends: a return,
    an exception, Ctrl-C; after a SIGKILL, by the next run); yields the old value. CannotSet
    when it cannot be written."""
    path = Path(f"/proc/sys/fs/inotify/{name}")
    restore_leftover(name)
    old = int(path.read_text())
    record = record_of(name)
    write_record(record, old)
    try:
        path.write_text(str(value))
    except OSError as e:
        record.unlink()
        raise CannotSet(e.errno, f"cannot write {path}: {e.strerror}") from e
    try:
        yield old
    finally:
        path.write_text(str(old))
        record.unlink(missing_ok=True)
