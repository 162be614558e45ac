"""Boot the host's systemd as PID 1 of a systemd-nspawn container, run commands in it, tear it down.

The container's root is a fresh tmpfs with the host's /usr mounted read-only
(--volatile=yes): nothing done inside reaches the host's /etc, /var or /tmp, and a
directory the tests need (the repository, the virtualenv, the Python it was made from)
is bound in read-only at the same path. Host PID 1 need not be systemd, so the
container is not registered with machined (no machinectl: commands enter it with
nsenter), and nspawn is put in a cgroup of its own first, because with --keep-unit it
creates its supervisor/payload cgroups under its current one and would otherwise
leave them behind at the root of the hierarchy.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
NSPAWN_RUN_DIRS = ("/run/systemd/nspawn/propagate", "/run/systemd/nspawn/locks",
                   "/run/systemd/nspawn", "/run/systemd/nspawn-root")
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The kernel command line of the container: a short boot to basic.target; no first-boot
# prompt (it would wait for a key on the empty /etc of the tmpfs root) and no timers
# (the host's apt and man-db timers would otherwise fire inside).
BOOT_ARGS = ("systemd.unit=basic.target", "systemd.firstboot=off", "systemd.mask=timers.target")
BOOT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
INSTALL_TIMEOUT_S = 300.0


class LabError(Exception):
    """The container could not be booted or used."""


def _run_quiet(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        check=False, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
    )


def _install_nspawn() -> str | None:
    """Install systemd-nspawn from the distribution; why not, or None when it worked."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-query") is None:
        return "systemd-nspawn is missing and this host has no apt-get: install systemd-container"
    version = _run_quiet(["dpkg-query", "-W", "-f=${Version}", "systemd"], 30).stdout.strip()
    if not version:
        return "systemd-nspawn is missing and the systemd package is not installed"
    # systemd-container depends on exactly this version of libsystemd-shared: pinned,
    # the install cannot upgrade the host's own systemd behind its back.
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends",
               "-o", "DPkg::Lock::Timeout=120", f"systemd-container={version}"]
    result = _run_quiet(install, INSTALL_TIMEOUT_S)
    if result.returncode != 0:
        _run_quiet(["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=120"], INSTALL_TIMEOUT_S)
        result = _run_quiet(install, INSTALL_TIMEOUT_S)
    if result.returncode != 0 or shutil.which("systemd-nspawn") is None:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"systemd-nspawn is missing and systemd-container={version} did not install: {last}"
    return None


