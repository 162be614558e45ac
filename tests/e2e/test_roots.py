"""Watch roots against a hostile neighbour: a link in place of the root, pseudo file systems."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import REPO, config, is_type, run_watchd, wait_for, watch


@pytest.fixture
def private(workdir: str) -> Path:
    secret = Path(workdir) / "private"
    secret.mkdir(mode=0o700)
    (secret / "secret-file").touch()
    (secret / "secret-dir").mkdir()
    return secret


def test_a_root_replaced_by_a_symlink_is_not_followed(
    start_watching, watched: Path, private: Path
) -> None:
    root = watched
    daemon = start_watching()
    line, _ = daemon.subscribe()
    root.rmdir()
    line.until(is_type("watch_lost"))
    root.symlink_to(private)
    refused = "it is a symbolic link, which is not followed"
    wait_for(lambda: refused in daemon.log_text() or "is watched again" in daemon.log_text(),
             what="the watcher to look at the link")
    assert "is watched again" not in daemon.log_text()
    (private / "secret-later").touch()
    assert daemon.status()["watches"][0]["state"] == "pending"
    # Only a real directory brings the watch back.
    root.unlink()
    root.mkdir()
    (root / "real-file").touch()
    got = line.until(lambda m: m.get("path") == str(root / "real-file"))
    assert [m["type"] for m in got].count("watch_restored") == 1
    assert not [m for m in got if "secret" in m.get("path", "")]


def test_a_root_configured_through_a_symlink_is_resolved_at_load(
    start_daemon, workdir: str, private: Path
) -> None:
    real = Path(workdir) / "real"
    real.mkdir()
    link = Path(workdir) / "link"
    link.symlink_to(real)
    clock = Path(workdir) / "clock"
    daemon = start_daemon(config(watches=watch("w", link) + watch("clock", clock)))
    line, _ = daemon.subscribe()
    shown = daemon.status()["watches"][0]
    assert (shown["path"], shown["real_path"]) == (str(link), str(real))
    # Events carry the configured path; the directory watched is the one it named at load.
    (real / "a").touch()
    line.until(lambda m: m.get("path") == str(link / "a"))
    # Pointing the link elsewhere later changes nothing until a reload resolves it again.
    link.unlink()
    link.symlink_to(private)
    real.rename(Path(workdir) / "real-gone")
    line.until(is_type("watch_lost"))
    (private / "secret-later").touch()
    # Pending watches are looked at in one pass, in order: once "clock" (after "w") is
    # active, "w" was looked at since the link changed.
    clock.mkdir()
    wait_for(lambda: {w["name"]: w["state"] for w in daemon.status()["watches"]}["clock"]
             == "active", what="the next look at pending watches")
    assert daemon.status()["watches"][0]["state"] == "pending"
    daemon.reload()
    got = line.until(is_type("watch_restored"))
    assert not [m for m in got if "secret" in m.get("path", "")]
    # The reload resolved the link again (the operator's choice): the new target is watched.
    (private / "after-reload").touch()
    line.until(lambda m: m.get("path") == str(link / "after-reload"))
    assert daemon.status()["watches"][0]["real_path"] == str(private)


@pytest.fixture
def proc_mount(workdir: str) -> Iterator[Path]:
    mnt = Path(workdir) / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "proc", "proc", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount proc here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_a_pseudo_file_system_that_appears_at_a_root_is_refused(
    start_daemon, workdir: str
) -> None:
    later = Path(workdir) / "later"
    ok = Path(workdir) / "ok"
    ok.mkdir()
    daemon = start_daemon(config(watches=watch("p", later) + watch("w", ok)))
    line, _ = daemon.subscribe()
    later.mkdir()
    mounted = subprocess.run(["mount", "-t", "proc", "proc", str(later)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount proc here: {mounted.stderr.decode().strip()}")
    try:
        wait_for(lambda: "is on the pseudo file system proc" in daemon.log_text()
                 or daemon.status()["watches"][0]["state"] != "pending",
                 what="the watcher to look at the mount")
        (ok / "f").touch()
        line.until(lambda m: m.get("path") == str(ok / "f"))
        states = {w["name"]: w["state"] for w in daemon.status()["watches"]}
        assert states == {"p": "pending", "w": "active"}
    finally:
        subprocess.run(["umount", "-l", str(later)], check=True)


@pytest.mark.parametrize("path", ["/proc", "/proc/self", "/sys/kernel", "/proc/nope/deeper"])
def test_check_refuses_a_pseudo_file_system_as_a_root(tmp_path: Path, path: str) -> None:
    conf = tmp_path / "watchd.toml"
    conf.write_text(config("socket = \"/tmp/x.sock\"",
                           watches=watch("ok", tmp_path) + watch("bad", path)))
    done = run_watchd("--check", "--config", str(conf), cwd=REPO)
    assert done.returncode == 78, done
    assert f"{conf}: watch[1].path: {path!r} is on the pseudo file system" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_accepts_a_pseudo_file_system_mounted_below_a_root(
    tmp_path: Path, proc_mount: Path
) -> None:
    conf = tmp_path / "watchd.toml"
    conf.write_text(config("socket = \"/tmp/x.sock\"", watches=watch("w", proc_mount.parent)))
    done = run_watchd("--check", "--config", str(conf), cwd=REPO)
    assert done.returncode == 0, done
