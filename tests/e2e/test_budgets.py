"""Each watch's share of the inotify watch limit (max_directories): kept, announced, healed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import config, is_event, is_type, wait_for, watch
from tests.picture import Picture, listing
from watchd.config import parse_config
from watchd.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


def watch_state(daemon, name: str) -> dict:
    return next(w for w in daemon.status()["watches"] if w["name"] == name)


def test_a_watch_over_its_budget_starves_no_other_and_heals(start_daemon, watched: Path) -> None:
    pub, priv = watched / "pub", watched / "priv"
    pub.mkdir()
    priv.mkdir()
    daemon = start_daemon(config(watches=watch("pub", pub, max_directories=5)
                                 + watch("priv", priv)))
    line, sid = daemon.subscribe(watch=["pub"])
    other, _ = daemon.subscribe(watch=["priv"])
    for i in range(8):
        (pub / f"d{i}").mkdir()  # the root and d0..d3 fill the budget; d4..d7 stay unwatched
    notice = line.until(is_type("watch_degraded"))[-1]
    assert notice == {"type": "watch_degraded", "subscription": sid, "watch": "pub",
                      "unwatched": notice["unwatched"], "reason": "max_directories"}
    assert 1 <= notice["unwatched"] <= 4
    state = wait_for(lambda: (s := watch_state(daemon, "pub"))["unwatched"] == 4 and s,
                     what="every directory past the budget counted")
    assert (state["state"], state["directories"]) == ("degraded", 5)
    assert "max_directories" in state["problem"]
    # The other watch takes new directories as ever.
    (priv / "new").mkdir()
    (priv / "new" / "f").touch()
    other.until(is_event(priv / "new" / "f"))
    assert not [m for m in other.pushed if m.get("type") == "watch_degraded"]

    # Watches freed: the directories left out are watched, and the subscribers told to rescan.
    for i in range(4):
        (pub / f"d{i}").rmdir()
    rescan = line.until(is_type("overflow"))[-1]
    assert (rescan["reason"], rescan["watch"]) == ("watch_limit", "pub")
    assert watch_state(daemon, "pub")["state"] == "active"
    (pub / "d7" / "f").touch()
    line.until(is_event(pub / "d7" / "f"))


def test_a_healed_limit_publishes_only_what_changed_meanwhile(start_daemon,
                                                              watched: Path) -> None:
    # With an index (resync, the default), the directories a limit left out are not
    # reported whole once watched: only what changed in them while nobody watched.
    pub = watched / "pub"
    for i in range(6):
        (pub / f"d{i}").mkdir(parents=True)
        (pub / f"d{i}" / "old").write_text("x")
    daemon = start_daemon(config(watches=watch("pub", pub, max_directories=3)))
    line, _ = daemon.subscribe()
    wait_for(lambda: watch_state(daemon, "pub")["state"] == "degraded"
             and watch_state(daemon, "pub")["tracked"] == 12, what="degraded, indexed")
    picture = Picture(listing(pub))
    for i in range(6):
        (pub / f"d{i}" / "new").write_text("y")  # unseen where the directory is not watched
    daemon.reload(config(watches=watch("pub", pub, max_directories=100)))
    got = line.until(is_type("resynced"), timeout=30)
    notice = next(m for m in got if m["type"] == "overflow")
    assert (notice["reason"], notice["watch"], notice["resync"]) == ("watch_limit", "pub", True)
    picture.apply_all(got)
    assert picture.paths == listing(pub)
    synthetic = [m for m in got if m.get("synthetic")]
    assert synthetic and all(m["kind"] == "create" and m["path"].endswith("/new")
                             for m in synthetic)
    assert got[-1]["changes"] == len(synthetic)
    assert watch_state(daemon, "pub")["state"] == "active"


@pytest.mark.parametrize(("budgets", "kernel", "expected"), [
    ((None, None, None), 9000, (3000, 3000, 3000)),  # the kernel's limit, shared equally
    ((100, None, None), 9000, (100, 4450, 4450)),  # less what the others take themselves
    ((100, 200, 300), 9000, (100, 200, 300)),
    ((9000, None, None), 9000, (9000, 1, 1)),  # never nothing
    ((None, None, None), None, (None, None, None)),  # the kernel's limit unknown: no budget
])
def test_the_default_budget_is_a_fair_share(budgets, kernel, expected) -> None:
    text = "".join(watch(name, f"/srv/{name}", **({} if b is None else {"max_directories": b}))
                   for name, b in zip("abc", budgets, strict=True))
    parsed = parse_config(text, "/etc/watchd.toml")
    assert parsed.directory_budgets(kernel) == dict(zip("abc", expected, strict=True))


@pytest.mark.parametrize("value", ["0", "-1", "true", '"10"'])
def test_max_directories_must_be_a_positive_integer(value: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(watch("a", "/srv/a") + f"max_directories = {value}\n", "/etc/w.toml")
    assert "watch[0].max_directories" in str(e.value)
