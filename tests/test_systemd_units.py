"""The unit files in systemd/: lint-clean, hardened, and saying what the daemon relies on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.systemd_lab.readme import install_block

UNITS = Path(__file__).resolve().parents[1] / "systemd"
SERVICE = UNITS / "watchd.service"
SOCKET = UNITS / "watchd.socket"
SYSUSERS = UNITS / "watchd.sysusers.conf"
TMPFILES = UNITS / "watchd.tmpfiles.conf"
INSTALLED_BINARY = "/usr/bin/watchd"
MAX_EXPOSURE = 2.0
UNITS_LOAD_MARK = Path("/run/systemd/systemd-units-load")


def directives(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Section -> [(key, value)] in file order; keys may repeat, as systemd allows."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(path: Path, section: str, key: str) -> list[str]:
    return [v for k, v in directives(path).get(section, []) if k == key]


def one(path: Path, section: str, key: str) -> str:
    found = values(path, section, key)
    assert len(found) == 1, f"{path.name}: [{section}] {key}= appears {len(found)} times"
    return found[0]


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it comes with systemd)")
    return found


@pytest.fixture
def units_dir(tmp_path: Path) -> Path:
    """The units, with the daemon's path pointing at an executable that exists here."""
    binary = tmp_path / "usr/bin/watchd"
    binary.parent.mkdir(parents=True)
    shutil.copy("/bin/true", binary)
    (tmp_path / "watchd.service").write_text(SERVICE.read_text().replace(INSTALLED_BINARY,
                                                                          str(binary)))
    shutil.copy(SOCKET, tmp_path / "watchd.socket")
    return tmp_path


@pytest.fixture
def analyze() -> Iterator[str]:
    """systemd-analyze, leaving no mark of its run in the host's /run/systemd."""
    path = tool("systemd-analyze")
    had_mark = UNITS_LOAD_MARK.exists()
    yield path
    if not had_mark:
        UNITS_LOAD_MARK.unlink(missing_ok=True)


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYSTEMD_COLORS="0", SYSTEMD_PAGER="cat", LANG="C.UTF-8")
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)


def test_verify_reports_nothing(analyze: str, units_dir: Path) -> None:
    # verify exits 0 on unknown keys and unparsable values, so any output at all fails.
    result = run([analyze, "verify", str(units_dir / "watchd.service"),
                  str(units_dir / "watchd.socket")])
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_catches_a_bad_key(analyze: str, units_dir: Path) -> None:
    # The check above must be able to fail: a misspelt key is reported, exit status 0.
    service = units_dir / "watchd.service"
    service.write_text(service.read_text().replace("KillMode=", "KilMode="))
    result = run([analyze, "verify", str(service), str(units_dir / "watchd.socket")])
    assert "KilMode" in result.stdout + result.stderr


def exposure(analyze: str, service: Path) -> float:
    result = run([analyze, "security", "--offline=yes", "--no-pager", str(service)])
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    return float(match.group(1))


def test_security_exposure_is_low(analyze: str, units_dir: Path) -> None:
    score = exposure(analyze, units_dir / "watchd.service")
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}"


def test_security_score_would_notice_lost_hardening(analyze: str, units_dir: Path) -> None:
    service = units_dir / "watchd.service"
    hardened = exposure(analyze, service)
    loose = "\n".join(line for line in service.read_text().splitlines()
                      if not line.startswith(("Protect", "Private", "Restrict", "SystemCall")))
    service.write_text(loose + "\n")
    assert exposure(analyze, service) > hardened


def test_service_lifecycle_directives() -> None:
    assert one(SERVICE, "Service", "Type") == "notify"
    assert one(SERVICE, "Service", "NotifyAccess") == "main"
    assert one(SERVICE, "Service", "ExecStart") == (
        f"{INSTALLED_BINARY} --config /etc/watchd/watchd.toml")
    # Validate first: a broken file fails the reload instead of reaching the daemon.
    assert values(SERVICE, "Service", "ExecReload") == [
        f"{INSTALLED_BINARY} --check --config /etc/watchd/watchd.toml",
        "/bin/kill -HUP $MAINPID",
    ]
    assert one(SERVICE, "Service", "Restart") == "on-failure"
    assert one(SERVICE, "Service", "RestartPreventExitStatus") == "78"
    assert one(SERVICE, "Service", "KillMode") == "mixed"
    assert one(SERVICE, "Service", "WatchdogSec")
    assert int(one(SERVICE, "Service", "LimitNOFILE")) >= 16384
    assert one(SERVICE, "Unit", "Requires") == "watchd.socket"


