"""The durable state directory: what lets clients resume across a restart of the daemon.

    <state_directory>/          mode 0700, owned by the daemon's user
      lock                      flock'ed while a daemon uses the directory; empty, but for a
                                note that a run gave the state up without removing state.json
      state.json                {"format", "instance", "boot_id", "clean", "seq"}
      journal/<seq>.seg         the replay journal (watchd.journal)
      index/<hex name>.idx      each watch's index, with the seq it is as of

Write and fsync policy.
* The journal: one write per batch, before the batch goes to any client; fsync'ed at most
  every daemon.journal_fsync_interval seconds (off the event loop), and at a stop. A SIGKILL
  or a crash of the daemon loses nothing that was written: the page cache keeps it.
* The indexes: written whole (tmp file, fsync, rename, fsync of the directory) at a stop,
  after the journal closes a segment, after a resync, and at most every INDEX_INTERVAL_S while
  events come. An index that waits for the second half of a directory's move (split between
  two batches) is not stored then: its previous file stays, and it is stored at the next tick
  (the others are stored at once). A directory whose move waited since the previous tick is
  stored as moved out of the tree (the live index still pairs a late second half), so that no
  index waits more than two ticks. At start, the
  journal's events after an index's seq are applied to it (watchd.restore), so that it
  describes the tree as the last published event did.
* An index that a `"resync": false` notice voids (its subscribers rescan, and the index starts
  over) is removed on the loop before the notice is published, so before the journal holds
  the notice (State.forget). Not sorted out at a restart instead: the notice's seq is the last
  event's, as is a save's, so the files cannot tell an index stored just before the notice
  (void) from one stored just after it (good); removing first is exact, one unlink per loss.
  So is an index the resume's own `daemon_restart` notice voids (watchd.restore.open_state).
* state.json: written the same way at start ("clean": false) and at a stop ("clean": true,
  with the last seq).

What a crash can lose. A crash of the daemon alone: nothing; it resumes its instance and
numbers on after the journal's last seq, above every seq it may have sent. A crash of the
machine (a power cut, a kernel panic) may lose the journal's records written after its last
fsync, which clients may have seen: so a state that was not closed cleanly in an earlier boot
is not resumed: the daemon starts with a new instance (clients get since_expired and rescan).
State that cannot be read is moved aside (to NAME.bad) with a warning, and the daemon starts
fresh with a new instance; one it cannot write (a read-only or full file system) is logged as
an error, and the daemon goes on without durable state ("durable": false in hello): it removes
state.json, or, when that fails too, notes in the lock file (open for writing, so no directory
write is needed) that the state was given up; a start that finds the note begins a new instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable

from watchd import journal
from watchd.journal import StateError
from watchd.listing import Index
from watchd.previous import FORMAT, Resumed, boot_id, read_previous
from watchd.statefiles import (
    INDEX,
    INDEX_SUFFIX,
    JOURNAL,
    META,
    Removals,
    directory_bytes,
    encode_index,
    fsync_close,
    given_up,
    index_file,
    note_given_up,
    write_all,
    write_atomic,
)

log = logging.getLogger("watchd")

LOCK = "lock"
# An index to store: (watch name, what the watch is, the index or None, the seq it is as of,
# None for the last one published).
Snapshot = tuple[str, str, Index | None, int | None]
INDEX_INTERVAL_S = 60.0  # the indexes are written at most this often while events come
# The directory's size is read again at most this often: anyone may ask for status, often.
SIZE_READ_S = 1.0


class State:
    """The state directory of a running daemon: opened at start, written while it runs."""

    def __init__(self, path: str, *, max_bytes: int, fsync_interval: float,
                 retain: Callable[[], int]) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.fsync_interval = fsync_interval
        self.retain = retain
        self.journal: journal.Journal | None = None
        self.restored_from: int | None = None
        self.on_fail: Callable[[], None] = lambda: None  # the daemon stops recording
        # The watches whose index cannot be stored now (Resyncer.unsettled; True: at a tick,
        # which bounds the wait): it lacks a directory whose move is half published.
        self.unsettled: Callable[[bool], frozenset[str]] = lambda tick: frozenset()
        self._owed: frozenset[str] = frozenset()  # their index, kept from a save: next tick
        self._lock_fd = -1
        self._saved = time.monotonic()
        self._saved_seq = -1
        self.snapshot_due = False
        self._sized = (-math.inf, 0)  # (when, the directory's size): see SIZE_READ_S
        self._pending: asyncio.Future[list[tuple[str, OSError]]] | None = None
        self._removals = Removals()  # of indexes voided while a write is under way

    @property
    def durable(self) -> bool:
        """Whether what is published now is on record for a restart."""
        return self.journal is not None and not self.journal.failed

    # -- start ---------------------------------------------------------------------------------

    def open(self, specs: dict[str, str]) -> Resumed | None:
        """Take the directory and what a previous run left in it; returns what to resume, or
        None to start afresh. On return, durable says whether recording works; call start."""
        try:
            self._lock_fd = lock_directory(self.path)
        except OSError as e:
            self._unusable(e)
            return None
        left: list[str] = []
        try:
            left = given_up(self._lock_fd)
            resumed = None if left else read_previous(self.path, specs)
        except StateError as e:
            log.debug("state not resumed: %s", e)
            resumed = None
        except OSError as e:
            log.warning("state %s cannot be read (%s); starting with a new instance",
                        self.path, e.strerror or e)
            resumed = None
        if left:
            log.warning("state %s: a previous run gave it up and could not remove %s; "
                        "starting with a new instance", self.path, " nor ".join(left))
        if resumed is not None:
            self.restored_from = resumed.loaded.last_seq
        else:
            try:
                wipe(self.path)
                self.restored_from = None
            except OSError as e:
                self._unusable(e)
        return resumed

    def start(self, instance: str, last_seq: int) -> bool:
        """Record from now on under `instance`, after `last_seq`; False (and logged) when the
        directory cannot be written."""
        if self._lock_fd < 0:
            return False
        rec = journal.Journal(os.path.join(self.path, JOURNAL), max_bytes=self.max_bytes,
                              retain=self.retain, on_error=self.fail, on_rotate=self._rotated)
        try:
            rec.open(last_seq)
            self._write_meta(instance, clean=False, seq=last_seq)
        except OSError as e:
            rec.close()
            self._unusable(e)
            return False
        self.instance = instance
        self.journal = rec
        self._saved_seq = last_seq
        try:
            os.ftruncate(self._lock_fd, 0)  # a note that the state was given up is answered
        except OSError as e:
            log.warning("cannot empty %s: %s; the next start begins a new instance",
                        os.path.join(self.path, LOCK), e.strerror)
        return True

    def _unusable(self, e: OSError) -> None:
        log.error("state directory %s: %s; going on without durable state (clients cannot "
                  "resume across a restart)", self.path, e.strerror or e)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _write_meta(self, instance: str, *, clean: bool, seq: int) -> None:
        meta = {"format": FORMAT, "instance": instance, "boot_id": boot_id(), "clean": clean,
                "seq": seq}
        write_atomic(os.path.join(self.path, META), json.dumps(meta).encode() + b"\n")

    # -- while running -------------------------------------------------------------------------

    def _rotated(self) -> None:
        self.snapshot_due = True  # before the journal forgets the events after an index's seq

    def tick(self, last_seq: int, indexes: Callable[[], Iterable[Snapshot]],
             ) -> None:
        """Once a second: the indexes, when due (written off the loop)."""
        if self.journal is None:
            return
        self.unsettled(True)  # a wait since the previous tick ends now
        if self.snapshot_due or (last_seq != self._saved_seq
                                 and time.monotonic() - self._saved >= INDEX_INTERVAL_S):
            self.save(last_seq, indexes)
        elif self._owed:
            self.save(last_seq, indexes, only=self._owed)

    async def sync_forever(self) -> None:
        """Every fsync_interval: the journal's fsync, in a thread, when it was written to."""
        loop = asyncio.get_running_loop()
        while (rec := self.journal) is not None:
            await asyncio.sleep(self.fsync_interval)
            fd = rec.sync_fd()
            if fd is not None:
                self._synced_fd(await loop.run_in_executor(None, fsync_close, fd), rec)

    def save(self, last_seq: int, indexes: Callable[[], Iterable[Snapshot]],
             only: frozenset[str] | None = None) -> None:
        """Store the indexes as of last_seq (or `only` these watches'): serialized now, written
        off the loop (or at the next tick, when a write is still under way). A watch whose
        index is not settled keeps its stored one, and is owed a save at the next tick."""
        if self._pending is not None or self.journal is None:
            self.snapshot_due = True
            return
        snapshots = list(indexes())
        waiting = self.unsettled(False)
        keep = waiting if only is None else waiting | {
            name for name, *_ in snapshots if name not in only}
        blobs = self._blobs(last_seq, snapshots, keep)
        self._removals.begin()
        self._pending = pending = asyncio.get_running_loop().run_in_executor(
            None, write_all, blobs, self._removals.replace)
        pending.add_done_callback(self._saved_all)
        self._owed = waiting if only is None else waiting & only
        if only is None:
            self._saved, self._saved_seq, self.snapshot_due = time.monotonic(), last_seq, False

    def forget(self, names: Iterable[str]) -> None:
        """Remove these watches' stored indexes now: their subscribers are about to be told
        "resync": false (see the module's docstring). A write under way does not bring them
        back; the next save stores what the watch's index has become."""
        if self.journal is None:
            return
        for name in names:
            path = index_file(self.path, name)
            try:
                self._removals.remove(path)
            except OSError as e:
                self.fail(path, e, "remove")  # the state is given up: no restart compares with it

    def _synced_fd(self, error: OSError | None, rec: journal.Journal) -> None:
        if error is not None:
            rec.fail(os.path.join(self.path, JOURNAL), error)

    def _saved_all(self, future: asyncio.Future[list[tuple[str, OSError]]]) -> None:
        self._pending = None
        for path, error in future.result():
            self.fail(path, error)

    def _blobs(self, seq: int, indexes: Iterable[Snapshot],
               keep: frozenset[str] = frozenset()) -> list[tuple[str, bytes | None]]:
        """What to write for each index: its bytes, or None to remove a stale one (a watch
        whose index starts over, or one no longer configured). The files of the watches in
        `keep` stay as they are."""
        blobs: list[tuple[str, bytes | None]] = [
            (index_file(self.path, name), None if dirs is None
             else encode_index(name, spec, seq if as_of is None else as_of, dirs))
            for name, spec, dirs, as_of in indexes if name not in keep]
        wanted = {path for path, _ in blobs} | {index_file(self.path, name) for name in keep}
        with contextlib.suppress(OSError):
            for entry in os.listdir(os.path.join(self.path, INDEX)):
                path = os.path.join(self.path, INDEX, entry)
                if entry.endswith(INDEX_SUFFIX) and path not in wanted:
                    blobs.append((path, None))
        return blobs

    def fail(self, what: str, error: OSError, doing: str = "write") -> None:
        """A write failed: stop recording, and give up the state so that a restart does not
        resume an instance whose newest seqs are not on record."""
        rec = self.journal
        if rec is None:
            return
        self.journal = None
        rec.fail(what, error)
        log.error("cannot %s %s: %s; going on without durable state (clients that connect "
                  "now are told \"durable\": false; a restart begins a new instance)",
                  doing, what, error.strerror or error)
        self.on_fail()
        meta = os.path.join(self.path, META)
        try:
            os.unlink(meta)
        except FileNotFoundError:
            pass
        except OSError as e:
            record_given_up(self.path, self._lock_fd,
                            [what, meta] if doing == "remove" else [meta], e)

    async def close(self, last_seq: int,
                    indexes: Iterable[Snapshot]) -> None:
        """At a stop: the journal fsync'ed, every index written, then state.json as clean."""
        if self._pending is not None:
            with contextlib.suppress(Exception):
                await self._pending
        rec = self.journal
        if rec is not None:
            errors: list[tuple[str, OSError]] = []
            if rec.fd >= 0:
                try:
                    os.fsync(rec.fd)
                except OSError as e:
                    errors.append((os.path.join(self.path, JOURNAL), e))
            errors += write_all(self._blobs(last_seq, indexes))
            if not errors:
                try:
                    self._write_meta(self.instance, clean=True, seq=last_seq)
                except OSError as e:
                    errors.append((os.path.join(self.path, META), e))
            for path, error in errors:
                self.fail(path, error)
            if self.journal is not None:
                self.journal.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def status(self) -> dict[str, object]:
        """The status fields of durable state."""
        now = time.monotonic()
        if now - self._sized[0] >= SIZE_READ_S:
            self._sized = (now, directory_bytes(self.path))
        return {"state_directory": self.path, "durable": self.durable,
                "journal_bytes": self.journal.size if self.journal is not None else 0,
                "state_bytes": self._sized[1], "restored_from": self.restored_from}


