"""A file's rename from a source the index does not know looks through none of the keys no
listing leads to (TreeIndex._loose, Forward.loose): a watch with `include` patterns has one per
directory (the scan enters every directory, and lists only the names it wants), and a writer
that saves x.log through an excluded x.tmp makes one such rename per save. Counted: the looks
through them (listing.keys_below), which the rename of a directory onto another needs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import watchd.index
import watchd.restore
from tests.test_restore_loose import Journal
from watchd.events import Kind
from watchd.index import TreeIndex
from watchd.listing import keys_below
from watchd.records import IN_ISDIR, IN_MOVED_TO, UNKNOWN_FILE
from watchd.restore import Forward

LOOSE = 50


def counted(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[str]:
    calls: list[str] = []
    real: Callable[..., Any] = keys_below

    def counting(dirs: Any, loose: Any, path: str) -> Any:
        calls.append(path)
        return real(dirs, loose, path)

    monkeypatch.setattr(module, "keys_below", counting)
    return calls


def loose_dirs() -> dict[str, dict[str, int]]:
    dirs: dict[str, dict[str, int]] = {"/t": {}}
    for i in range(LOOSE):
        dirs[f"/t/d{i}"] = {"a.log": UNKNOWN_FILE}  # not in /t's listing: loose
    return dirs


def test_the_restore_looks_through_them_for_a_directory_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counted(monkeypatch, watchd.restore)
    forward = Forward(loose_dirs())
    assert len(forward.loose) == LOOSE
    journal = Journal()
    for k in range(LOOSE):
        journal.add(Kind.MOVED_TO, Path(f"/t/d{k}/x.log"), is_dir=False, cookie=k + 1)
    journal.add(Kind.MOVED_TO, Path("/t/d0"), is_dir=True, cookie=LOOSE + 1)
    for _seq, _watch, _batch, path, tail in journal.entries:
        forward.apply(path, tail)
    assert calls == ["/t/d0"]


def test_the_live_index_looks_through_them_for_a_directory_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counted(monkeypatch, watchd.index)
    index = TreeIndex("/t")
    index.replace(loose_dirs())
    items = [(IN_MOVED_TO, k + 1, f"/t/d{k}/x.log", None) for k in range(LOOSE)]
    items.append((IN_MOVED_TO | IN_ISDIR, LOOSE + 1, "/t/d0", None))
    index.apply(items, {})
    assert calls == ["/t/d0"]
