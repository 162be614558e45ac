"""One configured watch inside the watcher: its state, and the rules for when it is tried again.

What is here decides; the watcher acts (opens and closes fds, sends messages). One watch's
trouble stays that watch's: an unexpected error backs off that watch alone, and a limit that
left directories unwatched is retried on a schedule of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from watchd.channel import Limit, Lost, Overflow, Phase, Spec, WatchReport
from watchd.globs import glob_predicate
from watchd.inotify import InotifyFd
from watchd.inotify.errors import DirectoryBudgetError
from watchd.inotify.tree import Tree
from watchd.reasons import LostReason, OverflowReason
from watchd.records import Recorder

LIMIT_RETRY_S = 10.0  # how often a tree stopped by the kernel's watch limit tries again
BUDGET_RETRY_S = 2.0  # at most this often, a tree stopped by its own budget is rescanned
# After a watch failed unexpectedly, it is tried again after this long, doubled at each failure
# in a row up to the maximum, so that one broken watch cannot keep the watcher busy.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0


def name_filter(include: tuple[str, ...],
                exclude: tuple[str, ...]) -> Callable[[str], bool] | None:
    """A predicate on a base name: True when the name is reported; None when all are."""
    if not include and not exclude:
        return None
    inc = glob_predicate(include)
    exc = glob_predicate(exclude)

    def wanted(name: str) -> bool:
        if exc is not None and exc(name):
            return False
        return inc is None or inc(name)

    return wanted


def retry_delay(failures: int) -> float:
    """Seconds before a watch that failed `failures` times in a row is tried again."""
    # The exponent is capped: a float cannot hold 2 ** 1024, and a watch may fail for days.
    return min(RETRY_MAX_S, RETRY_FIRST_S * 2.0 ** min(failures - 1, 32))


@dataclass(slots=True)
class Watch:
    """One configured watch inside the watcher: its spec, and its tree while active."""

    spec: Spec
    ino: InotifyFd | None = None
    tree: Tree | None = None
    wanted: Callable[[str], bool] | None = None
    problem: str | None = None  # why it is pending, logged once per distinct problem
    was_active: bool = False
    failures: int = 0  # unexpected errors in a row (see failed)
    lost_events: bool = False  # it failed while active: events were lost since
    retry_at: float = 0.0  # monotonic time before which a failed watch is not tried again
    limit_retry_at: float = 0.0  # monotonic; see limit_retry_due
    recorder: Recorder = field(default_factory=Recorder)  # records for the index (resync)
    # Whole scans sent; the number of the last one while its catch-up (channel.Caught) is
    # owed, else 0; and whether that waits for a read of the kernel's queue (see
    # scan_sent).
    scans: int = 0
    catching: int = 0
    catch_read: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def path(self) -> str:
        return self.spec.path

    @property
    def real_path(self) -> str:
        return self.spec.real_path

    def scan_sent(self) -> None:
        """A whole scan of the watch went to the daemon: it is to be told (channel.Caught, see
        catch_up_due) once every event queued before the scan ended is read and sent.

        Those events may still change what a client has at the scan's `resynced`: a directory
        that came while the scan ran, its coming not read yet, is listed but not entered (see
        watchd.fill.scan_whole), and what it holds is reported by the tree's walk when its
        IN_CREATE or IN_MOVED_TO is read; and the daemon's index takes their moves for replays
        of what the scan shows until then. One read takes the whole queue (InotifyFd.read_raw),
        so the next read of the watch is that point, when anything was queued (see read_done);
        a scan before it waits for a read of its own. Events read before the scan and sent
        after it (those the channel held back, see WatcherChannel.send_events) go out in the
        same turn of the loop, before the catch-up. A watch that fails owes none: the scan
        that follows its loss's notice answers (see failed).
        """
        self.scans += 1
        self.catching = self.scans
        ino = self.ino
        self.catch_read = ino is not None and not ino.closed and ino.queued() > 0

    def awaited(self) -> int:
        """Before a read: the scan whose catch-up waits for it (0: none)."""
        return self.catching if self.catch_read else 0

    def read_done(self, awaited: int) -> None:
        """After a read and the sends of what it held (`awaited`: as before it). With no scan
        since, it took all that was queued; but what the tree could not reach yet (a parent
        renamed after the read began) is listed in a later batch, which the rename's own
        events bring, or the tree gives up and reports an overflow: the catch-up waits."""
        if awaited and self.catching == awaited and not (
                self.tree is not None and self.tree.relisting):
            self.catch_read = False

    def catch_up_due(self) -> bool:
        """At the end of a turn of the watcher's loop: whether to send the catch-up now."""
        if self.catching and not self.catch_read:
            self.catching = 0
            return True
        return False

    def failed(self, error: Exception, now: float) -> None:
        """Record an unexpected error (the caller drops its tree): back off, longer each time."""
        self.lost_events = self.lost_events or self.ino is not None
        self.catching = 0  # what it read last was not all sent: not caught up
        self.failures += 1
        delay = retry_delay(self.failures)
        self.retry_at = now + delay
        self.problem = f"failed ({type(error).__name__}: {error}); retrying in {delay:.0f} s"

    def root_gone(self) -> list[Overflow | Lost]:
        """What to tell the daemon when the root went (nothing, or a file or a link, in its
        place) while the watch is not established. For one that failed while active, its loss:
        told once its watches are in place again (see Watcher.activate), it is told now, with
        "resync": false (a resync announced before the failure cannot come), then the root's
        loss, so that its return is a watch_restored like any root's. Nothing for the others
        (nothing was lost, or it was told already)."""
        if not self.lost_events:
            return []
        self.lost_events = False
        self.problem = None  # pending as any root that went, no longer for its failure
        # Its return is looked for at the next poll, as any root's, not after the back-off.
        self.failures = 0
        self.retry_at = 0.0
        return [Overflow(self.name, reason=OverflowReason.WATCH_FAILED),
                Lost(self.name, self.path, LostReason.DELETED)]

    def limit_retry_due(self, now: float) -> bool:
        """Whether to watch again what a limit left unwatched, now (and if so, when next).

        Past its own budget, a tree is rescanned once it holds fewer watches (deletions,
        IN_IGNORED), at most every BUDGET_RETRY_S; past the kernel's limit, which other
        watches and programs share, every LIMIT_RETRY_S.
        """
        tree = self.tree
        if tree is None or tree.limit_error is None:
            return False
        if isinstance(tree.limit_error, DirectoryBudgetError):
            budget = tree.max_directories
            if budget is not None and tree.directories >= budget:
                return False
            # Freed watches are looked for at once, but a rescan of the whole tree at
            # most every BUDGET_RETRY_S: one rmdir a second must not cost a walk each.
            if now < self.limit_retry_at:
                return False
            self.limit_retry_at = now + BUDGET_RETRY_S
        elif now < self.limit_retry_at:
            return False
        else:
            self.limit_retry_at = now + LIMIT_RETRY_S
        return True

    def report(self) -> WatchReport:
        """Where the watch stands, for the heartbeat."""
        tree = self.tree
        if tree is None:
            return WatchReport(Phase.PENDING, 0, 0, self.problem, None)
        if tree.limit_error is not None or tree.unreadable:
            # Only a watch limit is announced to subscribers (watch_degraded).
            limit = (None if tree.limit_error is None
                     else Limit.MAX_DIRECTORIES if isinstance(tree.limit_error,
                                                              DirectoryBudgetError)
                     else Limit.MAX_USER_WATCHES)
            return WatchReport(Phase.DEGRADED, tree.directories, tree.unwatched + tree.unreadable,
                               degraded_problem(tree), limit)
        return WatchReport(Phase.ACTIVE, tree.directories, 0, None, None)


def degraded_problem(tree: Tree) -> str:
    """Why some directories of a tree are not watched, for status and the log."""
    parts = []
    if tree.limit_error is not None:
        parts.append(str(tree.limit_error))
    if tree.unreadable:
        prefix, reason = next(iter(tree.failed.items()), ("", "?"))
        example = f" (first: {prefix[:-1] or '/'}: {reason})" if prefix else ""
        many = tree.unreadable > 1
        parts.append(f"{tree.unreadable} {'directories' if many else 'directory'} could not be "
                     f"read{example}; what is below {'them' if many else 'it'} is not watched")
    return "; ".join(parts)
