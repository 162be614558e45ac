"""The tests' sysctl helper puts back a value that a killed run left lowered."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.sysctl import record_of, records_dir, sysctl

QUEUE = Path("/proc/sys/fs/inotify/max_queued_events")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change inotify sysctls")
def test_a_value_left_lowered_by_a_killed_run_is_restored(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    records = tmp_path / "records"
    records.mkdir(mode=0o700)
    monkeypatch.setenv("WATCHD_TEST_SYSCTL_DIR", str(records))
    original = int(QUEUE.read_text())
    try:
        # A run that lowered the queue and was killed: its record is there, the value is low.
        record_of("max_queued_events").write_text(str(original))
        QUEUE.write_text("64")
        with sysctl("max_queued_events", 128) as old:
            assert old == original
            assert int(QUEUE.read_text()) == 128
            assert int(record_of("max_queued_events").read_text()) == original
        assert int(QUEUE.read_text()) == original
        assert not record_of("max_queued_events").exists()
    finally:
        QUEUE.write_text(str(original))


def test_a_records_folder_others_can_write_is_refused(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    monkeypatch.setenv("WATCHD_TEST_SYSCTL_DIR", str(open_folder))
    with pytest.raises(RuntimeError, match="only we can write"):
        records_dir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    monkeypatch.setenv("WATCHD_TEST_SYSCTL_DIR", str(link))
    with pytest.raises(RuntimeError, match="only we can write"):
        records_dir()
