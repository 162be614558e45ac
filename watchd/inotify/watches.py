"""A tree's bookkeeping: wd <-> path maps, renames, moves paired by cookie, names just listed.

A directory is known by its prefix: its absolute path with a trailing "/", so that a rename
rewrites every descendant with one `startswith` pass and never matches a sibling such as
"/a/bc" when "/a/b" moves. Nothing here opens a directory or reads an event: the tree
(watchd.inotify.tree) decides, this records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import NamedTuple, Protocol

from watchd.inotify._binding import InotifyFd
from watchd.inotify.errors import InotifyError
from watchd.inotify.flags import IN_CREATE, IN_ISDIR

# Watches.vouched's answers besides a wd: no watch of ours is on that directory, or ask the
# kernel.
NOT_OURS, UNSURE = -1, -2
# How much older than its watch's confirmation a directory's ctime must be for the tree to vouch
# for it (see Watches.vouched): the kernel stamps ctime from a clock that may lag the one read
# here by a tick, and a clock may be slewed.
CTIME_SLACK_NS = 1_000_000_000
# How far the wall clock may move against the boot clock before the tree takes it for a step
# (see Watches.now): the two are slewed together, and only a step (NTP, `date -s`, a
# virtual machine restored) moves one against the other; a step back would make a directory
# made later look older than a claim.
CLOCK_STEP_NS = 500_000_000
# A claim of by_inode, packed into one int to spare memory (a tuple of two ints costs three
# objects per watched directory): the confirmation time above _WD_BITS, the wd below.
_WD_BITS = 32
_WD_MASK = (1 << _WD_BITS) - 1
_NO_CLAIM = -1


def identity(st: os.stat_result) -> int:
    """A directory's identity (st_dev, st_ino) as one int, a key of Watches.by_inode."""
    return st.st_dev << 64 | st.st_ino