def unavailable_reason() -> str | None:
    """Why a container cannot be booted here (installing systemd-nspawn if needed), or None."""
    if not sys.platform.startswith("linux"):
        return "booting systemd in a container needs Linux"
    if os.geteuid() != 0:
        return "booting systemd in a container with systemd-nspawn needs root"
    if not any(Path(p).exists() for p in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")):
        return "this host has no systemd to boot in a container"
    if shutil.which("nsenter") is None:
        return "nsenter (util-linux) is missing"
    if not _cgroup_parents():
        return f"no writable cgroup hierarchy under {CGROUP_ROOT}"
    if shutil.which("systemd-nspawn") is None:
        return _install_nspawn()
    return None


def _cgroup_parents() -> list[Path]:
    """The hierarchies nspawn's own cgroup must be created in (v2 alone, or hybrid)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        candidates = [CGROUP_ROOT]
    else:
        candidates = [CGROUP_ROOT / "unified", CGROUP_ROOT / "systemd"]
    return [p for p in candidates if (p / "cgroup.procs").exists() and os.access(p, os.W_OK)]


def _alive(pid: int | None) -> bool:
    """Whether `pid` runs (a zombie, still answering kill -0 until reaped, does not)."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _wait_gone(pid: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _pid_namespace(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


@dataclass(slots=True)
class Lab:
    """One container: `boot()` it, `run()` commands inside, always `teardown()`."""

    name: str
    binds: Sequence[str] = ()
    state: Path = field(init=False)
    timings: dict[str, float] = field(default_factory=dict)
    _nspawn: subprocess.Popen[bytes] | None = None
    _leader: int | None = None
    _cgroups: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir="/tmp"))

    @property
    def leader(self) -> int:
        """The host pid of the container's PID 1."""
        if self._leader is None:
            raise LabError(f"container {self.name} is not running")
        return self._leader

    def path(self, inside: str) -> Path:
        """The host path of a path inside the container (through /proc/PID/root)."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def console(self, lines: int = 40) -> str:
        """The end of the container's console log, for failure reports."""
        try:
            text = (self.state / "console.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def boot(self) -> float:
        """Start the container and wait until its systemd is running; the seconds it took."""
        started = time.monotonic()
        self._cgroups = [parent / f"watchd-lab-{self.name}" for parent in _cgroup_parents()]
        for cgroup in self._cgroups:
            cgroup.mkdir(exist_ok=True)
        # The shell moves itself into the new cgroups, then becomes nspawn: whatever nspawn
        # creates in its cgroup lands in ours, and Popen's pid is nspawn's.
        enter = "; ".join(f"echo $$ > {shlex.quote(str(c / 'cgroup.procs'))}"
                          for c in self._cgroups)
        argv = ["sh", "-c", f'{enter}; exec "$@"', "lab", *self._nspawn_argv()]
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        with open(self.state / "console.log", "wb") as console:
            self._nspawn = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        self._leader = self._find_leader(started + BOOT_TIMEOUT_S)
        self._wait_running(started + BOOT_TIMEOUT_S)
        self.timings["boot"] = time.monotonic() - started
        return self.timings["boot"]

    def _nspawn_argv(self) -> list[str]:
        binds = [f"--bind-ro={bind}" for bind in self.binds]
        return [
            "systemd-nspawn", "--directory=/", "--volatile=yes",
            f"--machine={self.name}", "--register=no", "--keep-unit",
            "--link-journal=no", "--resolv-conf=off", "--timezone=off",
            # read-only: PID 1's console goes to our log without needing a terminal.
            "--console=read-only", *binds, "--boot", "--", *BOOT_ARGS,
        ]

    def _find_leader(self, deadline: float) -> int:
        assert self._nspawn is not None
        ours = _pid_namespace(os.getpid())
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise LabError(f"systemd-nspawn exited with {self._nspawn.returncode}:\n"
                               f"{self.console()}")
            for children in Path(f"/proc/{self._nspawn.pid}/task").glob("*/children"):
                for pid in children.read_text().split():
                    namespace = _pid_namespace(int(pid))
                    if namespace and namespace != ours:
                        return int(pid)
            time.sleep(0.02)
        raise LabError(f"systemd-nspawn started no container in time:\n{self.console()}")

    def _wait_running(self, deadline: float) -> None:
        state = ""
        while time.monotonic() < deadline:
            # Until PID 1 has created /run/systemd/private, systemctl fails at once.
            left = max(0.1, deadline - time.monotonic())
            try:
                result = self.run("systemctl", "is-system-running", "--wait", timeout=left)
            except subprocess.TimeoutExpired:
                break
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return
            if not _alive(self._leader):
                break
            time.sleep(0.05)
        raise LabError(f"the container's systemd did not come up (state {state!r}):\n"
                       f"{self.console()}")

    def run(self, *argv: str, input: str | None = None, timeout: float = 30.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container, with a clean environment; never raises on failure."""
        variables = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "cat",
                     "SYSTEMD_COLORS": "0", "TERM": "dumb", **(env or {})}
        command = [
            "nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--pid",
            "--cgroup", "--root", "--wd", "--",
            "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in variables.items()), *argv,
        ]
        return subprocess.run(command, input=input, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def check(self, *argv: str, timeout: float = 30.0, input: str | None = None) -> str:
        """Run a command inside the container and return its output; LabError if it fails."""
        result = self.run(*argv, timeout=timeout, input=input)
        if result.returncode != 0:
            raise LabError(f"{shlex.join(argv)} exited with {result.returncode}:\n"
                           f"{result.stdout}{result.stderr}")
        return result.stdout

    def teardown(self) -> list[str]:
        """Stop the container and remove what it left on the host; what could not be removed."""
        started = time.monotonic()
        problems: list[str] = []
        if self._nspawn is not None:
            self._stop_nspawn()
        # Killing a PID namespace's init kills everything in it.
        if _alive(self._leader) and _pid_namespace(self.leader) != _pid_namespace(os.getpid()):
            os.kill(self.leader, signal.SIGKILL)
            if not _wait_gone(self._leader, STOP_TIMEOUT_S):
                problems.append(f"container init {self._leader} survived SIGKILL")
        for cgroup in self._cgroups:
            if not self._remove_cgroup(cgroup):
                problems.append(f"cgroup {cgroup} could not be removed")
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)
        if not self._any_nspawn_left():
            # /run is not a tmpfs everywhere; nspawn's empty bookkeeping directories
            # would pile up on the host.
            for directory in NSPAWN_RUN_DIRS:
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
        shutil.rmtree(self.state, ignore_errors=True)
        self.timings["teardown"] = time.monotonic() - started
        return problems

    def _stop_nspawn(self) -> None:
        assert self._nspawn is not None
        # The first SIGTERM asks the container to power off; a second one ends it at once.
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGTERM, 3.0),
                          (signal.SIGKILL, 3.0)):
            if self._nspawn.poll() is not None:
                break
            self._nspawn.send_signal(sig)
            try:
                self._nspawn.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        self._nspawn.poll()

    @staticmethod
    def _remove_cgroup(cgroup: Path) -> bool:
        deadline = time.monotonic() + 3.0
        while cgroup.exists():
            for directory in sorted(cgroup.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if directory.is_dir():
                    with contextlib.suppress(OSError):
                        directory.rmdir()
            try:
                cgroup.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
        return True

    @staticmethod
    def _any_nspawn_left() -> bool:
        for comm in Path("/proc").glob("[0-9]*/comm"):
            try:
                if comm.read_text().strip() == "systemd-nspawn" and _alive(int(comm.parent.name)):
                    return True
            except OSError:
                continue
        return False
