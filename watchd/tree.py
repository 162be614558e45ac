"""Recursive watching of one directory tree over an InotifyFd that the caller owns and reads.

The tree keeps two maps and nothing else per directory: wd -> path prefix and prefix -> wd,
where a prefix is the directory's absolute path with a trailing "/" (so that a rename
rewrites every descendant with one `startswith` pass and never matches a sibling such as
"/a/bc" when "/a/b" moves).

Rules worth knowing:

* A new directory is watched before it is listed, so nothing created in it is missed.
  With `synthetic`, its entries are reported as IN_CREATE events. The kernel may report
  the same entry too (created between the watch and the listing); such a kernel IN_CREATE
  is dropped when the listing already reported that name in that directory. The names
  listed are remembered until the end of the next handle() call: the kernel events they
  could duplicate are queued before the listing returns, hence read by then. A delete or
  move of the name forgets it, so a later re-creation is reported.
* A directory's IN_MOVED_FROM is paired by cookie with the IN_MOVED_TO of the same
  handle() call. When none comes, the directory left the tree: its watches are removed.
  (The kernel queues both during one rename, so they share a read unless the read split
  them; the directory is then watched again, as moved in, when its IN_MOVED_TO comes.)
* A directory already watched on the same fd (a bind mount, or another tree or watch of
  the same fd) is detected with IN_MASK_CREATE and skipped, never re-mapped.
* The root is followed if it is a symlink; links below it are not, unless follow_symlinks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from watchd.inotify._binding import InotifyFd, RawTuple
from watchd.inotify.errors import InotifyError, WatchLimitError
from watchd.inotify.flags import (
    IN_ACCESS,
    IN_ALL_EVENTS,
    IN_CLOSE_NOWRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_DONT_FOLLOW,
    IN_EXCL_UNLINK,
    IN_IGNORED,
    IN_ISDIR,
    IN_MASK_ADD,
    IN_MASK_CREATE,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONESHOT,
    IN_ONLYDIR,
    IN_OPEN,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
)

# The bits the tree itself needs, whatever the caller asked for.
_BOOKKEEPING = IN_CREATE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
# Events that listing a directory causes on it and on its parent's watch.
_LISTING_NOISE = IN_OPEN | IN_ACCESS | IN_CLOSE_NOWRITE
# Events that need more than a lookup and a report (see Tree._slow).
_SLOW = IN_ISDIR | IN_MOVED_FROM | IN_MOVED_TO | IN_IGNORED | IN_UNMOUNT | IN_Q_OVERFLOW
_ROOT_LOSS = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT
# Events that make, unmake or rename a name in a directory.
_NAMING = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
PROGRESS_EVERY = 4096  # directories between two progress reports of a long scan
_OVER_LIMIT = -1  # _try_add's answer past the watch limit (a real wd is never negative)


class TreeEvent(NamedTuple):
    """One event of the tree, with its absolute path.

    A NamedTuple because one is built per kernel event on the hot path.
    """

    mask: int  # kernel mask bits, IN_ISDIR included
    cookie: int
    path: str  # absolute; os.fsdecode (surrogateescape) of the kernel's bytes
    src_path: str | None  # IN_MOVED_TO only: the source path when its IN_MOVED_FROM was seen
    wd: int  # the kernel's watch descriptor, -1 for synthetic and overflow events
    name: bytes  # the kernel's name (b"" for events on the watched directory itself)
    length: int  # the kernel's padded len field (0 for synthetic events)


def _dir_path(prefix: str) -> str:
    return prefix[:-1] or "/"


class DirectoryBudgetError(WatchLimitError):
    """A tree's own max_directories is used up (the kernel's limit may not be)."""

    def __init__(self, budget: int, path: str) -> None:
        super().__init__(
            errno.ENOSPC,
            f"this watch's budget of {budget} directories is used up (its max_directories, "
            "by default a fair share of fs.inotify.max_user_watches): raise max_directories "
            "for this watch, or watch a smaller tree",
            path,
        )


class Tree:
    """One watched directory (and, if recursive, everything below it) on a shared InotifyFd."""

    __slots__ = (
        "_decode_errors",
        "_encoding",
        "_follow",
        "_full",
        "_ino",
        "_missed",
        "_moves",
        "_narrow",
        "_path_of",
        "_progress",
        "_prune",
        "_quiet",
        "_quiet_parent",
        "_recursive",
        "_report",
        "_root_prefix",
        "_root_wd",
        "_synth_cur",
        "_synth_prev",
        "_synthetic",
        "_wd_of",
        "limit_error",
        "lost",
        "max_directories",
        "overflowed",
        "root",
        "unwatched",
    )

    def __init__(
        self,
        ino: InotifyFd,
        root: str | bytes | os.PathLike[str],
        mask: int,
        *,
        recursive: bool = True,
        prune: Callable[[str], bool] | None = None,
        follow_symlinks: bool = False,
        synthetic: bool = False,
        quiet_listing: bool = True,
        quiet_parent: bool = True,
        progress: Callable[[int], None] | None = None,
        max_directories: int | None = None,
    ) -> None:
        self._ino = ino
        self.root = os.path.abspath(os.fsdecode(root))
        self._root_prefix = self.root if self.root.endswith("/") else self.root + "/"
        self._recursive = recursive
        self._prune = prune
        self._follow = follow_symlinks
        self._synthetic = synthetic
        self._report = int(mask) & IN_ALL_EVENTS
        # ONESHOT and MASK_ADD would break the bookkeeping; the tree manages its own masks.
        wanted = int(mask) & ~(IN_ONESHOT | IN_MASK_ADD | IN_MASK_CREATE)
        base = wanted | _BOOKKEEPING | IN_ONLYDIR | IN_EXCL_UNLINK
        self._full = base | (0 if follow_symlinks else IN_DONT_FOLLOW)
        self._quiet = quiet_listing and bool(self._report & _LISTING_NOISE)
        self._narrow = self._full & ~_LISTING_NOISE if self._quiet else self._full
        # The parent's watch would report the listing of a new directory too; narrowing it for
        # that moment hides it (quiet_parent=False keeps it, as the `inotify` package does).
        self._quiet_parent = self._quiet and quiet_parent
        # Told the number of directories watched so far, every PROGRESS_EVERY, during a scan.
        self._progress = progress
        self._encoding = sys.getfilesystemencoding()
        self._decode_errors = sys.getfilesystemencodeerrors()
        self._path_of: dict[int, str] = {}
        self._wd_of: dict[str, int] = {}
        self._root_wd = -1
        # cookie -> (source path, the wds at and below it for a directory, None for a file)
        self._moves: dict[int, tuple[str, list[int] | None]] = {}
        self._synth_cur: dict[int, set[str]] = {}
        self._synth_prev: dict[int, set[str]] = {}
        # New directories whose watch could not be added because their path had already changed
        # (an ancestor renamed before we got to them): prefix -> batches seen since. The rename's
        # events follow in this batch or the next, and then they are watched at their new path.
        self._missed: dict[str, int] = {}
        self.lost: str | None = None
        self.overflowed = False
        self.unwatched = 0
        self.limit_error: WatchLimitError | None = None
        # This tree's share of the watch limit: past it, directories stay unwatched exactly as
        # past the kernel's limit (limit_error, unwatched), so one tree cannot starve the others.
        self.max_directories = max_directories

    # -- public state ------------------------------------------------------------------------

    @property
    def directories(self) -> int:
        """How many directories are watched now."""
        return len(self._path_of)

    def owns(self, wd: int) -> bool:
        """True when `wd` is one of this tree's watches."""
        return wd in self._path_of

    def path_of(self, wd: int) -> str | None:
        """The directory path of one of this tree's watches, or None."""
        prefix = self._path_of.get(wd)
        return None if prefix is None else _dir_path(prefix)

    # -- set-up and tear-down ----------------------------------------------------------------

    def start(self, *, report: bool = False) -> list[TreeEvent]:
        """Watch the root (raising the binding's error if it cannot be) and all below it.

        With report, what is already there comes back as synthetic creates: for a root that
        reappeared, whose contents nobody has been told about.
        """
        narrow = self._narrow & ~IN_DONT_FOLLOW
        wd = self._ino.add_watch(self.root, narrow | IN_MASK_CREATE)
        self._remember(wd, self._root_prefix)
        self._root_wd = wd
        out: list[TreeEvent] | None = [] if report else None
        if not self._recursive and out is not None:
            self._list(self._root_prefix, wd, [], out)
        if self._recursive:
            added: list[tuple[str, int]] = []
            stack: list[str] = []
            visited: set[tuple[int, int]] | None = None
            if self._follow:
                visited = set()
                self._first_visit(self._root_prefix, visited)
            self._list(self._root_prefix, wd, stack, out)
            self._scan(stack, out, added, visited)
            if self._quiet:
                self._widen(added)
        if self._quiet:
            self._set_mask(self._root_prefix, wd, self._mask_of(wd, narrow=False))
        return out or []

    def close(self) -> None:
        """Remove every watch of this tree (the fd stays open: it is the caller's)."""
        if not self._ino.closed:
            rm = self._ino.rm_watch
            for wd in self._path_of:
                # A watch that went with its directory has nothing left to remove.
                with contextlib.suppress(InotifyError):
                    rm(wd)
        self._path_of.clear()
        self._wd_of.clear()
        self._synth_cur.clear()
        self._synth_prev.clear()

    # -- events ------------------------------------------------------------------------------

    def handle(self, raw: Sequence[RawTuple]) -> list[TreeEvent]:
        """Apply a batch of this tree's kernel events and return those to report."""
        out: list[TreeEvent] = []
        append = out.append
        path_of = self._path_of
        report = self._report
        encoding, errors = self._encoding, self._decode_errors
        new = tuple.__new__  # skips NamedTuple.__new__'s Python-level argument handling
        slow_bits = _SLOW
        if self._synth_cur or self._synth_prev:
            slow_bits |= IN_CREATE | IN_DELETE
        elif self._follow:
            slow_bits |= IN_CREATE  # a new symlink may lead to a directory

        root_wd = self._root_wd
        for ev in raw:
            wd, mask, cookie, length, name = ev
            prefix = path_of.get(wd)
            if prefix is None:
                if wd == -1 and mask & IN_Q_OVERFLOW:
                    self.overflowed = True
                    append(new(TreeEvent, (mask, cookie, "", None, -1, b"", 0)))
                continue  # a watch this tree has already dropped
            if name:
                if mask & slow_bits:
                    self._slow(ev, prefix, out)
                elif mask & report:
                    path = prefix + name.decode(encoding, errors)
                    append(new(TreeEvent, (mask, cookie, path, None, wd, name, length)))
            elif wd == root_wd and mask & (_ROOT_LOSS | IN_IGNORED):
                self._root_event(ev, out)
            elif mask & IN_IGNORED:
                self._forget(wd)
            elif mask & report:
                path = _dir_path(prefix)
                append(new(TreeEvent, (mask, cookie, path, None, wd, name, length)))
        self._end_batch()
        return out

    def _slow(self, ev: RawTuple, prefix: str, out: list[TreeEvent]) -> None:
        """An event on a named entry that needs bookkeeping before it is reported."""
        wd, mask, cookie, length, raw_name = ev
        name = raw_name.decode(self._encoding, self._decode_errors)
        path = prefix + name
        is_dir = bool(mask & IN_ISDIR)
        if is_dir and self._prune is not None and self._prune(name):
            if mask & IN_MOVED_TO:
                # A watched directory renamed to a pruned name leaves the tree.
                src = self._moves.pop(cookie, None)
                if src is not None and src[1]:
                    self._rm_all(src[1])
            return
        if mask & _NAMING and (self._synth_cur or self._synth_prev):
            listed = self._synth_cur.get(wd) or self._synth_prev.get(wd)
            if listed is not None and name in listed:
                listed.discard(name)
                if mask & IN_CREATE:
                    return  # the listing of the new directory already reported it
        src_path = None
        moved: list[int] | None = None
        if mask & IN_MOVED_FROM:
            self._moves[cookie] = (path, self._below(path + "/") if is_dir else None)
        elif mask & IN_MOVED_TO:
            src = self._moves.pop(cookie, None)
            if src is not None:
                src_path, moved = src
        if mask & self._report:
            out.append(TreeEvent(mask, cookie, path, src_path, wd, raw_name, length))
        if not (self._recursive and mask & (IN_CREATE | IN_MOVED_TO)):
            return
        if not is_dir and not (self._follow and os.path.isdir(path)):
            return
        if self.lost is not None:
            return
        child = path + "/"
        if moved and src_path is not None:
            self._rename(moved, src_path + "/", child)
            if self._missed:
                self._recover(src_path + "/", child, out)
        else:
            self._watch_new(wd, prefix, child, out if self._synthetic else None)

    def _root_event(self, ev: RawTuple, out: list[TreeEvent]) -> None:
        """A deletion, move, unmount or IN_IGNORED of the root itself."""
        wd, mask, cookie, length, name = ev
        if mask & IN_IGNORED:
            self.lost = self.lost or "deleted"
            self._forget(wd)
            return
        if mask & IN_UNMOUNT:
            self.lost = "unmounted"
        elif mask & IN_DELETE_SELF:
            self.lost = self.lost or "deleted"
        elif mask & IN_MOVE_SELF:
            self.lost = self.lost or "moved"
        out.append(TreeEvent(mask, cookie, self.root, None, wd, name, length))

    def _end_batch(self) -> None:
        moves = self._moves
        if moves:
            for _, moved in moves.values():
                if moved:  # its IN_MOVED_TO did not come: it left the tree
                    self._rm_all(moved)
            moves.clear()
        if self._synth_cur or self._synth_prev:
            self._synth_prev = self._synth_cur
            self._synth_cur = {}
        if self._missed:
            self._missed = {p: age + 1 for p, age in self._missed.items() if age < 1}

    def _recover(self, old: str, new: str, out: list[TreeEvent]) -> None:
        """Watch, at their new path, the new directories missed under a renamed `old`."""
        cut = len(old)
        found = [p for p in self._missed if p.startswith(old)]
        for prefix in found:
            del self._missed[prefix]
            moved = new + prefix[cut:]
            if moved not in self._wd_of and os.path.isdir(moved):
                parent = moved[: moved.rstrip("/").rfind("/") + 1]
                parent_wd = self._wd_of.get(parent)
                if parent_wd is not None:
                    self._watch_new(parent_wd, parent, moved, out if self._synthetic else None)

    # -- overflow ----------------------------------------------------------------------------

    def resync(self) -> list[TreeEvent]:
        """After an overflow: watch directories that appeared, forget those that vanished."""
        self.overflowed = False
        self.limit_error = None  # found again below if a limit still stands in the way
        out: list[TreeEvent] = []
        root_wd = self._root_wd
        if self.lost is not None or root_wd not in self._path_of or not self._recursive:
            return out
        emit = out if self._synthetic and self._report & IN_CREATE else None
        seen: set[int] = {root_wd}
        added: list[tuple[str, int]] = []
        limited = False
        self.unwatched = 0
        # (prefix, wd, fresh): a fresh directory was watched just now, so all it holds is new.
        stack: list[tuple[str, int, bool]] = [(self._root_prefix, root_wd, False)]
        while stack:
            prefix, wd, fresh = stack.pop()
            children: list[str] = []
            self._list(prefix, wd, children, emit if fresh else None)
            for child in children:
                known = self._wd_of.get(child)
                if known is not None:
                    seen.add(known)
                    stack.append((child, known, False))
                    continue
                if limited:
                    self._count_unwatched(child)
                    continue
                try:
                    child_wd = self._add(child)
                except WatchLimitError as e:
                    self.limit_error = self.limit_error or e
                    limited = True
                    self._count_unwatched(child)
                    continue
                except InotifyError as e:
                    adopted = self._adopt(child) if e.errno == errno.EEXIST else None
                    if adopted is not None:
                        seen.add(adopted)
                        stack.append((child, adopted, False))
                    continue
                seen.add(child_wd)
                added.append((child, child_wd))
                if emit is not None and not fresh:
                    emit.append(self._synthetic_create(child[:-1], True))
                stack.append((child, child_wd, True))
        for wd in [wd for wd in self._path_of if wd not in seen]:
            self._rm(wd)
        if self._quiet:
            self._widen(added)
        return out

    def _adopt(self, prefix: str) -> int | None:
        """The wd of a directory this fd already watches; one of ours gets its new path."""
        try:
            # Adding bits it already has returns the existing wd and changes nothing.
            wd = self._ino.add_watch(_dir_path(prefix), self._full | IN_MASK_ADD)
        except InotifyError:
            return None
        old = self._path_of.get(wd)
        if old is None:
            return None  # watched by someone else on this fd
        if self._wd_of.get(old) == wd:
            del self._wd_of[old]
        self._remember(wd, prefix)
        return wd

    def _count_unwatched(self, prefix: str) -> None:
        """Count the directories at and below `prefix`, which the watch limit leaves unwatched."""
        stack = [prefix]
        while stack:
            self.unwatched += 1
            self._list(stack.pop(), -1, stack, None)

    # -- bookkeeping -------------------------------------------------------------------------

    def _remember(self, wd: int, prefix: str) -> None:
        self._path_of[wd] = prefix
        self._wd_of[prefix] = wd

    def _forget(self, wd: int) -> None:
        prefix = self._path_of.pop(wd, None)
        if prefix is not None and self._wd_of.get(prefix) == wd:
            del self._wd_of[prefix]
        self._synth_cur.pop(wd, None)
        self._synth_prev.pop(wd, None)

    def _rm(self, wd: int) -> None:
        with contextlib.suppress(InotifyError):  # already gone with its directory
            self._ino.rm_watch(wd)
        self._forget(wd)

    def _below(self, prefix: str) -> list[int]:
        """The wds of the directory at `prefix` and of everything below it."""
        return [wd for wd, p in self._path_of.items() if p.startswith(prefix)]

    def _rename(self, wds: list[int], old: str, new: str) -> None:
        """Move the watches `wds` from under prefix `old` to under prefix `new`."""
        path_of, wd_of = self._path_of, self._wd_of
        cut = len(old)
        moved = [(wd, p) for wd in wds if (p := path_of.get(wd)) is not None and p.startswith(old)]
        for wd, p in moved:
            if wd_of.get(p) == wd:
                del wd_of[p]
        for wd, p in moved:
            q = new + p[cut:]
            path_of[wd] = q
            wd_of[q] = wd

    def _rm_all(self, wds: list[int]) -> None:
        for wd in wds:
            if wd != self._root_wd and wd in self._path_of:
                self._rm(wd)

    # -- adding watches ----------------------------------------------------------------------

    def _add(self, prefix: str) -> int:
        """Add a watch for a new directory, refusing an inode this fd already watches."""
        budget = self.max_directories
        if budget is not None and len(self._path_of) >= budget:
            raise DirectoryBudgetError(budget, _dir_path(prefix))
        wd = self._ino.add_watch(_dir_path(prefix), self._narrow | IN_MASK_CREATE)
        self._remember(wd, prefix)
        return wd

    def _try_add(self, prefix: str) -> int | None:
        """_add; _OVER_LIMIT past the watch limit; None when it cannot or need not be watched."""
        try:
            return self._add(prefix)
        except WatchLimitError as e:
            if self.limit_error is None:
                self.limit_error = e
            return _OVER_LIMIT
        except InotifyError as e:
            # Gone, replaced by a file or symlink, unreadable, or already watched on this fd.
            if e.errno == errno.ENOENT and prefix != self._root_prefix:
                self._missed[prefix] = 0  # perhaps renamed away: see _recover
            return None

    def _watch_new(
        self, parent_wd: int, parent: str, prefix: str, out: list[TreeEvent] | None
    ) -> None:
        """Watch a directory that appeared under `parent`, and everything in it."""
        added: list[tuple[str, int]] = []
        if self._quiet_parent:
            # Listing the new directory opens it, which the parent's watch would report.
            self._set_mask(parent, parent_wd, self._mask_of(parent_wd, narrow=True))
        self._scan([prefix], out, added, set() if self._follow else None)
        if self._quiet:
            self._widen(added)
        if self._quiet_parent:
            self._set_mask(parent, parent_wd, self._mask_of(parent_wd, narrow=False))

    def _mask_of(self, wd: int, *, narrow: bool) -> int:
        mask = self._narrow if narrow else self._full
        # The root may be a symlink, which IN_DONT_FOLLOW would refuse.
        return mask & ~IN_DONT_FOLLOW if wd == self._root_wd else mask

    def _set_mask(self, prefix: str, wd: int, mask: int) -> None:
        try:
            got = self._ino.add_watch(_dir_path(prefix), mask)
        except InotifyError:
            return  # gone meanwhile; its IN_IGNORED will clean up
        if got != wd and got not in self._path_of:
            # The path now names another directory, which is not ours to watch.
            with contextlib.suppress(InotifyError):
                self._ino.rm_watch(got)

    def _widen(self, added: list[tuple[str, int]]) -> None:
        for prefix, wd in added:
            if self._path_of.get(wd) == prefix:
                self._set_mask(prefix, wd, self._mask_of(wd, narrow=False))

    def _scan(
        self,
        stack: list[str],
        out: list[TreeEvent] | None,
        added: list[tuple[str, int]],
        visited: set[tuple[int, int]] | None,
    ) -> None:
        """Watch each directory of `stack` and all below it, each watched before it is listed."""
        counting = False
        while stack:
            prefix = stack.pop()
            if visited is not None and not self._first_visit(prefix, visited):
                continue
            wd = _OVER_LIMIT if counting else self._try_add(prefix)
            if wd is None:
                continue  # gone or already watched: nothing below it to do
            if wd == _OVER_LIMIT:
                # Stop adding; keep walking only to count what stays unwatched.
                counting = True
                self.unwatched += 1
                self._list(prefix, -1, stack, None)
                continue
            added.append((prefix, wd))
            if self._progress is not None and not len(added) % PROGRESS_EVERY:
                self._progress(len(self._path_of))
            self._list(prefix, wd, stack, out)

    def _first_visit(self, prefix: str, visited: set[tuple[int, int]]) -> bool:
        try:
            st = os.stat(prefix)
        except OSError:
            return False
        key = (st.st_dev, st.st_ino)
        if key in visited:
            return False
        visited.add(key)
        return True

    def _list(
        self,
        prefix: str,
        wd: int,
        stack: list[str],
        out: list[TreeEvent] | None,
    ) -> None:
        """Push the subdirectories of `prefix` on `stack`; report its entries into `out`."""
        follow = self._follow
        prune = self._prune
        emit = out is not None and bool(self._report & IN_CREATE)
        names: set[str] | None = None
        if emit:
            names = self._synth_cur.setdefault(wd, set())
        try:
            it = os.scandir(prefix)
        except OSError:
            return  # vanished or unreadable since it was watched
        with it:
            for entry in it:
                name = entry.name
                try:
                    is_dir = entry.is_dir(follow_symlinks=follow)
                except OSError:
                    is_dir = False
                if is_dir:
                    if prune is not None and prune(name):
                        continue
                    stack.append(prefix + name + "/")
                if names is not None and out is not None:
                    names.add(name)
                    out.append(self._synthetic_create(prefix + name, is_dir))

    def _synthetic_create(self, path: str, is_dir: bool) -> TreeEvent:
        mask = IN_CREATE | IN_ISDIR if is_dir else IN_CREATE
        name = os.fsencode(path.rpartition("/")[2])
        return TreeEvent(mask, 0, path, None, -1, name, 0)