def test_service_sandbox() -> None:
    assert one(SERVICE, "Service", "User") == "watchd"
    assert one(SERVICE, "Service", "AmbientCapabilities") == "CAP_DAC_READ_SEARCH"
    assert one(SERVICE, "Service", "CapabilityBoundingSet") == "CAP_DAC_READ_SEARCH"
    assert one(SERVICE, "Service", "ProtectSystem") == "strict"
    assert one(SERVICE, "Service", "ProtectHome") == "read-only"
    assert one(SERVICE, "Service", "NoNewPrivileges") == "yes"
    assert one(SERVICE, "Service", "RestrictAddressFamilies") == "AF_UNIX"
    assert values(SERVICE, "Service", "SystemCallFilter")
    # Each of these would hide the files the daemon is there to watch.
    for key in ("PrivateTmp", "PrivateUsers", "DynamicUser"):
        assert values(SERVICE, "Service", key) in ([], ["no"]), key
    assert not values(SERVICE, "Service", "RuntimeDirectory")
    # The durable state: the only place the daemon writes besides its socket.
    assert one(SERVICE, "Service", "StateDirectory") == "watchd"
    assert one(SERVICE, "Service", "StateDirectoryMode") == "0700"


def test_socket_directives() -> None:
    assert one(SOCKET, "Socket", "ListenStream") == "/run/watchd/watchd.sock"
    assert one(SOCKET, "Socket", "SocketMode") == "0660"
    assert one(SOCKET, "Socket", "SocketGroup") == "watchd"
    assert one(SOCKET, "Install", "WantedBy") == "sockets.target"


def test_sysusers_creates_a_system_user_and_group(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    result = run([sysusers, f"--root={tmp_path}", str(SYSUSERS)])
    assert result.returncode == 0, result.stderr
    users = {line.split(":")[0]: line.split(":") for line in
             (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in
              (tmp_path / "etc/group").read_text().splitlines()}
    user = users["watchd"]
    assert int(user[2]) < 1000, "a system user"
    assert user[3] == groups["watchd"][2]
    assert user[6].endswith("nologin")


def test_tmpfiles_creates_the_socket_directory(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers")
    tmpfiles = tool("systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    assert run([sysusers, f"--root={tmp_path}", str(SYSUSERS)]).returncode == 0
    result = run([tmpfiles, f"--root={tmp_path}", "--create", str(TMPFILES)])
    assert result.returncode == 0, result.stderr
    socket_dir = Path(one(SOCKET, "Socket", "ListenStream")).parent
    made = tmp_path / socket_dir.relative_to("/")
    gid = next(int(line.split(":")[2]) for line in
               (tmp_path / "etc/group").read_text().splitlines() if line.startswith("watchd:"))
    st = made.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o750, 0, gid)


# -- the install commands of the documentation ---------------------------------------------------

DOCS = [UNITS.parent / "README.md", *sorted((UNITS.parent / "docs").glob("*.md"))]


def test_docs_carry_the_readme_install_block_word_for_word() -> None:
    # The integration test runs the README's block in a real systemd; the page that explains
    # the install must not drift from it.
    block = install_block()
    assert "systemd-sysusers" in block
    assert block in (UNITS.parent / "docs/systemd.md").read_text()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_install_command_creates_its_directories(doc: Path) -> None:
    # `install SRC /etc/x.d/file` fails where /etc/x.d does not exist (Debian 12 has no
    # /etc/sysusers.d); -D (or -d for a directory) creates what is missing.
    commands = re.findall(r"^\s*install\s+(.*)$", doc.read_text(), re.MULTILINE)
    bad = [c for c in commands if not re.search(r"(^|\s)-[a-zA-Z]*[Dd]", c)]
    assert not bad, f"{doc.name}: install without -D/-d: {bad}"
