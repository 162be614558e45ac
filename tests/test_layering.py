"""Imports run one way on the daemon side too: the low modules import none of the parts that
wire them together, and the client side loads nothing of the daemon or the inotify binding."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import watchd.inotify
from tests.inotify.test_layering import PACKAGE

# The parts that wire the daemon together, and what runs them.
WIRING = frozenset({"watchd.server", "watchd.daemon", "watchd.holdback", "watchd.handler",
                    "watchd.supervisor", "watchd.status", "watchd.watchstate", "watchd.cli"})
# Modules below the wiring: values, rules and encoders it puts together.
LOW = ("watchd.flow", "watchd.replay", "watchd.subscription", "watchd.fanout", "watchd.broker",
       "watchd.channel", "watchd.events", "watchd.reasons", "watchd.protocol", "watchd.config",
       "watchd.requests")
# What a client has no use for: the daemon's own modules and the watcher's.
DAEMON_SIDE = WIRING | {"watchd.broker", "watchd.fanout", "watchd.replay", "watchd.subscription",
                        "watchd.flow", "watchd.channel", "watchd.requests", "watchd.watcher",
                        "watchd.systemd", "watchd.childlog", "watchd.config"}
CLIENT_SIDE = ("watchd.client", "watchd.watchctl")
# The part of the inotify layer that talks to the kernel (ctypes, ioctl): the watcher's alone.
BINDING = "watchd.inotify._binding"


def is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING"))


def runtime_imports(source: str, package: str) -> set[str]:
    """The modules of watchd an import in `source` may load when it runs (hints left out):
    for `from m import name`, m, and m.name where that is a module."""
    found: set[str] = set()
    todo: list[ast.AST] = [ast.parse(source)]
    while todo:
        node = todo.pop()
        if is_type_checking(node):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names
                         if source_of(f"{module}.{alias.name}") is not None)
        todo.extend(ast.iter_child_nodes(node))
    return {m for m in found if m == "watchd" or m.startswith("watchd.")}


def source_of(module: str) -> Path | None:
    if not module.startswith("watchd"):
        return None
    base = PACKAGE.parent.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def loaded_by(module: str) -> set[str]:
    """Every module of watchd that importing `module` loads (its packages' __init__ included),
    read from the source."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            prefix = ".".join(parts[:i])
            path = source_of(prefix)
            if path is None or prefix in seen:
                continue
            seen.add(prefix)
            package = prefix if path.name == "__init__.py" else prefix.rpartition(".")[0]
            todo.extend(runtime_imports(path.read_text(), package))
    return seen


def within(module: str, names: frozenset[str] | set[str]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


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
    assert runtime_imports(source, "watchd") == set()


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
