"""What differs between an index and a fresh scan, before it is put in order (see watchd.diff).

Directories are matched first, by inode (a directory replaced under its own name, by name):
each old directory's entries are compared with those of the directory it became, so a renamed
directory's contents are compared where they are, not as vanished and new. What is left over on
either side is paired by inode into moves; the rest are deletes and creates.
"""

from __future__ import annotations

__all__ = ["Differences", "depth", "differences"]

from dataclasses import dataclass

from watchd.listing import Dirs, join, split
from watchd.records import IS_DIR, content_of, inode

_EMPTY: dict[str, int] = {}


@dataclass(slots=True)
class Differences:
    """The paths that differ, unordered. Mutable: ordering them adds to `came` what a move
    that could not be made leaves to create."""

    gone: dict[str, int]  # old path -> record: not there any more as such
    came: dict[str, int]  # new path -> record: not there before as such
    kept: list[tuple[str, int, int]]  # (new path, old, new) of one object
    moves: dict[str, str]  # old path -> new path
    modified: list[tuple[str, int, int]]  # (path, old, new) of a file replaced under its name


def differences(old: Dirs, new: Dirs, root: str) -> Differences:
    """What differs between `old` and `new`, both of the tree at `root` (see the module)."""
    return _Matcher(old, new, root).run()


def depth(path: str) -> int:
    """How deep a path is, to sort parents before children."""
    return path.count("/")


def _key(record: int) -> tuple[int, int]:
    """What a move keeps: the inode, and for a file its size and mtime too (a new file that
    happens to reuse a deleted one's inode is not taken for it moved)."""
    if record & IS_DIR:
        return inode(record), -1
    return inode(record), content_of(record)


def _dir_records(dirs: Dirs, root: str) -> dict[str, int]:
    """path -> record of every listed directory but the root."""
    out: dict[str, int] = {}
    for path in dirs:
        if path == root:
            continue
        parent, name = split(path)
        record = dirs.get(parent, _EMPTY).get(name)
        if record is not None:
            out[path] = record
    return out


def _unique_by_inode(records: dict[str, int]) -> dict[tuple[int, int], str]:
    """(inode, is_dir) -> path, for the inodes that only one path has (hard links: none)."""
    found: dict[tuple[int, int], str | None] = {}
    for path, record in records.items():
        key = _key(record)
        if key[0]:
            found[key] = None if key in found else path
    return {key: path for key, path in found.items() if path is not None}


