"""How an index and a scan lay a tree out, and the functions that read that layout.

One entry per directory, `{dir path: children}`, so a path costs its base name (not its full
path) and its record. `Dirs` has a dict `{name: record}` as each directory's children (what
watchd.diff reads). A directory at rest (`Frozen`, see freeze) has its names joined into one
string and its records packed in 12 bytes each: about half the memory of a dict of str and int
objects. The watcher's scan comes so (`AtRest`, watchd.scan); the index (watchd.index) keeps
its directories so until events touch them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from itertools import repeat
from typing import Literal

from watchd.records import IS_DIR, pack

# A snapshot or an index: {directory path: {name: record}}. Every directory that was listed
# has a key, even an empty one; the root's key is the watch's path.
Dirs = dict[str, dict[str, int]]


def join(parent: str, name: str) -> str:
    return parent + "/" + name if parent != "/" else "/" + name


def split(path: str) -> tuple[str, str]:
    """(parent, name) of an absolute path."""
    parent, _, name = path.rpartition("/")
    return parent or "/", name


# A directory at rest: its names joined by "/" (which no name holds) and its records, each in
# _RECORD_BYTES little-endian bytes, in the same order. A str and a bytes per directory instead
# of a dict, a str and an int per path.
Frozen = tuple[str, bytes]
Children = dict[str, int] | Frozen
# The index's own layout: a scan's, but with directories at rest.
Index = dict[str, Children]
# A scan as the watcher sends it (watchd.scan): every directory at rest.
AtRest = dict[str, Frozen]
# Any of the three, read only (a scan at rest, as dicts, or an index).
Listing = Mapping[str, Children]
_RECORD_BYTES = 12  # 90 bits
_LITTLE: Literal["little"] = "little"


def freeze(children: dict[str, int]) -> Frozen:
    """A directory's entries at rest."""
    return ("/".join(children),
            b"".join(map(int.to_bytes, children.values(), repeat(_RECORD_BYTES), repeat(_LITTLE))))


def record_bytes(st: os.stat_result) -> bytes:
    """The record of a path from its lstat, as a directory at rest holds it (see scan)."""
    return pack(st).to_bytes(_RECORD_BYTES, _LITTLE)


def at_rest(dirs: Listing) -> AtRest:
    """Every directory of dirs at rest (those that are already stay as they are)."""
    return {key: c if isinstance(c, tuple) else freeze(c) for key, c in dirs.items()}


def thaw(children: Children) -> dict[str, int]:
    """A directory's entries as a dict (a dict is returned as it is)."""
    if isinstance(children, dict):
        return children
    names, packed = children
    if not packed:
        return {}
    size = _RECORD_BYTES
    return dict(zip(names.split("/"), map(
        int.from_bytes, [packed[i : i + size] for i in range(0, len(packed), size)],
        repeat(_LITTLE)), strict=True))


def thawed(dirs: Listing) -> Dirs:
    """An index as a scan's layout (a copy where a directory is at rest)."""
    return {key: thaw(children) for key, children in dirs.items()}


def entries(children: Children) -> Iterable[tuple[str, int]]:
    """(name, record) of a directory, in either form, without thawing it."""
    return children.items() if isinstance(children, dict) else thaw(children).items()


def count(dirs: Listing) -> int:
    """How many paths a snapshot or an index tracks."""
    return sum(len(c) if isinstance(c, dict) else len(c[1]) // _RECORD_BYTES
               for c in dirs.values())


def walk(dirs: Listing, top: str) -> Iterator[tuple[str, int]]:
    """(path, record) of everything below `top` in dirs, parents before children."""
    stack = [top]
    while stack:
        parent = stack.pop()
        children = dirs.get(parent)
        if children is None:
            continue
        for name, record in entries(children):
            path = join(parent, name)
            yield path, record
            if record & IS_DIR:
                stack.append(path)


def subtree_keys(dirs: Listing, top: str) -> list[str]:
    """The directory keys of `top` and of the directories below it that dirs holds."""
    keys = [top] if top in dirs else []
    keys.extend(path for path, record in walk(dirs, top) if record & IS_DIR and path in dirs)
    return keys


def keys_below(dirs: Listing, loose: set[str], path: str) -> tuple[list[str], list[str]]:
    """The directory keys of `path` and of all that is below it in dirs: those its listings
    lead to, and those below it that `loose` names (keys no listing leads to, see
    TreeIndex._loose), with what their own listings lead to; and, of these, the loose ones
    themselves, which are taken out of `loose` (moved, to be marked again, or dropped)."""
    keys = subtree_keys(dirs, path)
    if not loose:
        return keys, []
    prefix = path + "/"
    below = [key for key in loose if key.startswith(prefix)]
    if not below:
        return keys, []
    found = dict.fromkeys(keys)
    for key in below:
        loose.discard(key)
        found.update(dict.fromkeys(subtree_keys(dirs, key)))
    return list(found), [key for key in below if key in found]


def unlisted(dirs: Listing, root: str) -> list[str]:
    """The keys of dirs that their parent's listing does not name (without thawing it)."""
    names: dict[str, set[str]] = {}
    out: list[str] = []
    for key in dirs:
        if key == root:
            continue
        parent, name = split(key)
        listed = names.get(parent)
        if listed is None:
            children = dirs.get(parent)
            listed = names[parent] = (set() if children is None else set(children)
                                      if isinstance(children, dict)
                                      else set(children[0].split("/")))
        if name not in listed:
            out.append(key)
    return out
