"""Lowering an inotify sysctl for the length of a test, and never leaving it lowered (see
bench.sysctl, which the benchmarks that lower one use too); a test that cannot is skipped."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from bench.sysctl import CannotSet, lowered, record_of, records_dir

__all__ = ["record_of", "records_dir", "sysctl"]


@contextlib.contextmanager
def sysctl(name: str, value: int) -> Iterator[int]:
    """Set /proc/sys/fs/inotify/<name> for the duration; yields the old value."""
    with contextlib.ExitStack() as stack:
        try:
            old = stack.enter_context(lowered(name, value))
        except CannotSet as e:
            pytest.skip(str(e))
        yield old
