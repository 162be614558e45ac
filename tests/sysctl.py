"""Lowering an inotify sysctl for the length of a test, and never leaving it lowered.

The kernel's limits are global: a test that lowers one (to make the queue overflow, or the
watch limit bite) and is killed before it puts it back would leave every later run, and
everything else on the machine, with the lowered value. So the value found is written down
first, in a file beside the lock the full suite runs under, and removed once it is restored;
a run that finds such a file knows the one before it was killed, and restores that value
before it reads the "old" one.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def record_of(name: str) -> Path:
    """Where the value found is written down (WATCHD_TEST_SYSCTL_DIR, for the test of this)."""
    folder = Path(os.environ.get("WATCHD_TEST_SYSCTL_DIR", "/tmp"))
    return folder / f"watchd-tests-sysctl-{name}.orig"


def restore_leftover(name: str) -> None:
    """Put back the value a killed run left written down, if there is one."""
    record = record_of(name)
    with contextlib.suppress(FileNotFoundError, ValueError):
        value = int(record.read_text())
        Path(f"/proc/sys/fs/inotify/{name}").write_text(str(value))
        print(f"tests: fs.inotify.{name} restored to {value}, left lowered by a run that "
              f"was killed", file=sys.stderr)
        record.unlink()


@contextlib.contextmanager
def sysctl(name: str, value: int) -> Iterator[int]:
    """Set /proc/sys/fs/inotify/<name> for the duration; yields the old value."""
    path = Path(f"/proc/sys/fs/inotify/{name}")
    restore_leftover(name)
    old = int(path.read_text())
    record = record_of(name)
    record.write_text(str(old))
    try:
        path.write_text(str(value))
    except OSError as e:
        record.unlink()
        pytest.skip(f"cannot write {path}: {e}")
    try:
        yield old
    finally:
        path.write_text(str(old))
        record.unlink(missing_ok=True)
