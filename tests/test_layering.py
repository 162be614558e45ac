"""Imports run one way on the daemon side too: the low modules import none of the parts that
wire them together, and the client side loads nothing of the daemon or the inotify binding."""

from __future__ import annotations

import subprocess
import sys

import pytest

import watchd.inotify
from tests.imports import imports_of, loaded_by, within

# The parts that wire the daemon together, and what runs them.
WIRING = frozenset({"watchd.server", "watchd.daemon", "watchd.holdback", "watchd.handler",
                    "watchd.supervisor", "watchd.status", "watchd.watchstate", "watchd.link",
                    "watchd.cli"})
# Modules below the wiring: values, rules and encoders it puts together.
LOW = ("watchd.flow", "watchd.replay", "watchd.subscription", "watchd.subscribe", "watchd.fanout",
       "watchd.notices", "watchd.broker", "watchd.channel", "watchd.events", "watchd.reasons",
       "watchd.protocol", "watchd.config", "watchd.requests")
# What a client has no use for: the daemon's own modules and the watcher's.
DAEMON_SIDE = WIRING | {"watchd.broker", "watchd.fanout", "watchd.notices", "watchd.replay",
                        "watchd.subscription", "watchd.subscribe", "watchd.flow", "watchd.channel",
                        "watchd.requests", "watchd.watcher", "watchd.systemd", "watchd.childlog",
                        "watchd.config"}
CLIENT_SIDE = ("watchd.client", "watchd.watchctl")
# The part of the inotify layer that talks to the kernel (ctypes, ioctl): the watcher's alone.
BINDING = "watchd.inotify._binding"


@pytest.mark.parametrize("low", LOW)
def test_the_low_modules_load_none_of_the_wiring(low: str) -> None:
    assert sorted(m for m in loaded_by(low) if within(m, WIRING)) == []


@pytest.mark.parametrize("client", CLIENT_SIDE)
def test_the_client_side_loads_nothing_of_the_daemon_nor_the_binding(client: str) -> None:
    loaded = loaded_by(client)
    assert sorted(m for m in loaded if within(m, DAEMON_SIDE) or m == BINDING) == []


def test_the_reader_follows_packages_and_leaves_hints_out() -> None:
    # The checks above must be able to fail: a chain through a package's __init__ is followed.
    assert BINDING not in loaded_by("watchd.inotify.flags")
    assert BINDING in loaded_by("watchd.inotify.tree")
    assert "watchd.server" in loaded_by("watchd.handler")  # through watchd.status
    assert "watchd.supervisor" not in loaded_by("watchd.holdback")  # a hint only
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import watchd.daemon\n"
    assert imports_of(source, "watchd", hints=False) == {"typing", "typing.TYPE_CHECKING"}


def test_a_client_loads_no_ctypes_binding_when_it_runs() -> None:
    # What the interpreter really loads, lazy imports included.
    code = ("import sys, watchd.client, watchd.watchctl, watchd.protocol, watchd.events; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert "watchd.inotify.flags" in out  # the kernel bits the event kinds are made of
    assert [m for m in out if m in (BINDING, "watchd.inotify.errors", "ctypes")] == []
    assert [m for m in out if within(m, DAEMON_SIDE)] == []


def test_the_inotify_package_still_offers_every_name_it_lists() -> None:
    for name in watchd.inotify.__all__:
        assert getattr(watchd.inotify, name) is not None, name
    assert watchd.inotify.InotifyFd.__module__ == BINDING
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = watchd.inotify.no_such_name  # type: ignore[attr-defined]


@pytest.mark.parametrize("side", ["watchd.channel", "watchd.watcher"])
def test_the_watcher_side_loads_nothing_of_the_client_protocol(side: str) -> None:
    # The reasons it reports live in the leaf watchd.reasons, which the protocol imports too.
    assert sorted(m for m in loaded_by(side) if within(m, {"watchd.protocol"})) == []
