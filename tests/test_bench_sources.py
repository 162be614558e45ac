"""bench.resync_scale --against: each side's daemon imports its own checkout's watchd."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.resync_scale import HERE, imported_from


def test_each_side_imports_the_watchd_of_its_own_checkout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Started in this checkout, as a bench run usually is: the current directory must not
    # decide which watchd the other side's daemon imports.
    monkeypatch.chdir(HERE)
    other = tmp_path / "other"
    (other / "watchd").mkdir(parents=True)
    (other / "watchd" / "__init__.py").write_text("")
    work = tmp_path / "work"
    work.mkdir()
    assert imported_from(work, str(other)) == str(other / "watchd" / "__init__.py")
    assert imported_from(work, None) == str(Path(HERE) / "watchd" / "__init__.py")
