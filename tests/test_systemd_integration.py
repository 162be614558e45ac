"""The daemon under a real systemd: the project's units booted in a throw-away container.

The host's own systemd runs as PID 1 of a systemd-nspawn container (see tests/systemd_lab).
Needs root and systemd-nspawn (installed from the distribution when missing); skipped
with the reason otherwise. WATCHD_LAB_STANDIN=1 runs the same checks against a stand-in
daemon, to tell a broken harness from a broken daemon.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import wait_for
from tests.systemd_lab import Lab, unavailable_reason
from tests.systemd_lab.service import SOCKET, WATCHED, Service

pytestmark = [pytest.mark.systemd, pytest.mark.root]

CAP_DAC_READ_SEARCH = 2
EX_CONFIG = 78


def _binds() -> list[str]:
    """The repository, the virtualenv and the Python it was made from, at the same paths."""
    repo = Path(__file__).resolve().parents[1]
    paths = [repo, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    kept: list[Path] = []
    for path in paths:
        if path.is_relative_to("/usr") or any(path.is_relative_to(k) for k in kept):
            continue
        kept = [k for k in kept if not k.is_relative_to(path)] + [path]
    return [f"{p}:{p}" for p in kept]


@pytest.fixture(scope="module")
def timings(request: pytest.FixtureRequest) -> Iterator[dict[str, float]]:
    """Seconds each step took; printed at the end of the module."""
    measured: dict[str, float] = {}
    yield measured
    if not measured:
        return
    figures = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in measured.items())
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(f"systemd integration timings: {figures}")
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\nsystemd integration timings: {figures}")


@pytest.fixture(scope="module")
def service(timings: dict[str, float]) -> Iterator[Service]:
    """A booted container with the units installed and the socket listening."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("needs the package installed in a virtualenv (bound into the container)")
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    lab = Lab(f"watchd-it-{os.getpid()}", binds=_binds())
    try:
        timings["boot"] = lab.boot()
        svc = Service(lab, python=sys.executable,
                      standin=os.environ.get("WATCHD_LAB_STANDIN") == "1")
        svc.install()
        yield svc
    finally:
        leftovers = lab.teardown()
        timings["teardown"] = lab.timings["teardown"]
        assert not leftovers, f"the container left things behind: {leftovers}"


@pytest.fixture
def fresh(service: Service) -> Service:
    """The socket listening, the service stopped, the default configuration."""
    service.reset()
    return service


def _activate(svc: Service, timings: dict[str, float] | None = None) -> dict[str, object]:
    """Connect through the socket (starting the service) and see one event arrive."""
    started = time.monotonic()
    result = svc.probe_ok("events", SOCKET, WATCHED)
    if timings is not None:
        timings["start (connect to hello)"] = result["hello_s"]
        timings["first event (connect to event)"] = time.monotonic() - started
        timings["event latency"] = result["event_s"]
    return result


def test_socket_activation_starts_the_service_and_events_flow(
    fresh: Service, timings: dict[str, float]
) -> None:
    svc = fresh
    assert svc.state("watchd.socket") == "active"
    assert svc.state() == "inactive", "the service must wait for its first client"
    socket_stat = svc.lab.path(SOCKET).stat()
    assert oct(socket_stat.st_mode & 0o777) == "0o660"
    assert svc.lab.check("stat", "-c", "%U:%G", SOCKET).strip() == "root:watchd"

    result = _activate(svc, timings)

    assert svc.state() == "active"
    pid = svc.main_pid()
    hello = result["hello"]
    assert isinstance(hello, dict)
    assert svc.standin or hello["pid"] == pid
    event = result["event"]
    assert isinstance(event, dict)
    assert event["kind"] in ("create", "close_write")
    assert svc.show("watchd.service", "TriggeredBy") == "watchd.socket"

    # The dedicated user, with only the capability that lets it read any directory.
    status = svc.proc_status(pid)
    assert status["Uid"].split()[1] != "0"
    assert int(status["CapEff"], 16) == 1 << CAP_DAC_READ_SEARCH

    # The watcher runs below the daemon's nice value as far as its RLIMIT_NICE allows: the
    # unit's LimitNICE= gives it the room (where the container lets systemd raise the limit),
    # and its system call filter lets setpriority() through.
    if not svc.standin:
        assert "setpriority" in svc.show("watchd.service", "SystemCallFilter").split()
    watcher = next(p for p in svc.service_pids() if p != pid)
    own, room = svc.proc_nice(pid), 20 - svc.proc_rlimit_nice(watcher)
    assert svc.proc_nice(watcher) == min(own, max(own - 10, room))

    # Only the main process talks to systemd.
    for child in (p for p in svc.service_pids() if p != pid):
        leaked = {k for k in svc.proc_environ(child) if k.startswith(("NOTIFY_", "WATCHDOG_",
                                                                      "LISTEN_"))}
        assert not leaked, f"process {child} inherited {leaked}"

    # `systemctl status` shows the daemon's STATUS= line.
    text = wait_for(lambda: svc.show("watchd.service", "StatusText"), what="a STATUS= line")
    out = svc.lab.run("systemctl", "status", "--no-pager", "watchd.service").stdout
    assert f'Status: "{text}"' in out

    # The journal understood the <N> priority prefixes: none left in a message.
    records = svc.journal_records()
    messages = [r for r in records if r.get("_PID") == str(pid)]
    assert messages, svc.journal()
    assert not [r for r in messages if re.match(r"<\d>", str(r.get("MESSAGE", "")))]
    if not svc.standin:
        assert {r["PRIORITY"] for r in messages} & {"7"}, "debug lines should have priority 7"


