"""Install the project's own units in a booted Lab and drive the service from the outside."""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.systemd_lab.container import Lab, LabError
from tests.systemd_lab.readme import install_block

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
PROBE = Path(__file__).resolve().with_name("probe.py")
STANDIN = Path(__file__).resolve().with_name("standin.py")
INSTALLED_BINARY = "/usr/bin/watchd"
SOCKET = "/run/watchd/watchd.sock"
CONFIG = "/etc/watchd/watchd.toml"
WATCHED = "/srv/lab"
# What the tests change: a short watchdog, so that a hang is caught in seconds.
DROP_IN = """\
[Service]
WatchdogSec=2s
Environment=PYTHONDONTWRITEBYTECODE=1
"""


def config_text(watches: dict[str, str], log_level: str = "debug") -> str:
    """A configuration with one [[watch]] per name: path."""
    parts = ["[daemon]", f'socket = "{SOCKET}"', 'socket_group = "watchd"',
             f'log_level = "{log_level}"', ""]
    for name, path in watches.items():
        parts += ["[[watch]]", f'name = "{name}"', f'path = "{path}"', ""]
    return "\n".join(parts)


@dataclass(slots=True)
class Service:
    """The watchd units inside one Lab."""

    lab: Lab
    python: str  # the virtualenv's interpreter, at the same path inside
    standin: bool = False

    def exec_start(self) -> str:
        if self.standin:
            return f"{self.python} {STANDIN}"
        return str(Path(self.python).with_name("watchd"))

    def install(self) -> None:
        """The README's install block as written, then what the tests change in a drop-in."""
        self.open_bind_parents()
        script = f"cd {shlex.quote(str(REPO))}\n{install_block()}"
        result = self.lab.run("sh", "-e", "-x", "-c", script, timeout=120)
        if result.returncode != 0:
            raise LabError(f"the README's install block failed in the container (exit "
                           f"{result.returncode}):\n{result.stdout}{result.stderr}")
        # The shipped unit runs /usr/bin/watchd, which a read-only /usr here cannot hold: a
        # drop-in points it at the virtualenv's entry point, as docs/systemd.md shows.
        drop_ins = self.lab.path("/etc/systemd/system/watchd.service.d")
        drop_ins.mkdir(exist_ok=True)
        (drop_ins / "lab.conf").write_text(self.drop_in())
        # Only root may read the watched directory: the daemon, user watchd, needs the
        # unit's CAP_DAC_READ_SEARCH to watch it.
        self.lab.check("install", "-d", "-m", "0700", WATCHED)
        self.write_config({"lab": WATCHED})
        self.lab.check("systemctl", "daemon-reload")

    def drop_in(self) -> str:
        """The shipped ExecStart=/ExecReload= on our entry point, and DROP_IN."""
        shipped = [line for line in (UNITS / "watchd.service").read_text().splitlines()
                   if line.startswith(("ExecStart=", "ExecReload="))]
        commands = [line.replace(INSTALLED_BINARY, self.exec_start()) for line in shipped]
        # The empty assignments clear the shipped lists before ours are added.
        return "\n".join(["[Service]", "ExecStart=", "ExecReload=", *commands]) + "\n" + \
            DROP_IN.removeprefix("[Service]\n")

    def open_bind_parents(self) -> None:
        """Let the service user pass through the directories above the bound-in paths."""
        # They exist only in the container's tmpfs root (/root there is 0700, as on most
        # hosts); a packaged install keeps its virtualenv in a world-searchable place.
        for bind in self.lab.binds:
            target = Path(bind.rpartition(":")[2])
            for parent in target.parents:
                inside = self.lab.path(str(parent))
                mode = inside.stat().st_mode
                if not mode & 0o001:
                    inside.chmod(mode | 0o001)

    def write_config(self, watches: dict[str, str]) -> None:
        path = self.lab.path(CONFIG)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config_text(watches))

    def reset(self) -> None:
        """Back to the installed state: the socket listening, the service stopped."""
        self.lab.check("systemctl", "stop", "watchd.service", "watchd.socket")
        self.lab.run("systemctl", "reset-failed", "watchd.service", "watchd.socket")
        self.write_config({"lab": WATCHED})
        self.lab.check("systemctl", "start", "watchd.socket")

    def systemctl(self, *args: str, timeout: float = 30.0) -> str:
        return self.lab.check("systemctl", *args, timeout=timeout)

    def show(self, unit: str, prop: str) -> str:
        return self.lab.check("systemctl", "show", "-P", prop, unit).strip()

    def state(self, unit: str = "watchd.service") -> str:
        return self.lab.run("systemctl", "is-active", unit).stdout.strip()

    def main_pid(self) -> int:
        return int(self.show("watchd.service", "MainPID"))

    def probe(self, *args: str, groups: tuple[str, ...] | None = None
              ) -> tuple[int, dict[str, Any]]:
        """Run the probe client inside (as nobody in `groups` if given); status and JSON."""
        argv = [self.python, str(PROBE), *args]
        if groups is not None:
            membership = [f"--groups={','.join(groups)}"] if groups else ["--clear-groups"]
            argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", *membership, *argv]
        result = self.lab.run(*argv, timeout=30, env={"PYTHONDONTWRITEBYTECODE": "1"})
        try:
            return result.returncode, json.loads(result.stdout)
        except ValueError as e:
            raise LabError(f"probe printed no JSON (exit {result.returncode}):\n"
                           f"{result.stdout}{result.stderr}") from e

    def probe_ok(self, *args: str) -> dict[str, Any]:
        code, output = self.probe(*args)
        if code != 0:
            raise AssertionError(f"probe {' '.join(args)} failed: {output}\n{self.journal()}")
        return output

    def journal(self, *args: str) -> str:
        return self.lab.run("journalctl", "-u", "watchd.service", "--no-pager", "-q",
                            *args).stdout

    def journal_records(self) -> list[dict[str, Any]]:
        out = self.lab.run("journalctl", "-u", "watchd.service", "-o", "json", "--no-pager",
                           "-q").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def service_pids(self) -> list[int]:
        """The processes left in the service's cgroup, as pids inside the container."""
        # Read from inside: the kernel translates cgroup.procs to the reader's pid namespace.
        result = self.lab.run("cat", "/sys/fs/cgroup/system.slice/watchd.service/cgroup.procs")
        return [int(p) for p in result.stdout.split()] if result.returncode == 0 else []

    def proc_status(self, pid: int) -> dict[str, str]:
        text = self.lab.path(f"/proc/{pid}/status").read_text()
        return dict(re.findall(r"^(\w+):\s*(.*)$", text, re.MULTILINE))

    def proc_nice(self, pid: int) -> int:
        fields = self.lab.path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[16])  # field 19 of proc_pid_stat(5); fields[0] is field 3

    def proc_rlimit_nice(self, pid: int) -> int:
        text = self.lab.path(f"/proc/{pid}/limits").read_text()
        match = re.search(r"^Max nice priority\s+(\d+)", text, re.MULTILINE)
        assert match, text
        return int(match.group(1))

    def proc_environ(self, pid: int) -> dict[str, str]:
        raw = self.lab.path(f"/proc/{pid}/environ").read_bytes()
        pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
        return {os.fsdecode(k): os.fsdecode(v) for k, _, v in pairs}
