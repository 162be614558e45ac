"""bench.fidelity --faults lowers fs.inotify.max_queued_events, a global limit: however the
run ends it is put back, and a run killed outright leaves the value it found written down for
the next run to restore (bench.sysctl, as the tests' own lowering does)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.sysctl import read_record, record_of, restore_leftover
from tests.harness import wait_for

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change inotify sysctls")]

QUEUE = Path("/proc/sys/fs/inotify/max_queued_events")
LOW = 64


@pytest.fixture
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A records folder of the test's own (the run's and the test's), and the queue's length
    put back whatever happens."""
    folder = tmp_path / "records"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("WATCHD_TEST_SYSCTL_DIR", str(folder))
    original = QUEUE.read_text()
    try:
        yield folder
    finally:
        QUEUE.write_text(original)


@pytest.fixture
def runs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The runs a test starts, ended whatever happens: one left running would go on with the
    queue lowered under every test after it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for run in started:
        if run.poll() is None:
            run.terminate()  # its own cleanup puts the queue back and stops its daemon
            try:
                run.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                run.kill()
                run.communicate()


def lowering_run(runs: list[subprocess.Popen[bytes]]) -> tuple[subprocess.Popen[bytes], int]:
    """bench.fidelity --faults, long enough to be interrupted; and its daemon's pid, once the
    queue is lowered and the daemon started (exec'd: a child just forked has the run's own
    command line)."""
    # A command started in the background of a shell without job control (nohup, `&` in a
    # script, as CI runners may do) inherits SIGINT ignored, and Python keeps it so: the run
    # is to take it as a user's Ctrl-C. A handler is not inherited across exec, an ignore is.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run = subprocess.Popen([sys.executable, "-m", "bench.fidelity", "--ops", "1000000",
                                "--faults", "--queue", str(LOW), "--stop-every", "1000000"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    finally:
        signal.signal(signal.SIGINT, before)
    runs.append(run)

    def daemon() -> int | None:
        assert run.poll() is None, run.communicate()[1].decode()
        children = Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()
        if not children or QUEUE.read_text().strip() != str(LOW):
            return None
        return int(children[0]) if run_folder(int(children[0])) is not None else None

    return run, wait_for(daemon, 30, "the queue lowered and the daemon started")


def run_folder(daemon: int) -> Path | None:
    """The folder a run made for its tree and configuration (/tmp/wd-fid.*), from its daemon's
    command line; None unless it is exactly such a folder."""
    try:
        argv = Path(f"/proc/{daemon}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return None
    config = Path(os.fsdecode(argv[argv.index(b"--config") + 1])) if b"--config" in argv else None
    if config is None or config.parent.parent != Path("/tmp") or \
            not config.parent.name.startswith("wd-fid."):
        return None
    return config.parent


def test_a_run_interrupted_with_ctrl_c_puts_the_queue_back(
        records: Path, runs: list[subprocess.Popen[bytes]]) -> None:
    original = QUEUE.read_text()
    run, _ = lowering_run(runs)
    run.send_signal(signal.SIGINT)
    run.communicate(timeout=60)
    assert QUEUE.read_text() == original
    assert not record_of("max_queued_events").exists()


def test_a_run_killed_outright_leaves_the_value_it_found_for_the_next_run(
        records: Path, runs: list[subprocess.Popen[bytes]]) -> None:
    original = QUEUE.read_text()
    run, daemon = lowering_run(runs)
    folder = run_folder(daemon)
    run.kill()
    run.communicate(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(daemon, signal.SIGKILL)  # its own session: left running by the kill
    assert folder is not None, f"the daemon {daemon} is not the run's"
    shutil.rmtree(folder, ignore_errors=True)  # the run's own, which the kill left
    assert QUEUE.read_text().strip() == str(LOW)
    assert read_record(record_of("max_queued_events")) == int(original)
    restore_leftover("max_queued_events")  # what the next run (a test's, or a bench's) does
    assert QUEUE.read_text() == original
    assert not record_of("max_queued_events").exists()