class _Matcher:
    """One comparison's working state while its differences are found."""

    def __init__(self, old: Dirs, new: Dirs, root: str) -> None:
        self.old, self.new, self.root = old, new, root
        self.gone: dict[str, int] = {}
        self.came: dict[str, int] = {}
        self.kept: list[tuple[str, int, int]] = []
        self.moves: dict[str, str] = {}

    def run(self) -> Differences:
        same_dir = self.match_dirs()
        self.compare(same_dir)
        self.pair(same_dir)
        modified = self.replaced(same_dir)
        return Differences(self.gone, self.came, self.kept, self.moves, modified)

    def match_dirs(self) -> dict[str, str]:
        """old directory path -> the new path of the same directory."""
        old_dirs = _dir_records(self.old, self.root)
        new_dirs = _dir_records(self.new, self.root)
        by_ino = _unique_by_inode(new_dirs)
        same: dict[str, str] = {self.root: self.root} if self.root in self.new else {}
        # A directory still at its path with its inode is itself, first: the index may hold
        # its inode at a second path too (moved, its rename lost in an overflow, and reported
        # by the walk of the directory it went to), and that stale path must not take it, or
        # it would be emptied here and its contents reported nowhere.
        for path, record in old_dirs.items():
            dst = by_ino.get(_key(record)) if inode(record) else None
            if dst == path:
                same[path] = dst
        taken: set[str] = set(same.values())
        # Otherwise by inode, where the inode is one old path's: of two stale paths (the
        # directory moved on again), neither can be said to be the one a client has there. A
        # match here is published as a move of the old path, and that pair is only made for an
        # inode one path has (see pair): matched without it, its contents went unreported.
        unique = set(_unique_by_inode(old_dirs).values())
        for path, record in old_dirs.items():
            if path in same or path not in unique:
                continue
            dst = by_ino.get(_key(record)) if inode(record) else None
            if dst is not None and dst not in taken:
                same[path] = dst
                taken.add(dst)
        # A directory replaced under its own name (or one whose inode was never known) is the
        # same directory to a client: its entries are compared by name.
        # Parents first: by name only in a directory that is itself the same at its path.
        for path in sorted(old_dirs, key=depth):
            if (path not in same and path in new_dirs and path not in taken
                    and same.get(split(path)[0]) == split(path)[0]):
                same[path] = path
                taken.add(path)
        # A directory that no listing names on either side (a watch's `include` patterns list
        # only the names they take, so its directories are known by their keys alone) is, to a
        # client, its path: the same where its parent is.
        for path in sorted(self.old.keys() & self.new.keys(), key=depth):
            if (path not in same and path not in old_dirs and path not in new_dirs
                    and path not in taken and same.get(split(path)[0]) == split(path)[0]):
                same[path] = path
                taken.add(path)
        # One that stays at its path in a directory that went (replaced by another under its
        # name) is gone with it to a client, and made anew in the other.
        for path in sorted(same, key=depth):
            if same[path] == path and path != self.root and split(path)[0] not in same:
                del same[path]
        return same

    def compare(self, same_dir: dict[str, str]) -> None:
        old, new = self.old, self.new
        images: set[str] = set()
        for parent, before in old.items():
            dst = same_dir.get(parent)
            if dst is None:
                for name, record in before.items():
                    self.gone[join(parent, name)] = record
                continue
            images.add(dst)
            after = new.get(dst, _EMPTY)
            if dst == parent and before == after:
                continue  # the common case, compared at C speed
            for name, record in before.items():
                other = after.get(name)
                if other is None:
                    self.gone[join(parent, name)] = record
                elif self._same(join(parent, name), record, join(dst, name), other, same_dir):
                    if other != record:
                        self.kept.append((join(dst, name), record, other))
                else:
                    self.gone[join(parent, name)] = record
                    self.came[join(dst, name)] = other
            for name, record in after.items():
                if name not in before:
                    self.came[join(dst, name)] = record
        for parent, after in new.items():
            if parent not in images:
                for name, record in after.items():
                    self.came[join(parent, name)] = record

    @staticmethod
    def _same(src: str, before: int, dst: str, after: int, same_dir: dict[str, str]) -> bool:
        """Whether two records at one name are one object to a client."""
        if (before ^ after) & IS_DIR:
            return False
        if before & IS_DIR:
            # Only as match_dirs paired them: a directory it left unpaired (its name taken by
            # another that moved there) is gone, or its contents would be both gone with it and
            # kept under the other.
            return same_dir.get(src) == dst
        return inode(before) == inode(after) or not inode(before)

    def pair(self, same_dir: dict[str, str]) -> None:
        """Pair a vanished path with a new one of the same inode and type, where unambiguous."""
        came_by = _unique_by_inode(self.came)
        gone_by = _unique_by_inode(self.gone)
        for key, src in gone_by.items():
            dst = came_by.get(key)
            if dst is None:
                continue
            # At one path, it moves only if its directory moved away (it comes back to the
            # name). In a directory that went and another that took its name: a delete and a
            # create, for a client has no name to move it through.
            parent = split(src)[0]
            if dst != src or same_dir.get(parent, parent) != parent:
                self.moves[src] = dst

    def replaced(self, same_dir: dict[str, str]) -> list[tuple[str, int, int]]:
        """A file that kept its name but not its inode, and paired with nothing: modified.

        Its name in the same directory: one path in two directories (the old one moved away,
        another took its name) is a delete and a create.
        """
        moved_to = set(self.moves.values())
        modify: list[tuple[str, int, int]] = []
        for path in [p for p in self.gone if p in self.came]:
            before, after = self.gone[path], self.came[path]
            if (before | after) & IS_DIR or path in self.moves or path in moved_to:
                continue
            parent = split(path)[0]
            if same_dir.get(parent) != parent:
                continue
            del self.gone[path], self.came[path]
            modify.append((path, before, after))
        return modify