def test_a_follower_goes_through_a_restart_missing_nothing(fresh: Service) -> None:
    # Durable state (StateDirectory=) and Client.follow together: `systemctl restart` in the
    # middle of a stream of changes; every file is reported once, seqs never go back.
    svc = fresh
    if svc.standin:
        pytest.skip("the stand-in daemon keeps no durable state")
    _activate(svc)
    instance = svc.probe_ok("hello", SOCKET)["hello"]["instance"]
    ready = "/tmp/follower-ready"
    svc.lab.run("rm", "-f", ready)
    result: dict[str, object] = {}
    follower = str(Path(__file__).parent / "systemd_lab" / "follower.py")

    def follow() -> None:
        done = svc.lab.run(svc.python, follower, SOCKET, WATCHED, "200", ready, timeout=90,
                           env={"PYTHONDONTWRITEBYTECODE": "1"})
        result["code"], result["out"], result["err"] = (done.returncode, done.stdout,
                                                        done.stderr)

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        wait_for(lambda: svc.lab.path(ready).exists(), timeout=60,
                 what="the follower to see a quarter of the files")
        svc.systemctl("restart", "watchd.service")
    finally:
        thread.join(120)
    assert result.get("code") == 0, result
    report = json.loads(str(result["out"]))
    assert report["missing_count"] == 0, (report, svc.journal())
    assert report["out_of_order"] == 0, report
    assert report["instances"] == [instance], report  # resumed, not a new instance
    # Whatever the restart left unseen came between a daemon_restart notice and resynced.
    kinds = [(n["type"], n["reason"]) for n in report["notices"]]
    assert ("overflow", "since_expired") not in kinds, report


def test_group_membership_decides_who_may_connect(fresh: Service) -> None:
    svc = fresh
    code, output = svc.probe("hello", SOCKET, groups=())
    assert code == 2, output
    assert output["errno"] == 13  # EACCES
    assert svc.state() == "inactive", "a refused connection must not start the service"

    code, output = svc.probe("hello", SOCKET, groups=("watchd",))
    assert code == 0, output
    assert output["hello"]["type"] == "hello"


def test_reload_applies_a_changed_configuration(fresh: Service, timings: dict[str, float]) -> None:
    svc = fresh
    _activate(svc)
    pid = svc.main_pid()
    svc.lab.check("install", "-d", "-m", "0700", "/srv/lab2")
    svc.write_config({"lab": WATCHED, "lab2": "/srv/lab2"})

    started = time.monotonic()
    svc.systemctl("reload", "watchd.service")

    def applied() -> dict[str, object] | None:
        status = svc.probe_ok("status", SOCKET)
        names = {w["name"] for w in status["watches"]}
        return status if "lab2" in names and status["reloads"] >= 1 else None

    # With Type=notify, `systemctl reload` may return before the daemon has reloaded.
    status = wait_for(applied, what="the reloaded configuration")
    timings["reload"] = time.monotonic() - started
    assert svc.main_pid() == pid
    assert svc.state() == "active"
    assert status["pid"] == pid or svc.standin

    # A file that does not parse is refused by ExecReload before the daemon hears of it.
    svc.lab.path("/etc/watchd/watchd.toml").write_text("[daemon\n")
    result = svc.lab.run("systemctl", "reload", "watchd.service")
    assert result.returncode != 0
    assert svc.main_pid() == pid
    assert svc.state() == "active"
    after = svc.probe_ok("status", SOCKET)
    assert after["reloads"] == status["reloads"]
    assert {w["name"] for w in after["watches"]} == {"lab", "lab2"}
    # And why, at error priority: `journalctl -p warning` shows it.
    if not svc.standin:
        assert "watchd: invalid configuration: /etc/watchd/watchd.toml" in svc.journal(
            "-p", "warning"), svc.journal()


