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

How. Directories are matched first, by inode (a directory replaced under its own name, by
name): each old directory's entries are compared with those of the directory it became, so a
renamed directory's contents are compared where they are, not as vanished and new. What is left
over on either side is paired by inode into moves; the rest are deletes and creates.

Order. Without moves, deletes then creates then the rest is always applicable. With moves, a
small simulation of the tree as the client has it decides: a delete goes when nothing is left
below it; a move when its source is where the client has it, its destination is free and its
destination's parent exists and is not about to move away or go; a create likewise. Moves that
block one another (names swapped in a cycle) are turned into deletes and creates.
"""

from __future__ import annotations

__all__ = ["SYNTHETIC", "Diff", "diff", "keep_unentered"]

from collections.abc import Iterator
from dataclasses import dataclass, field

from watchd.events import SYNTHETIC
from watchd.listing import AtRest, Dirs, Index, entries, freeze, join, split, subtree_keys
from watchd.records import (
    IN_ATTRIB,
    IN_CREATE,
    IN_DELETE,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IS_DIR,
    Item,
    attr_of,
    content_of,
    inode,
)

_EMPTY: dict[str, int] = {}


@dataclass(slots=True)
class Diff:
    """The outcome of a comparison: the events in order, and how many differences they are."""

    items: list[Item] = field(default_factory=list)
    changes: int = 0  # a move pair counts once


def diff(old: Dirs, new: Dirs, root: str, cookies: Iterator[int]) -> Diff:
    """The events that turn a client's picture of `old` into `new` (see the module)."""
    return _Differ(old, new, root, cookies).run()


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


def _depth(path: str) -> int:
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


class _Differ:
    """One comparison's working state."""

    def __init__(self, old: Dirs, new: Dirs, root: str, cookies: Iterator[int]) -> None:
        self.old, self.new, self.root = old, new, root
        self.cookies = cookies
        self.gone: dict[str, int] = {}  # old path -> record: not there any more as such
        self.came: dict[str, int] = {}  # new path -> record: not there before as such
        self.kept: list[tuple[str, int, int]] = []  # (new path, old, new) of one object
        self.moves: dict[str, str] = {}  # old path -> new path
        self.out = Diff()

    def run(self) -> Diff:
        same_dir = self.match_dirs()
        self.compare(same_dir)
        self.pair(same_dir)
        modify = self.replaced(same_dir)
        self.out.changes = len(self.gone) - len(self.moves) + len(self.came)
        deletes = [path for path in self.gone if path not in self.moves]
        creates = [path for path in self.came if path not in self.moves.values()]
        if self.moves:
            self.ordered(deletes, creates)
        else:
            self.simple(deletes, creates)
        self.contents(modify)
        return self.out

    # -- finding the differences -------------------------------------------------------------

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
        for path in sorted(old_dirs, key=_depth):
            if (path not in same and path in new_dirs and path not in taken
                    and same.get(split(path)[0]) == split(path)[0]):
                same[path] = path
                taken.add(path)
        # One that stays at its path in a directory that went (replaced by another under its
        # name) is gone with it to a client, and made anew in the other.
        for path in sorted(same, key=_depth):
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

    # -- ordering ------------------------------------------------------------------------------

    def emit(self, kind: int, path: str, record: int, cookie: int = 0,
             src: str | None = None) -> None:
        mask = kind | SYNTHETIC | (IN_ISDIR if record & IS_DIR else 0)
        self.out.items.append((mask, cookie, path, src))

    def simple(self, deletes: list[str], creates: list[str]) -> None:
        for path in sorted(deletes, key=_depth, reverse=True):
            self.emit(IN_DELETE, path, self.gone[path])
        for path in sorted(creates, key=_depth):
            self.emit(IN_CREATE, path, self.came[path])

    def ordered(self, deletes: list[str], creates: list[str]) -> None:
        """Deletes, moves and creates in an order a client can apply, found by simulation."""
        pic = _Picture(self.old)
        pend_del = sorted(deletes, key=_depth, reverse=True)
        pend_mv = sorted(self.moves.items(), key=lambda m: _depth(m[1]))
        pend_cr = sorted(creates, key=_depth)
        lenient: set[str] = set()  # creates that an unpaired move added: skipped if present
        while pend_del or pend_mv or pend_cr:
            busy = {pic.now(src) for src, _ in pend_mv}
            busy.update(pic.now(path) for path in pend_del)
            progress = False
            left_del: list[str] = []
            for path in pend_del:
                now = pic.now(path)
                if not pic.exists(now):
                    continue  # went with a subtree that an unpaired move deleted
                if pic.has_children(now):
                    left_del.append(path)
                    continue
                pic.remove(now)
                busy.discard(now)
                self.emit(IN_DELETE, now, self.gone[path])
                progress = True
            pend_del = left_del
            left_mv: list[tuple[str, str]] = []
            for src, dst in pend_mv:
                now = pic.now(src)
                if now == dst and now != src:
                    continue  # where its parent's move already put it
                if pic.exists(dst) or not pic.ready_parent(dst, busy):
                    left_mv.append((src, dst))
                    continue
                pic.move(src, now, dst)
                busy.discard(now)
                if dst in pic.kids and busy:
                    # What is still to move or go below it has moved with it.
                    below = now + "/"
                    busy = {dst + p[len(now):] if p.startswith(below) else p for p in busy}
                cookie = next(self.cookies)
                self.emit(IN_MOVED_FROM, now, self.gone[src], cookie)
                self.emit(IN_MOVED_TO, dst, self.came[dst], cookie, now)
                progress = True
            pend_mv = left_mv
            # Where what is still to move or go is now, after this round's moves.
            busy = {pic.now(src) for src, _ in pend_mv}
            busy.update(pic.now(path) for path in pend_del)
            left_cr: list[str] = []
            for path in pend_cr:
                if pic.exists(path):
                    if path in lenient:
                        continue
                    left_cr.append(path)
                    continue
                if not pic.ready_parent(path, busy):
                    left_cr.append(path)
                    continue
                pic.add(path, self.came[path])
                self.emit(IN_CREATE, path, self.came[path])
                progress = True
            pend_cr = left_cr
            if progress:
                continue
            if pend_mv:
                pend_cr = self.unpair(pic, pend_mv, pend_cr, lenient)
                pend_mv = []
                continue
            # Once no move is left, nothing blocks a delete or a create: this only guards
            # against looping forever, should that ever be wrong.
            for path in pend_del:
                self.emit(IN_DELETE, pic.now(path), self.gone[path])
            for path in pend_cr:
                self.emit(IN_CREATE, path, self.came[path])
            return

    def unpair(self, pic: _Picture, moves: list[tuple[str, str]], creates: list[str],
               lenient: set[str]) -> list[str]:
        """Moves that block one another: what the client has at their sources is deleted
        now, and what is at their destinations created (returns the creates still to do)."""
        todo = set(creates)
        for src, dst in moves:
            now = pic.now(src)
            if pic.exists(now):
                for path, isdir in pic.subtree(now):
                    pic.remove(path)
                    self.emit(IN_DELETE, path, IS_DIR if isdir else 0)
            for path, record in [(dst, self.came[dst]), *_walk_new(self.new, dst)]:
                self.came.setdefault(path, record)
                todo.add(path)
                lenient.add(path)
        return sorted(todo, key=_depth)

    def contents(self, modify: list[tuple[str, int, int]]) -> None:
        """modify and attrib of what kept its inode or its name, at its final name."""
        kept = self.kept + modify
        kept.extend((dst, self.gone[src], self.came[dst]) for src, dst in self.moves.items())
        for path, before, after in sorted(kept):
            if not after & IS_DIR and (content_of(before) != content_of(after)
                                       or inode(before) != inode(after)):
                self.emit(IN_MODIFY, path, after)
                self.out.changes += 1
            if inode(before) and attr_of(before) != attr_of(after):
                self.emit(IN_ATTRIB, path, after)
                self.out.changes += 1


