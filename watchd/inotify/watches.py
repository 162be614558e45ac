"""A tree's bookkeeping: wd <-> path maps, renames, moves paired by cookie, names just listed.

A directory is known by its prefix: its absolute path with a trailing "/", so that a rename
rewrites every descendant with one `startswith` pass and never matches a sibling such as
"/a/bc" when "/a/b" moves. Nothing here opens a directory or reads an event: the tree
(watchd.inotify.tree) decides, this records.
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

from watchd.inotify._binding import InotifyFd
from watchd.inotify.errors import InotifyError
from watchd.inotify.flags import IN_CREATE, IN_ISDIR
from watchd.inotify.identities import NOT_OURS, UNSURE, Clock, Identities

# Re-exported: tests of the tree's identities have them from here.
__all__ = ["NOT_OURS", "UNSURE", "Clock", "TreeEvent", "Watches", "dir_path", "synthetic_create"]


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


def dir_path(prefix: str) -> str:
    """The path of the directory whose prefix this is ("/" for the root of the file system)."""
    return prefix[:-1] or "/"


def synthetic_create(path: str, is_dir: bool) -> TreeEvent:
    """The IN_CREATE that reports an entry found by listing a new directory."""
    mask = IN_CREATE | IN_ISDIR if is_dir else IN_CREATE
    name = os.fsencode(path.rpartition("/")[2])
    return TreeEvent(mask, 0, path, None, -1, name, 0)


class Watches:
    """The directories one tree watches, and what its current batch of events left pending.

    Mutable, and shared by the parts of one tree (they alias `path_of` and `wd_of`, which are
    therefore only ever cleared, never replaced): not a value.
    """

    __slots__ = ("_ino", "adrift", "fs_types", "identities", "moves", "path_of", "reported",
                 "rescan", "root_wd", "skipped", "synth_cur", "synth_prev", "unreported", "wd_of")

    def __init__(self, ino: InotifyFd, clock: Clock | None = None) -> None:
        self._ino = ino
        self.path_of: dict[int, str] = {}
        self.wd_of: dict[str, int] = {}
        self.root_wd = -1
        # cookie -> (source path, the wds at and below it for a directory, None for a file)
        self.moves: dict[int, tuple[str, list[int] | None]] = {}
        # The wds at and below a directory whose IN_MOVED_FROM is not paired (yet), by wd: the
        # cookie. Their paths are out of date (the directory is elsewhere, maybe out of the
        # tree), so their events are not reported (see Tree.handle); `skipped`: the cookies
        # of those whose events were left out so.
        self.adrift: dict[int, int] = {}
        self.skipped: set[int] = set()
        # Names reported by listing new directories, per wd: of this batch and of the last one
        # (see the tree's rules: a kernel IN_CREATE of one of them is a duplicate).
        self.synth_cur: dict[int, set[str]] = {}
        self.synth_prev: dict[int, set[str]] = {}
        # Watched directories to list again at the end of the batch (see the tree's rules):
        # wd -> batches it has been out of reach.
        self.rescan: dict[int, int] = {}
        # Of those, per wd: the new subdirectories reported already (their kernel IN_CREATE or
        # IN_MOVED_TO, or a listing) but not walked, the tree could not reach them then. Listed
        # again, they are watched but not reported a second time; a delete or move of the name
        # forgets it.
        self.reported: dict[int, set[str]] = {}
        # Watched directories whose contents nobody has reported, to report where their
        # rename's events place them (see Tree.unreported).
        self.unreported: set[int] = set()
        # Which directory each watch is on, by identity (st_dev, st_ino), so that a walk can
        # tell a watched directory without asking the kernel (see Identities.vouched).
        self.identities = Identities(clock)  # clock: a test's, or the machine's
        # st_dev -> statfs f_type, of the file systems walks met since the last distrust() or
        # unmount: a device number is given to another file system once one is unmounted.
        # Shared with the walker, which fills it (only ever cleared, never replaced).
        self.fs_types: dict[int, int] = {}

    # -- the maps ----------------------------------------------------------------------------

    def remember(self, wd: int, prefix: str, st: os.stat_result) -> None:
        """Record watch `wd` as the directory at `prefix`, `st` its fstat (the kernel has just
        returned `wd` for it)."""
        self.path_of[wd] = prefix
        self.wd_of[prefix] = wd
        self.identities.identify(wd, st)

    def forget(self, wd: int) -> None:
        """Drop watch `wd` (gone with its directory, or removed) and all that waits on it."""
        prefix = self.path_of.pop(wd, None)
        if prefix is not None and self.wd_of.get(prefix) == wd:
            del self.wd_of[prefix]
        self.identities.unlinked(wd)
        self.synth_cur.pop(wd, None)
        self.synth_prev.pop(wd, None)
        self.rescan.pop(wd, None)
        self.reported.pop(wd, None)
        self.unreported.discard(wd)

    def rm(self, wd: int) -> None:
        """Remove watch `wd` from the kernel and forget it."""
        with contextlib.suppress(InotifyError):  # already gone with its directory
            self._ino.rm_watch(wd)
        self.forget(wd)

    def rm_all(self, wds: list[int]) -> None:
        """Remove the watches `wds` that are still ours, but the root's."""
        for wd in wds:
            if wd != self.root_wd and wd in self.path_of:
                self.rm(wd)

    def below(self, prefix: str) -> list[int]:
        """The wds of the directory at `prefix` and of everything below it."""
        return [wd for wd, p in self.path_of.items() if p.startswith(prefix)]

    def rename(self, wds: list[int], old: str, new: str) -> None:
        """Move the watches `wds` from under prefix `old` to under prefix `new`."""
        path_of, wd_of = self.path_of, self.wd_of
        cut = len(old)
        moved = [(wd, p) for wd in wds if (p := path_of.get(wd)) is not None and p.startswith(old)]
        for wd, p in moved:
            if wd_of.get(p) == wd:
                del wd_of[p]
        for wd, p in moved:
            q = new + p[cut:]
            path_of[wd] = q
            wd_of[q] = wd

    def relocate(self, wd: int, old: str, new: str) -> None:
        """Directory `wd`, watched at prefix `old`, was found at prefix `new`: it moved there
        before its rename's events were read. A pending IN_MOVED_FROM that took it along no
        longer does, so it stays if its pair never comes.
        """
        self.rename([wd], old, new)
        self.adrift.pop(wd, None)  # its path is right again
        for cookie, (src, moved) in list(self.moves.items()):
            if moved and wd in moved:
                self.moves[cookie] = (src, [w for w in moved if w != wd])

    def clear(self) -> None:
        """Remove every watch (unless the fd is closed already) and forget everything."""
        if not self._ino.closed:
            rm = self._ino.rm_watch
            for wd in self.path_of:
                # A watch that went with its directory has nothing left to remove.
                with contextlib.suppress(InotifyError):
                    rm(wd)
        self.path_of.clear()
        self.wd_of.clear()
        self.identities.clear()
        self.synth_cur.clear()
        self.synth_prev.clear()
        self.rescan.clear()
        self.reported.clear()
        self.unreported.clear()
        self.adrift.clear()
        self.skipped.clear()

    def distrust(self) -> None:
        """From now on, ask the kernel again on each device until it confirms one claim there
        (see Identities.vouched), and of its file system's type: before a walk or a scan that
        relies on the record, and at an unmount. A clock step since the claims were stamped is
        seen."""
        self.identities.distrust()
        self.fs_types.clear()

    # -- one batch of events -----------------------------------------------------------------

    def move_from(self, cookie: int, path: str, is_dir: bool) -> None:
        """An IN_MOVED_FROM: keep its source (and a directory's watches) for its IN_MOVED_TO;
        until it comes, a directory's watches are adrift."""
        moved = self.below(path + "/") if is_dir else None
        self.moves[cookie] = (path, moved)
        if moved:
            self.adrift.update(dict.fromkeys(moved, cookie))

    def move_to(self, cookie: int) -> tuple[str, list[int] | None] | None:
        """An IN_MOVED_TO: the source path and watches of its IN_MOVED_FROM, if it was seen."""
        src = self.moves.pop(cookie, None)
        if src is not None and src[1]:
            for wd in src[1]:
                self.adrift.pop(wd, None)
        return src

    def pair(self, cookie: int, *, listed: bool) -> tuple[str | None, list[int] | None, bool]:
        """An IN_MOVED_TO: the source path of its IN_MOVED_FROM (None: a move in), the
        watches that moved with it, and whether events of theirs were left out meanwhile
        (`skipped`). `listed`: a listing reported its name."""
        src = self.move_to(cookie)
        if src is None:
            return None, None, False
        src_path, moved = src
        # A listing found the name the rename gave: its source was never reported. Moved in,
        # not renamed: a client keeps what the name holds.
        return (None if listed and not moved else src_path), moved, cookie in self.skipped

    def moved_out(self, cookie: int) -> None:
        """An IN_MOVED_TO to a name the tree does not watch (pruned): the watches that moved
        with it leave the tree."""
        src = self.move_to(cookie)
        if src is not None and src[1]:
            self.rm_all(src[1])

    def unlist(self, wd: int, name: str) -> bool:
        """Whether listing a new directory `wd` reported `name`; it is forgotten either way.

        A later event on the name is then the kernel's own: reported, even a re-creation.
        """
        listed = self.synth_cur.get(wd) or self.synth_prev.get(wd)
        if listed is not None and name in listed:
            listed.discard(name)
            return True
        return False

    def unreport(self, wd: int, name: str) -> None:
        """Directory `name` in `wd` was deleted or moved away: a directory found under that
        name later is another one, whose creation nobody has reported yet."""
        names = self.reported.get(wd)
        if names is not None:
            names.discard(name)

    def end_batch(self) -> None:
        """The batch is read: what moved out of the tree goes, and listed names age."""
        moves = self.moves
        if moves:
            for _, moved in moves.values():
                if moved:  # its IN_MOVED_TO did not come: it left the tree
                    self.rm_all(moved)
            moves.clear()
            self.adrift.clear()
            self.skipped.clear()
        if self.synth_cur or self.synth_prev:
            self.synth_prev = self.synth_cur
            self.synth_cur = {}
