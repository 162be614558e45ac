"""Access control by peer credentials, with a real client running as another user."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness import NOBODY, config, python_for_nobody, wait_for, watch

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user"),
]


# Runs as `nobody`: connects, sends each request line from argv, prints every line received
# until it has seen as many replies as requests plus the hello and, if asked, one event.
CLIENT = r"""
import json, socket, sys
path, want_event = sys.argv[1], sys.argv[2] == "1"
requests = [json.loads(a) for a in sys.argv[3:]]
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(path)
f = s.makefile("rb")
print(f.readline().decode().strip(), flush=True)
for r in requests:
    s.sendall(json.dumps(r).encode() + b"\n")
    while True:
        line = f.readline().decode().strip()
        print(line, flush=True)
        if json.loads(line)["type"] not in ("event",):
            break
if want_event:
    print("READY", flush=True)
    sys.stdin.readline()  # the test creates files, then lets us read on
    while True:
        line = f.readline().decode().strip()
        print(line, flush=True)
        if "marker" in line:
            break
"""


@pytest.fixture
def daemon(start_daemon, watched: Path, workdir: str):
    os.chmod(workdir, 0o755)
    for name in ("public", "secret", "group"):
        (watched / name).mkdir()
    return start_daemon(config(
        daemon_extra='socket_mode = "0666"',
        watches=watch("public", watched / "public")
        + watch("secret", watched / "secret", allow_users=["root"])
        + watch("group", watched / "group", allow_groups=[NOBODY])))


def as_nobody(path: str, *requests: dict, want_event: bool = False,
              extra_groups: Sequence[int] = ()) -> subprocess.Popen[str]:
    """CLIENT run as nobody (with only the supplementary groups given) on the socket at path."""
    return subprocess.Popen(
        [python_for_nobody(), "-c", CLIENT, path, "1" if want_event else "0",
         *[json.dumps(r) for r in requests]],
        user=NOBODY, group=NOBODY, extra_groups=list(extra_groups), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")


def test_named_forbidden_watch(daemon) -> None:
    proc = as_nobody(daemon.socket, {"op": "subscribe", "id": 1, "watch": "secret"},
                     {"op": "subscribe", "id": 2, "watch": "public"},
                     {"op": "subscribe", "id": 3, "watch": "group"})
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert lines[0]["type"] == "hello"
    # Answered as a name that is not configured: nobody cannot tell that "secret" exists.
    assert lines[1]["type"] == "error" and lines[1]["code"] == "unknown_watch"
    assert lines[1]["id"] == 1
    assert lines[1]["message"].startswith('"watch": no watch named "secret" is configured')
    assert "known: group, public" in lines[1]["message"]
    assert lines[2]["type"] == "subscribed"
    assert lines[3]["type"] == "subscribed"  # allowed by group


def test_subscribe_everything_never_leaks(daemon, watched: Path) -> None:
    proc = as_nobody(daemon.socket, {"op": "subscribe", "id": 1}, want_event=True)
    assert proc.stdout is not None and proc.stdin is not None
    for expected in ("hello", "subscribed"):
        assert expected in proc.stdout.readline()
    assert proc.stdout.readline().strip() == "READY"
    (watched / "secret" / "hidden").touch()
    (watched / "group" / "shared").touch()
    (watched / "public" / "marker").touch()
    proc.stdin.write("\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    paths = [json.loads(x)["path"] for x in out.splitlines() if x.startswith("{")]
    assert str(watched / "public" / "marker") in paths
    assert str(watched / "group" / "shared") in paths
    assert not [p for p in paths if "secret" in p]


def test_root_sees_everything(daemon, watched: Path) -> None:
    line, _ = daemon.subscribe(watch="secret")
    (watched / "secret" / "f").touch()
    line.until(lambda m: m.get("path") == str(watched / "secret" / "f"))


def test_status_shows_only_visible_watches(daemon, watched: Path) -> None:
    # Some activity on every watch first, so that hidden counts would show in the totals.
    root_line, _ = daemon.subscribe()
    for name in ("public", "secret", "group"):
        (watched / name / "sub").mkdir()
        (watched / name / "f").write_bytes(b"")
    root_line.until(lambda m: m.get("path") == str(watched / "group" / "f")
                    and m.get("kind") == "close_write")
    daemon.subscribe(watch="secret")  # someone else's subscription, on a watch nobody may not see

    def settled() -> dict[str, Any] | None:
        # The watches come in on their own inotify fds (in no set order across watches), and
        # the directory counts with the watcher's next heartbeat: wait until both are in.
        status = daemon.status()
        counts = [w["directories"] for w in status["watches"]]
        return status if status["events"] == 9 and counts == [2, 2, 2] else None

    full = wait_for(settled, what="9 events and 2 directories per watch in the status")
    by_name = {w["name"]: w for w in full["watches"]}
    assert set(by_name) == {"public", "secret", "group"}

    proc = as_nobody(daemon.socket, {"op": "status", "id": 1})
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "secret" not in out  # neither the watch's name nor its path
    status = json.loads(out.splitlines()[1])
    assert status["type"] == "status"
    assert [w["name"] for w in status["watches"]] == ["public", "group"]
    visible = ("public", "group")
    assert status["inotify_watches"] == sum(by_name[n]["directories"] for n in visible)
    assert status["inotify_watches"] < full["inotify_watches"]
    # Counters cover the watches it may see and the connections of its own user only.
    assert status["events"] == 6  # create sub, create f, close_write f, on two watches
    assert status["clients"] == 1
    assert status["subscriptions"] == 0
    assert status["view"] == "limited" and full["view"] == "full"


SUPPLEMENTARY = 4242  # a group nobody is given as a supplementary group only


@pytest.mark.parametrize("others", [0, 300], ids=["one-group", "300-groups"])
def test_supplementary_group_is_honoured(start_daemon, watched: Path, workdir: str,
                                         others: int) -> None:
    os.chmod(workdir, 0o755)
    (watched / "team").mkdir()
    # With 300 groups the allowed one sorts last, past what a 1 KiB answer (256 groups) holds.
    allowed = SUPPLEMENTARY + 10_000 if others else SUPPLEMENTARY
    extra = [*range(5000, 5000 + others), allowed]
    d = start_daemon(config(daemon_extra='socket_mode = "0666"',
                            watches=watch("team", watched / "team", allow_groups=[allowed])))
    proc = as_nobody(d.socket, {"op": "subscribe", "id": 1, "watch": "team"}, extra_groups=extra)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    reply = json.loads(out.splitlines()[1])
    assert reply["type"] == "subscribed", reply


def test_a_reload_that_revokes_access_says_so(daemon, watched: Path) -> None:
    proc = as_nobody(daemon.socket, {"op": "subscribe", "id": 1}, want_event=True)
    assert proc.stdout is not None and proc.stdin is not None
    for expected in ("hello", "subscribed"):
        assert expected in proc.stdout.readline()
    assert proc.stdout.readline().strip() == "READY"
    daemon.reload(config(
        daemon_extra='socket_mode = "0666"',
        watches=watch("public", watched / "public")
        + watch("secret", watched / "secret", allow_users=["root"])
        + watch("group", watched / "group", allow_users=["root"])))
    (watched / "group" / "after").touch()
    (watched / "public" / "marker").touch()
    proc.stdin.write("\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    msgs = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    lost = [m for m in msgs if m["type"] == "watch_lost"]
    assert [(m["watch"], m["reason"], m["path"]) for m in lost] == [
        ("group", "forbidden", str(watched / "group"))]
    assert not [m for m in msgs if m.get("path", "").startswith(str(watched / "group") + "/")]