def _walk_new(dirs: Dirs, top: str) -> list[tuple[str, int]]:
    """(path, record) of everything below `top`, parents before children."""
    out: list[tuple[str, int]] = []
    stack = [top]
    while stack:
        parent = stack.pop()
        for name, record in dirs.get(parent, _EMPTY).items():
            path = join(parent, name)
            out.append((path, record))
            if record & IS_DIR:
                stack.append(path)
    return out


class _Picture:
    """The tree as the client has it while the events are being ordered: names per directory,
    and where the directories moved so far went."""

    def __init__(self, old: Dirs) -> None:
        self.kids: dict[str, set[str]] = {parent: set(children) for parent, children in old.items()}
        self.moved: dict[str, str] = {}  # old directory path -> where the client has it now

    def now(self, path: str) -> str:
        """Where the client has an old path, after the directory moves emitted so far."""
        if not self.moved:
            return path
        own = self.moved.get(path)
        if own is not None:
            return own
        parent = split(path)[0]
        while parent not in ("/", ""):
            dst = self.moved.get(parent)
            if dst is not None:
                return dst + path[len(parent):]
            parent = split(parent)[0]
        return path

    def exists(self, path: str) -> bool:
        parent, name = split(path)
        return name in self.kids.get(parent, ())

    def has_children(self, path: str) -> bool:
        return bool(self.kids.get(path))

    def ready_parent(self, path: str, busy: set[str]) -> bool:
        """The parent exists, and neither it nor an ancestor is about to move away or go."""
        parent = split(path)[0]
        if parent not in self.kids:
            return False
        while parent not in ("/", ""):
            if parent in busy:
                return False
            parent = split(parent)[0]
        return True

    def subtree(self, top: str) -> list[tuple[str, bool]]:
        """(path, is_dir) of top and everything below it, children before parents."""
        out: list[tuple[str, bool]] = []
        stack = [top]
        while stack:
            path = stack.pop()
            out.append((path, path in self.kids))
            stack.extend(join(path, name) for name in self.kids.get(path, ()))
        out.reverse()
        return out

    def add(self, path: str, record: int) -> None:
        parent, name = split(path)
        self.kids.setdefault(parent, set()).add(name)
        if record & IS_DIR:
            self.kids.setdefault(path, set())

    def remove(self, path: str) -> None:
        parent, name = split(path)
        self.kids.get(parent, set()).discard(name)
        self.kids.pop(path, None)

    def move(self, old: str, now: str, dst: str) -> None:
        sp, sn = split(now)
        dp, dn = split(dst)
        self.kids.get(sp, set()).discard(sn)
        self.kids.setdefault(dp, set()).add(dn)
        if now in self.kids:
            prefix = now + "/"
            for key in [k for k in self.kids if k == now or k.startswith(prefix)]:
                self.kids[dst + key[len(now):]] = self.kids.pop(key)
            self.moved[old] = dst
            # Moves emitted earlier below it are carried along.
            for src, where in self.moved.items():
                if where.startswith(prefix):
                    self.moved[src] = dst + where[len(now):]
