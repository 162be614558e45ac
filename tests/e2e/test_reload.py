"""SIGHUP reload: only the difference is applied, clients stay, a bad file changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import config, is_event, is_type, wait_for, watch

pytestmark = pytest.mark.timeout(60)


def test_reload_adds_removes_and_changes(start_daemon, watched: Path) -> None:
    for name in ("a", "b", "c"):
        (watched / name).mkdir()
    daemon = start_daemon(config(watches=watch("a", watched / "a") + watch("b", watched / "b")))
    everything, _ = daemon.subscribe()
    only_b, _ = daemon.subscribe(watch="b")
    hello_instance = everything.hello["instance"]

    daemon.reload(config(watches=watch("a", watched / "a", events=["delete"])
                         + watch("c", watched / "c")))

    # b was removed: its subscribers are told, with reason "removed".
    lost = only_b.until(is_type("watch_lost"))[-1]
    assert lost == {"type": "watch_lost", "subscription": lost["subscription"], "watch": "b",
                    "path": str(watched / "b"), "reason": "removed"}
    # c was added and delivers; a was changed (now deletes only); same connection throughout.
    (watched / "c" / "new").touch()
    got = everything.until(is_event(watched / "c" / "new"))
    # The removed b is the only notice: a changed or added watch is not a lost one coming back.
    notices = [m for m in got if m["type"] != "event"]
    assert [(m["type"], m["watch"], m["reason"]) for m in notices] == [
        ("watch_lost", "b", "removed")]
    (watched / "a" / "f").touch()
    (watched / "a" / "f").unlink()
    got = everything.until(is_event(watched / "a" / "f"))
    assert got[-1]["kind"] == "delete"
    status = everything.request({"op": "status"})
    assert status["reloads"] == 1
    assert status["last_reload_error"] is None
    assert status["instance"] == hello_instance
    assert sorted(w["name"] for w in status["watches"]) == ["a", "c"]
    assert all(w["state"] == "active" for w in status["watches"])


def test_invalid_reload_keeps_the_old_configuration(start_daemon, watched: Path) -> None:
    text = config(watches=watch("w", watched))
    daemon = start_daemon(text)
    line, _ = daemon.subscribe()
    daemon.write_config(text + '\n[[watch]]\nname = "bad name!"\npath = "relative"\n')
    daemon.reload()
    status = line.request({"op": "status"})
    assert status["reloads"] == 0
    error = status["last_reload_error"]
    assert daemon.config in error and "watch[1].name" in error
    assert "reload refused" in daemon.log_text()
    # The old configuration still runs, for the same client.
    (watched / "still").touch()
    line.until(is_event(watched / "still"))
    # STATUS= says why.
    assert any("reload refused" in m for m in daemon.notify.messages)


def test_socket_change_needs_a_restart(start_watching, watched: Path, workdir: str) -> None:
    daemon = start_watching()
    daemon.reload(config(socket_line=f'socket = "{workdir}/other.sock"',
                         watches=watch("w", watched)))
    status = daemon.status()  # still served on the old socket
    assert status["reloads"] == 1
    assert status["restart_needed"] == ["daemon.socket"]
    assert "restart" in daemon.log_text()


def test_reload_changes_limits(start_watching, watched: Path) -> None:
    daemon = start_watching("max_subscriptions = 1")
    line = daemon.connect()
    assert line.request({"op": "subscribe", "id": 1})["type"] == "subscribed"
    assert line.request({"op": "subscribe", "id": 2})["code"] == "too_many_subscriptions"
    daemon.reload(config(daemon_extra="max_subscriptions = 3", watches=watch("w", watched)))
    assert line.request({"op": "subscribe", "id": 3})["type"] == "subscribed"


def test_many_reloads_keep_every_client(start_watching, watched: Path) -> None:
    daemon = start_watching()
    lines = [daemon.subscribe()[0] for _ in range(5)]
    for i in range(5):
        daemon.reload(config(watches=watch("w", watched, exclude=[f"x{i}"])))
    (watched / "after").touch()
    for line in lines:
        line.until(is_event(watched / "after"))
    wait_for(lambda: daemon.status()["reloads"] == 5, what="five reloads counted")
