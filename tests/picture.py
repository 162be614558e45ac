"""A client's picture of a watched tree, built from events alone (synthetic ones included)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def listing(root: Path) -> set[str]:
    """Every path below root, as a client that lists the tree would see it."""
    out: set[str] = set()
    for parent, dirs, files in os.walk(root):
        out.update(os.path.join(parent, name) for name in dirs + files)
    return out


class Picture:
    """Paths below a root, kept up to date by applying events in order."""

    def __init__(self, paths: set[str]) -> None:
        self.paths = set(paths)
        self.moving: dict[int, set[str]] = {}  # cookie -> what a moved_from took out
        self.synthetic = 0

    def _take(self, path: str) -> set[str]:
        taken = {p for p in self.paths if p == path or p.startswith(path + "/")}
        self.paths -= taken
        return taken

    def apply(self, msg: dict[str, Any]) -> None:
        """Apply one message (anything but an event is ignored)."""
        if msg.get("type") != "event":
            return
        if msg.get("synthetic"):
            assert msg["mask"] == [], msg
            self.synthetic += 1
        kind, path = msg["kind"], msg["path"]
        if kind == "create":
            self.paths.add(path)
        elif kind == "delete":
            self._take(path)
        elif kind == "moved_from":
            self.moving[msg["cookie"]] = self._take(path)
        elif kind == "moved_to":
            src = msg.get("src_path")
            taken = self.moving.pop(msg["cookie"], None)
            self._take(path)  # a rename replaces what had the name
            if src is not None and taken is not None:
                self.paths |= {path + p[len(src):] for p in taken}
            else:
                self.paths.add(path)

    def apply_all(self, msgs: list[dict[str, Any]]) -> None:
        for msg in msgs:
            self.apply(msg)
