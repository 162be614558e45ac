"""The inotify layer is the core: nothing in it imports the rest of watchd (read from source)."""

from __future__ import annotations

from pathlib import Path

import watchd.inotify
from tests.imports import PACKAGE, imports_of, module_name, only_watchd, watchd_imports, within

LAYER = Path(watchd.inotify.__file__).parent

# Modules of watchd outside the layer that it may still import: leaves that import nothing of
# watchd themselves (checked below), so no path leads from the layer back up to it. The root
# of the exception tree (InotifyError is a WatchdError) and the glob compiler (`exclude`).
LEAVES = frozenset({"watchd.errors", "watchd.globs"})


def in_layer(module: str) -> bool:
    return within(module, {"watchd.inotify"})


def test_the_inotify_layer_imports_nothing_of_watchd_above_it() -> None:
    modules = sorted(LAYER.rglob("*.py"))
    assert LAYER / "tree.py" in modules  # the recursive tree is part of the layer
    upward = {
        module_name(path): sorted(
            m for m in watchd_imports(path)
            if not in_layer(m) and not within(m, LEAVES))
        for path in modules
    }
    assert {name: found for name, found in upward.items() if found} == {}


def test_the_leaves_it_may_import_import_nothing_of_watchd() -> None:
    for leaf in LEAVES:
        path = PACKAGE / (leaf.removeprefix("watchd.").replace(".", "/") + ".py")
        assert watchd_imports(path) == set(), leaf


def test_no_module_is_left_where_the_tree_was() -> None:
    assert not (PACKAGE / "tree.py").exists()
    importers = [
        module_name(path) for path in sorted(PACKAGE.rglob("*.py"))
        if "watchd.tree" in watchd_imports(path)
    ]
    assert importers == []


def test_the_import_reader_sees_upward_imports() -> None:
    # The check above must be able to fail: an upward import is caught in every form.
    source = (
        "import watchd.daemon\n"
        "from watchd import watcher\n"
        "from watchd.broker import Broker\n"
        "from .. import server\n"
        "from ..protocol import encode\n"
        "from . import fs\n"
        "import os\n"
    )
    found = only_watchd(imports_of(source, "watchd.inotify"))
    assert {m for m in found if not in_layer(m)} == {
        "watchd", "watchd.daemon", "watchd.watcher", "watchd.broker", "watchd.broker.Broker",
        "watchd.server", "watchd.protocol", "watchd.protocol.encode",
    }
    assert "watchd.inotify.fs" in found
