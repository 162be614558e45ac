"""Which directories of an index and a scan a comparison (watchd.diff) needs to look at:
those that differ, and what the diff looks them up by. Most of a tree is alike after a loss,
and thawing all of it would cost more than the comparison itself."""

from __future__ import annotations

from watchd.index import TreeIndex
from watchd.listing import AtRest, Dirs, Index, entries, join, split, subtree_keys, thaw
from watchd.records import IS_DIR, inode


def compared(index: TreeIndex, scan: AtRest) -> tuple[Dirs, Dirs]:
    """An index and a scan as two Dirs for watchd.diff, holding only what it needs.

    A directory listed alike in both (at rest, one equality of a str and a bytes: most of
    them, after a loss) adds no difference of its own, so only the directories that differ
    or are on one side only go in, thawed, with what the diff looks them up by: their
    ancestors (a directory's record is in its parent) and their subdirectories (a
    subdirectory's record may differ while its own listing does not), and all that is below
    a subdirectory that is not the same directory on both sides. The diff of these
    equals the diff of everything: tests/test_resync_compare.py holds it to that.
    """
    old, root = index.dirs, index.root
    differ = old.keys() ^ scan.keys()
    for key, listed in scan.items():
        kept = old.get(key)
        if kept is not None and kept != listed and thaw(kept) != thaw(listed):
            differ.add(key)
    wanted = set(differ)
    # A subdirectory that is not one directory on both sides (on one side only, or another
    # inode) may be matched elsewhere or not at all, and then all it holds is a difference,
    # even where its own listings are alike: the index may hold it at a stale path too, with
    # its contents, and without them here the diff took them for unchanged.
    # Each subtree walked once: the outermost first (shortest), those below it then found in
    # it; walking each again would cost directories times depth (a deep new chain).
    below: set[str] = set()
    for top in sorted(_unlike_subdirs(old, scan, differ), key=len):
        if top not in below:
            for side in (old, scan):
                below.update(subtree_keys(side, top))
    wanted |= below
    # Each key climbed from once: its ancestors are in from then on. Climbing again from every
    # key that differs would take each of a new chain's directories up to the root, a parent
    # (a new string, hashed) per level: directories times depth.
    climbed: set[str] = set()
    for key in differ:
        for side in (old, scan):
            if (children := side.get(key)) is not None:
                wanted.update(join(key, name) for name, record in entries(children)
                              if record & IS_DIR)
        while key not in climbed and key != root and len(key) > len(root):
            climbed.add(key)
            key = split(key)[0]
            wanted.add(key)
    # In the order of the whole layouts, so that the events come in the same order too.
    return ({key: thaw(c) for key, c in old.items() if key in wanted},
            {key: thaw(c) for key, c in scan.items() if key in wanted})


def _unlike_subdirs(old: Index, scan: AtRest, differ: set[str]) -> list[str]:
    """The subdirectories of the directories that differ that are not the same directory on
    both sides: listed on one side only, or with another inode or type."""
    out: list[str] = []
    for key in differ:
        before = dict(entries(old[key])) if key in old else {}
        after = dict(entries(scan[key])) if key in scan else {}
        for name in before.keys() | after.keys():
            was, now = before.get(name), after.get(name)
            if was is None or now is None:
                unlike = (was or now or 0) & IS_DIR
            else:
                unlike = (was | now) & IS_DIR and (
                    (was ^ now) & IS_DIR or inode(was) != inode(now))
            if unlike:
                out.append(join(key, name))
    return out