def test_stop_is_clean(fresh: Service, timings: dict[str, float]) -> None:
    svc = fresh
    _activate(svc)
    pid = svc.main_pid()
    since = svc.lab.check("date", "+%Y-%m-%d %H:%M:%S").strip()

    started = time.monotonic()
    svc.systemctl("stop", "watchd.service")
    timings["stop"] = time.monotonic() - started
    assert svc.state() == "inactive"
    assert svc.show("watchd.service", "Result") == "success"
    assert svc.show("watchd.service", "ExecMainStatus") == "0"
    assert svc.service_pids() == []
    # The socket is systemd's: it stays, and the next client starts the daemon again.
    assert svc.lab.path(SOCKET).exists()
    assert svc.state("watchd.socket") == "active"
    assert "Traceback" not in svc.journal("--since", since), f"daemon {pid} stopped uncleanly"

    svc.systemctl("stop", "watchd.socket")
    assert not svc.lab.path(SOCKET).exists()


def test_watchdog_restarts_a_hung_daemon(fresh: Service, timings: dict[str, float]) -> None:
    svc = fresh
    _activate(svc)
    pid = svc.main_pid()
    assert svc.show("watchd.service", "WatchdogUSec") == "2s"
    # Still alive well past the watchdog interval: the pings arrive.
    time_active = time.monotonic()
    wait_for(lambda: time.monotonic() - time_active > 3.0, timeout=5, what="3 s of service")
    assert svc.main_pid() == pid
    assert svc.state() == "active"

    svc.lab.check("kill", "-STOP", str(pid))
    started = time.monotonic()

    def replaced() -> int | None:
        new = svc.main_pid()
        return new if new not in (0, pid) and svc.state() == "active" else None

    new_pid = wait_for(replaced, timeout=15, what="a restarted daemon")
    timings["watchdog restart (SIGSTOP to active)"] = time.monotonic() - started
    journal = svc.journal()
    assert "Watchdog timeout" in journal
    if not svc.standin:
        # faulthandler: the abort leaves the Python stack of the hung daemon in the journal,
        # every line of it at error priority; and nothing else prints a stack at info.
        assert "Fatal Python error: Aborted" in journal
        records = svc.journal_records()
        stack = [r for r in records if str(r.get("MESSAGE", "")).startswith(
            ("Fatal Python error", "Current thread", "  File ", "Traceback"))]
        assert stack and all(r["PRIORITY"] == "3" for r in stack), [
            (r["PRIORITY"], r.get("_PID"), r["MESSAGE"]) for r in stack]
    assert int(svc.show("watchd.service", "NRestarts")) >= 1
    hello = svc.probe_ok("hello", SOCKET)["hello"]
    assert svc.standin or hello["pid"] == new_pid


def test_security_exposure_is_the_one_the_readme_quotes(service: Service) -> None:
    # The figure a reader gets from `systemd-analyze security watchd.service` once installed.
    if service.standin:
        pytest.skip("the stand-in runs under the same unit: nothing new to measure")
    out = service.lab.check("systemd-analyze", "security", "--no-pager", "watchd.service")
    measured = re.search(r"Overall exposure level for watchd.service: (\d+\.\d+)", out)
    assert measured, out
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    quoted = re.search(r"`systemd-analyze security watchd.service` exposure \*\*(\d+\.\d+)\*\*",
                       " ".join(readme.split()))
    assert quoted, "README.md no longer quotes the exposure"
    assert quoted.group(1) == measured.group(1)