class Clock(Protocol):
    """Where a tree reads the time for its claims (a test passes one whose wall clock steps)."""

    def realtime_ns(self) -> int:
        """The wall clock (CLOCK_REALTIME), which the kernel stamps ctimes from."""
        ...

    def boottime_ns(self) -> int:
        """A clock nobody can step (CLOCK_BOOTTIME)."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class SystemClock:
    """The machine's clocks."""

    def realtime_ns(self) -> int:
        """The wall clock (CLOCK_REALTIME)."""
        return time.time_ns()

    def boottime_ns(self) -> int:
        """The time since boot, suspend included (CLOCK_BOOTTIME)."""
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


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

    __slots__ = ("_clock", "_ino", "_offset", "adrift", "by_inode", "fs_types", "inode_of",
                 "moves", "path_of", "reported", "rescan", "root_wd", "skipped", "synth_cur",
                 "synth_prev", "unreported", "verified", "wd_of")

    def __init__(self, ino: InotifyFd, clock: Clock | None = None) -> None:
        self._ino = ino
        self._clock = clock = SystemClock() if clock is None else clock
        # The wall clock less the boot clock when the claims' stamps were taken (see now).
        self._offset = clock.realtime_ns() - clock.boottime_ns()
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
        # tell a watched directory without asking the kernel (see vouched): identity() -> when
        # the kernel last said so (less CTIME_SLACK_NS) << _WD_BITS | wd, and wd -> identity.
        self.by_inode: dict[int, int] = {}
        self.inode_of: dict[int, int] = {}
        # The devices whose file system stamps ctime from this machine's clock (see vouched)
        # and where the kernel has confirmed a watch since the last distrust().
        self.verified: set[int] = set()
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
        self.identify(wd, st)

    def forget(self, wd: int) -> None:
        """Drop watch `wd` (gone with its directory, or removed) and all that waits on it."""
        prefix = self.path_of.pop(wd, None)
        if prefix is not None and self.wd_of.get(prefix) == wd:
            del self.wd_of[prefix]
        self.unlinked(wd)
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
        self.by_inode.clear()
        self.inode_of.clear()
        self.verified.clear()
        self.synth_cur.clear()
        self.synth_prev.clear()
        self.rescan.clear()
        self.reported.clear()
        self.unreported.clear()
        self.adrift.clear()
        self.skipped.clear()

    # -- which directory each watch is on ------------------------------------------------------

    def identify(self, wd: int, st: os.stat_result) -> None:
        """The kernel says, now, that watch `wd` is on the directory of `st`."""
        key = identity(st)
        self.unlinked(wd)  # a wd stays on one inode; this only tidies a record that was wrong
        claim = self.by_inode.get(key, _NO_CLAIM)
        if claim >= 0 and claim & _WD_MASK != wd:
            del self.inode_of[claim & _WD_MASK]  # that watch went with its directory, unread
        self.inode_of[wd] = key
        self.by_inode[key] = (self.now() - CTIME_SLACK_NS) << _WD_BITS | wd

    def now(self) -> int:
        """The wall clock, for a claim's stamp. If it was stepped since the claims were
        stamped (it moved against the boot clock), no claim's stamp is trusted any more: each
        is asked of the kernel again, and so stamped anew."""
        clock = self._clock
        now = clock.realtime_ns()
        offset = now - clock.boottime_ns()
        if abs(offset - self._offset) > CLOCK_STEP_NS:
            self._offset = offset
            by_inode = self.by_inode
            for key, claim in by_inode.items():
                by_inode[key] = claim & _WD_MASK  # stamped at 0: no ctime is older
            self.verified.clear()
        return now

    def unlinked(self, wd: int) -> None:
        """Watch `wd`'s directory was removed (IN_DELETE_SELF) or its watch went: its inode
        number may be given to another directory."""
        key = self.inode_of.pop(wd, None)
        if key is not None and self.by_inode.get(key, _NO_CLAIM) & _WD_MASK == wd:
            del self.by_inode[key]

    def vouched(self, st: os.stat_result) -> int:
        """The wd of ours on the directory of `st` (an fstat of it, open), NOT_OURS, or UNSURE:
        ask the kernel (then tell `checked` its answer).

        Our record of identities misses nothing we watch, but may hold one whose directory was
        removed meanwhile (its IN_DELETE_SELF unread, or lost in an overflow), and whose inode
        number another directory has since been given (ext4 does so at once). That directory
        was made after the removal, hence after the kernel confirmed our watch on the inode
        (it was alive then: we held it open), and its ctime says so: the kernel sets ctime on
        creation and on every change from the wall clock, and no user can set it back. So a
        directory whose ctime is older than the confirmation is the one confirmed, unless the
        wall clock was stepped back meanwhile: `now` sees a step, and then trusts no stamp.
        On devices whose time stamps come from another clock (NFS, FUSE: not timely), and on
        each device until the kernel has confirmed one claim there since distrust() (a file
        system unmounted and mounted again comes back with the same identities, unwatched;
        another may take its device number), the kernel is asked.
        """
        dev = st.st_dev
        self.now()  # a step of the clock seen here too, not only at a walk (it clears verified)
        if dev not in self.verified:
            return UNSURE
        claim = self.by_inode.get(dev << 64 | st.st_ino, _NO_CLAIM)
        if claim < 0:
            return NOT_OURS
        return claim & _WD_MASK if st.st_ctime_ns < claim >> _WD_BITS else UNSURE

    def checked(self, st: os.stat_result, got: int, *, timely: bool) -> None:
        """The kernel's answer for the directory of `st`: the wd of ours on it, or < 0: none.
        `timely`: its file system stamps ctime from this machine's clock (asked of it now)."""
        claim = self.by_inode.get(identity(st), _NO_CLAIM)
        if claim >= 0:
            claim &= _WD_MASK
        if got >= 0:
            self.identify(got, st)  # first: a clock step seen there distrusts every device
            if claim == got and timely:
                self.verified.add(st.st_dev)
        elif claim >= 0:
            self.unlinked(claim)  # that watch is not on this directory: it went with another

    def distrust(self) -> None:
        """From now on, ask the kernel again on each device until it confirms one claim there
        (see vouched), and of its file system's type: before a walk or a scan that relies on
        the record, and at an unmount. A clock step since the claims were stamped is seen."""
        self.verified.clear()
        self.fs_types.clear()
        self.now()

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
