"""The differences of a comparison (watchd.diff_match) as events in an order a client can apply.

Without moves, deletes then creates then the rest is always applicable. With moves, a small
simulation of the tree as the client has it decides: a delete goes when nothing is left below
it; a move when its source is where the client has it, its destination is free and its
destination's parent exists and is not about to move away or go; a create likewise. Moves that
block one another (names swapped in a cycle) are turned into deletes and creates.
"""

from __future__ import annotations

__all__ = ["Diff", "in_order"]

from collections.abc import Iterator
from dataclasses import dataclass, field

from watchd.diff_match import Differences, depth
from watchd.events import SYNTHETIC
from watchd.listing import Dirs, join, split
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


def in_order(old: Dirs, new: Dirs, found: Differences, cookies: Iterator[int]) -> Diff:
    """The events of `found`, the differences between `old` and `new`, in order."""
    return _Orderer(old, new, found, cookies).run()


class _Orderer:
    """One comparison's working state while its events are put in order."""

    def __init__(self, old: Dirs, new: Dirs, found: Differences, cookies: Iterator[int]) -> None:
        self.old, self.new = old, new
        self.found = found
        self.gone, self.came, self.moves = found.gone, found.came, found.moves
        self.cookies = cookies
        self.out = Diff()

    def run(self) -> Diff:
        self.out.changes = len(self.gone) - len(self.moves) + len(self.came)
        deletes = [path for path in self.gone if path not in self.moves]
        creates = [path for path in self.came if path not in self.moves.values()]
        if self.moves:
            self.ordered(deletes, creates)
        else:
            self.simple(deletes, creates)
        self.contents(self.found.kept, self.found.modified)
        return self.out

    def emit(self, kind: int, path: str, record: int, cookie: int = 0,
             src: str | None = None) -> None:
        mask = kind | SYNTHETIC | (IN_ISDIR if record & IS_DIR else 0)
        self.out.items.append((mask, cookie, path, src))

    def simple(self, deletes: list[str], creates: list[str]) -> None:
        for path in sorted(deletes, key=depth, reverse=True):
            self.emit(IN_DELETE, path, self.gone[path])
        for path in sorted(creates, key=depth):
            self.emit(IN_CREATE, path, self.came[path])

    def ordered(self, deletes: list[str], creates: list[str]) -> None:
        """Deletes, moves and creates in an order a client can apply, found by simulation."""
        pic = _Picture(self.old)
        pend_del = sorted(deletes, key=depth, reverse=True)
        pend_mv = sorted(self.moves.items(), key=lambda m: depth(m[1]))
        pend_cr = sorted(creates, key=depth)
        lenient: set[str] = set()  # creates that an unpaired move added: skipped if present
        while pend_del or pend_mv or pend_cr:
            emitted = len(self.out.items)
            busy = {pic.now(src) for src, _ in pend_mv}
            busy.update(pic.now(path) for path in pend_del)
            pend_del = self.deletes_now(pic, pend_del, busy)
            pend_mv = self.moves_now(pic, pend_mv, busy)
            # Where what is still to move or go is now, after this round's moves.
            busy = {pic.now(src) for src, _ in pend_mv}
            busy.update(pic.now(path) for path in pend_del)
            pend_cr = self.creates_now(pic, pend_cr, busy, lenient)
            if len(self.out.items) > emitted:
                continue  # progress: another round
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

    def deletes_now(self, pic: _Picture, pending: list[str], busy: set[str]) -> list[str]:
        """Emit the deletes that nothing is left below (`busy` loses their paths); returns
        those still to do."""
        left: list[str] = []
        for path in pending:
            now = pic.now(path)
            if not pic.exists(now):
                continue  # went with a subtree that an unpaired move deleted
            if pic.has_children(now):
                left.append(path)
                continue
            pic.remove(now)
            busy.discard(now)
            self.emit(IN_DELETE, now, self.gone[path])
        return left

    def moves_now(self, pic: _Picture, pending: list[tuple[str, str]],
                  busy: set[str]) -> list[tuple[str, str]]:
        """Emit the moves that can be made now (`busy`: where what is still to move or go is);
        returns those still to do."""
        left: list[tuple[str, str]] = []
        for src, dst in pending:
            now = pic.now(src)
            if now == dst and now != src:
                continue  # where its parent's move already put it
            if pic.exists(dst) or not pic.ready_parent(dst, busy):
                left.append((src, dst))
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
        return left

    def creates_now(self, pic: _Picture, pending: list[str], busy: set[str],
                    lenient: set[str]) -> list[str]:
        """Emit the creates whose parent is ready; returns those still to do."""
        left: list[str] = []
        for path in pending:
            if pic.exists(path):
                if path in lenient:
                    continue
                left.append(path)
                continue
            if not pic.ready_parent(path, busy):
                left.append(path)
                continue
            pic.add(path, self.came[path])
            self.emit(IN_CREATE, path, self.came[path])
        return left

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
        return sorted(todo, key=depth)

    def contents(self, kept: list[tuple[str, int, int]],
                 modify: list[tuple[str, int, int]]) -> None:
        """modify and attrib of what kept its inode or its name, at its final name."""
        kept = kept + modify
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
