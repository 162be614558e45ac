"""Which directory each watch of a tree is on, by identity (st_dev, st_ino): so that a walk
or a scan can tell a watched directory without asking the kernel, where the record can vouch
for it (see Identities.vouched), and asks the kernel where it cannot.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Protocol

# Identities.vouched's answers besides a wd: no watch of ours is on that directory, or ask the
# kernel.
NOT_OURS, UNSURE = -1, -2
# How much older than its watch's confirmation a directory's ctime must be for the tree to vouch
# for it (see Identities.vouched): the kernel stamps ctime from a clock that may lag the one read
# here by a tick, and a clock may be slewed.
CTIME_SLACK_NS = 1_000_000_000
# How far the wall clock may move against the boot clock before the tree takes it for a step
# (see Identities.now): the two are slewed together, and only a step (NTP, `date -s`, a
# virtual machine restored) moves one against the other; a step back would make a directory
# made later look older than a claim.
CLOCK_STEP_NS = 500_000_000
# A claim of by_inode, packed into one int to spare memory (a tuple of two ints costs three
# objects per watched directory): the confirmation time above _WD_BITS, the wd below.
_WD_BITS = 32
_WD_MASK = (1 << _WD_BITS) - 1
_NO_CLAIM = -1


def identity(st: os.stat_result) -> int:
    """A directory's identity (st_dev, st_ino) as one int, a key of Identities.by_inode."""
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


class Identities:
    """Which directory each of a tree's watches is on, and since when the kernel says so.

    Mutable, and one tree's (its Watches hold it): not a value.
    """

    __slots__ = ("_clock", "_offset", "by_inode", "inode_of", "verified")

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock = SystemClock() if clock is None else clock
        # The wall clock less the boot clock when the claims' stamps were taken (see now).
        self._offset = clock.realtime_ns() - clock.boottime_ns()
        # identity() -> when the kernel last said so (less CTIME_SLACK_NS) << _WD_BITS | wd,
        # and wd -> identity.
        self.by_inode: dict[int, int] = {}
        self.inode_of: dict[int, int] = {}
        # The devices whose file system stamps ctime from this machine's clock (see vouched)
        # and where the kernel has confirmed a watch since the last distrust().
        self.verified: set[int] = set()

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
        (see vouched). A clock step since the claims were stamped is seen."""
        self.verified.clear()
        self.now()

    def clear(self) -> None:
        """Forget every claim (the tree's watches are all gone)."""
        self.by_inode.clear()
        self.inode_of.clear()
        self.verified.clear()
