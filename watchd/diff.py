"""The differences between an index and a fresh scan, as events a client can apply in order.

`diff(old, new, cookies)` compares two `Dirs` (see watchd.index) and returns synthetic events,
each (mask, cookie, path, src_path) like a kernel event's item, with SYNTHETIC in the mask:

* `delete` for a vanished path, children before parents; `create` for a new one, parents
  before children;
* a `moved_from` / `moved_to` pair (one cookie, `src_path` on the second) for a path that kept
  its inode under another name. A renamed directory is one pair: what it holds moves with it,
  and only what changed inside it is reported, under its new name;
* `modify` for a file whose size or mtime changed (or that was replaced under its name), and
  `attrib` for a mode or owner change, last, at the path's final name.

How and in which order: watchd.diff_match finds the differences (directories matched by inode,
what is left over paired into moves), watchd.diff_order puts their events in an order a client
can apply (by simulating its tree where there are moves).
"""

from __future__ import annotations

__all__ = ["SYNTHETIC", "Diff", "diff", "keep_unentered"]

from collections.abc import Iterator

from watchd.diff_match import differences
from watchd.diff_order import Diff, in_order
from watchd.events import SYNTHETIC
from watchd.listing import AtRest, Dirs, Index, entries, freeze, split, subtree_keys
from watchd.records import IS_DIR, inode

_EMPTY: dict[str, int] = {}


def diff(old: Dirs, new: Dirs, root: str, cookies: Iterator[int]) -> Diff:
    """The events that turn a client's picture of `old` into `new` (see the module)."""
    return in_order(old, new, differences(old, new, root), cookies)


def keep_unentered(old: Index | Dirs, new: AtRest) -> None:
    """Complete a scan at rest (in place) with what the index held below the directories the
    scan listed but could not enter.

    Such a directory went (or was replaced) between its parent's listing and its own: the
    events of that change come after the scan. Taken as empty, its contents would be reported
    deleted, and the move that follows would take the emptied directory where it went. Kept
    as the index had it (the same directory: same inode, or one the index did not know the
    inode of), its events take it, contents and all, where it went.
    """
    # Such a directory is in the index and not in the scan, and its parent is in both: looked
    # for that way, the directories listed alike (most) are not thawed.
    for path in [key for key in old if key not in new]:
        parent, name = split(path)
        listed = new.get(parent)
        if listed is None:
            continue
        record = dict(entries(listed)).get(name)
        was = dict(entries(old.get(parent, _EMPTY))).get(name)
        if (record is None or was is None or not record & IS_DIR or not was & IS_DIR
                or inode(was) not in (0, inode(record))):
            continue
        for key in subtree_keys(old, path):
            kept = old[key]
            # At rest in the scan too: a copy, never the index's own (changing) dict.
            new[key] = freeze(kept) if isinstance(kept, dict) else kept