def record_given_up(path: str, lock_fd: int, left: list[str], error: OSError) -> None:
    """state.json cannot be removed: the lock file says instead that the state was given
    up (a restart that resumed it would reuse seqs, and compare with a voided index)."""
    meta = left[-1]
    try:
        note_given_up(lock_fd, left)
    except OSError as e:
        log.error("cannot remove %s: %s, nor note in %s that the state was given up: %s; "
                  "remove %s before watchd starts again", meta, error.strerror,
                  os.path.join(path, LOCK), e.strerror, meta)
        return
    log.error("cannot remove %s: %s; noted in %s: the next start begins a new instance",
              meta, error.strerror, os.path.join(path, LOCK))


def lock_directory(path: str) -> int:
    """Make the state directory (and check whose it is), and lock it; returns the lock's fd."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path):
        raise OSError(errno.ENOTDIR, "not a directory")
    if st.st_uid != os.geteuid():
        raise OSError(errno.EPERM, f"owned by uid {st.st_uid}, not by the daemon's user")
    if st.st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)
    for sub in (JOURNAL, INDEX):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        os.close(fd)
        raise OSError(errno.EBUSY, "another watchd uses it") from e
    return fd


def wipe(path: str) -> None:
    """Forget a previous run's journal and indexes, and the temporary files of writes a
    crash interrupted (the files moved aside stay)."""
    for sub, suffixes in (("", (".tmp",)), (JOURNAL, (journal.SUFFIX,)),
                          (INDEX, (INDEX_SUFFIX, ".tmp"))):
        directory = os.path.join(path, sub)
        for entry in os.listdir(directory):
            if entry.endswith(suffixes):
                os.unlink(os.path.join(directory, entry))


def new_instance() -> str:
    return secrets.token_hex(8)

