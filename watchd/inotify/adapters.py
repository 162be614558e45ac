"""The `inotify` package's event API (Inotify, InotifyTree, InotifyTrees) on watchd's binding.

Events are `(header, type_names, watch_path, filename)` tuples, as in that package; the
differences from it (overflow never silent, trees that follow renames, ...) are listed in
docs/inotify.md.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from typing import NamedTuple, Self, TypeAlias

from watchd.errors import WatchdError
from watchd.globs import glob_predicate
from watchd.inotify import calls, errors
from watchd.inotify._binding import InotifyFd, RawEvent
from watchd.inotify.constants import (
    IN_ALL_EVENTS,
    IN_CREATE,
    IN_DELETE,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    MASK_LOOKUP,
)
from watchd.inotify.tree import Tree, TreeEvent

_LOGGER = logging.getLogger(__name__)

_DEFAULT_EPOLL_BLOCK_DURATION_S = 1
_DEFAULT_TERMINAL_EVENTS = ("IN_Q_OVERFLOW", "IN_UNMOUNT")

# Headers kept for reuse; past this many (cookies and watches vary) the cache starts over.
_HEADER_CACHE_SIZE = 4096

# Bits of the events that need a Tree's bookkeeping (the list Tree.handle itself uses when it
# follows no symlinks and reports no synthetic events, as the trees here do).
_NEEDS_TREE = IN_ISDIR | IN_MOVED_FROM | IN_MOVED_TO | IN_IGNORED | IN_UNMOUNT | IN_Q_OVERFLOW

# Events a Tree handles without reporting them (IN_UNMOUNT: but on its root).
_UNREPORTED = IN_IGNORED | IN_UNMOUNT

# Bits a tree adds to the caller's mask, as that package does: its trees always report
# creations and deletions, whatever the mask asked for.
_TREE_MASK_BITS = IN_CREATE | IN_DELETE

PathIn: TypeAlias = str | bytes | os.PathLike[str] | os.PathLike[bytes]
BlockDuration: TypeAlias = float | Callable[[], float | None] | None
Exclude: TypeAlias = Iterable[str] | Callable[[str], bool] | None


class _INOTIFY_EVENT(NamedTuple):  # the name that package's users and tests reach for
    """The kernel's event header; `len` is its padded name length (0 without a name)."""

    wd: int
    mask: int
    cookie: int
    len: int


Event: TypeAlias = tuple[_INOTIFY_EVENT, list[str], str, str]


class EventTimeoutException(WatchdError):
    """Kept for code that catches it; event_gen ends on its timeout instead of raising this."""


class TerminalEventException(WatchdError):
    """A terminal event (by default IN_Q_OVERFLOW or IN_UNMOUNT) arrived; `.event` is it."""

    def __init__(self, type_name: str, event: Event) -> None:
        super().__init__(type_name)
        self.type_name = type_name
        self.event = event

    def __str__(self) -> str:
        if self.type_name == "IN_Q_OVERFLOW":
            return (
                "IN_Q_OVERFLOW: the kernel's inotify queue overflowed and events were lost; "
                "rescan what you watch, and read faster or raise fs.inotify.max_queued_events "
                "(or pass terminal_events without IN_Q_OVERFLOW to receive it as an event)"
            )
        if self.type_name == "IN_UNMOUNT":
            return f"IN_UNMOUNT: the file system holding {self.event[2]!r} was unmounted"
        return f"{self.type_name}: terminal event on {self.event[2]!r}"


def _raise_terminal(event: Event, terminal_events: Container[str]) -> None:
    for type_name in event[1]:
        if type_name in terminal_events:
            raise TerminalEventException(type_name, event)


def _as_str(path: PathIn) -> str:
    return os.fsdecode(os.fspath(path))


def _pruner(exclude: Exclude) -> Callable[[str], bool] | None:
    """A predicate on a directory's base name from globs or a predicate; None for no pruning."""
    if exclude is None or callable(exclude):
        return exclude
    return glob_predicate([exclude] if isinstance(exclude, str) else exclude)


class Inotify:
    """One inotify instance with its watches, read through event_gen()."""

    def __init__(
        self,
        paths: Iterable[PathIn] = (),
        block_duration_s: BlockDuration = _DEFAULT_EPOLL_BLOCK_DURATION_S,
    ) -> None:
        self._block_duration = block_duration_s
        self._wd_of: dict[str, int] = {}
        self._path_of: dict[int, str] = {}
        self._trees: list[Tree] = []
        self._tree_report = 0  # the kinds the trees report (all trees here share one mask)
        self._had_trees = False
        self._warned: list[Tree] = []
        self._names: dict[int, tuple[str, ...]] = {}
        self._headers: dict[tuple[int, int, int, int], _INOTIFY_EVENT] = {}
        self._encoding = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())
        # What was read and not yet handed out, as one iterator per read (or per run of one
        # tree's events): a caller that leaves event_gen early (filter, terminal event, break)
        # finds the rest at its next call.
        self._pending: deque[Iterator[Event]] = deque()
        self._last_success_return: tuple[str, Event] | None = None
        try:
            self._fd = InotifyFd()
        except errors.InotifyError as e:
            raise calls.InotifyError.from_error(e) from e
        try:
            for path in paths:
                self.add_watch(path)
        except BaseException:
            self._fd.close()
            raise

    # -- the fd ----------------------------------------------------------------------------

    def fileno(self) -> int:
        """The inotify fd, readable when events are queued (for select, epoll or asyncio)."""
        return self._fd.fileno()

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._fd.closed

    def close(self) -> None:
        """Close the inotify fd and forget every watch; calling it again does nothing."""
        self._fd.close()
        self._pending.clear()
        self._trees.clear()
        self._wd_of.clear()
        self._path_of.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- watches ---------------------------------------------------------------------------

    def add_watch(self, path_unicode: PathIn, mask: int = IN_ALL_EVENTS) -> int:
        """Watch `path_unicode` for the events in `mask`; return its watch descriptor."""
        path = _as_str(path_unicode)
        try:
            wd = self._fd.add_watch(path_unicode, mask)
        except errors.InotifyError as e:
            raise calls.InotifyError.from_error(e) from e
        old = self._path_of.get(wd)
        if old is not None and old != path:
            # Another name of an inode already watched: the kernel gave the same wd back.
            del self._wd_of[old]
        self._wd_of[path] = wd
        self._path_of[wd] = path
        return wd

    def remove_watch(self, path: PathIn, superficial: bool = False) -> None:
        """Stop watching `path` (superficial: only forget it; the kernel has dropped it)."""
        wd = self._wd_of.get(_as_str(path))
        if wd is not None:
            self.remove_watch_with_id(wd, superficial)

    def remove_watch_with_id(self, wd: int, superficial: bool = False) -> None:
        """Stop watching the watch `wd` (superficial: only forget it)."""
        path = self._path_of.pop(wd, None)
        if path is None:
            return
        del self._wd_of[path]
        if not superficial:
            try:
                self._fd.rm_watch(wd)
            except errors.InotifyError as e:
                raise calls.InotifyError.from_error(e) from e

    def _watch_tree(self, path: PathIn, mask: int, prune: Callable[[str], bool] | None) -> Tree:
        """Start a recursive Tree of `path` on this instance's fd; its events join event_gen."""
        # That package lists a new directory before watching it, so its parent's watch reports
        # the listing and the directory's own watch does not; its tests check exactly that.
        # A root given as a symbolic link is resolved now, once (events keep the path as
        # given); the tree then opens it following no link, as it does everything below it.
        tree = Tree(
            self._fd, os.fsdecode(path), mask, recursive=True, prune=prune,
            follow_symlinks=False, synthetic=False, quiet_listing=True, quiet_parent=False,
            real_root=os.path.realpath(os.fsdecode(path)),
        )
        try:
            tree.start()
        except errors.InotifyError as e:
            raise calls.InotifyError.from_error(e) from e
        if tree.limit_error is not None:
            tree.close()
            raise calls.InotifyError.from_error(tree.limit_error) from tree.limit_error
        self._trees.append(tree)
        self._tree_report = mask & IN_ALL_EVENTS
        self._had_trees = True
        return tree

    # -- events ----------------------------------------------------------------------------

    def _names_of(self, mask: int) -> tuple[str, ...]:
        """The type names of `mask` in the order of constants.MASK_LOOKUP, cached per mask."""
        names = self._names.get(mask)
        if names is None:
            found = []
            rest = mask
            for bit, name in MASK_LOOKUP.items():
                if rest & bit:
                    found.append(name)
                    rest &= ~bit
            if rest:
                raise ValueError(f"unknown inotify bits {rest:#x} in event mask {mask:#x}")
            names = self._names[mask] = tuple(found)
        return names

    def _get_event_names(self, event_type: int) -> list[str]:
        """The names of the bits of `event_type`, in the order of constants.MASK_LOOKUP."""
        return list(self._names_of(event_type))  # a list of its own: callers sort theirs

    def _get_block_duration(self) -> float | None:
        block = self._block_duration
        return block() if callable(block) else block

    # The generators below build one event per kernel event, lazily: each event is made as
    # it is handed out, so a caller that drops it right away keeps the garbage collector
    # idle (a whole read of events kept alive at once costs ~1 us per event in collections).
    # Locals are bound once, headers are reused, and names are decoded as os.fsdecode does,
    # without its per-call checks.

    def _read(self) -> None:
        """Read what is queued and queue the events it holds for event_gen."""
        raw = self._fd.read_events()
        if not raw:
            return
        if self._trees:
            self._route(raw)
        else:
            self._pending.append(self._plain_events(raw))

    def _plain_events(self, raw: Sequence[RawEvent]) -> Iterator[Event]:
        """The events of plain watches (and overflows), as they are handed out."""
        path_of = self._path_of
        cache = self._names
        names_of = self._names_of
        header_of = self._header_of
        headers = self._headers
        encoding, errors_ = self._encoding
        for wd, mask, cookie, length, name in raw:
            path = path_of.get(wd)
            if path is None:
                if wd == -1:
                    yield (header_of((wd, mask, cookie, length)), list(names_of(mask)), "", "")
                continue  # a watch removed (or only forgotten) by the caller
            if mask & IN_IGNORED:  # the kernel dropped the watch: so do we
                del path_of[wd]
                del self._wd_of[path]
            key = (wd, mask, cookie, length)
            yield (
                headers.get(key) or header_of(key),
                list(cache.get(mask) or names_of(mask)),
                path,
                name.decode(encoding, errors_) if name else "",
            )

    def _tree_events(self, tree_events: list[TreeEvent]) -> Iterator[Event]:
        """The events a tree reported, as they are handed out."""
        cache = self._names
        names_of = self._names_of
        header_of = self._header_of
        headers = self._headers
        for mask, cookie, path, _src, wd, name, length in tree_events:
            if name:
                # The directory as it was named when the event happened (a rename later in
                # the same read does not rewrite it); a name never holds a "/".
                watch_path, _, filename = path.rpartition("/")
                watch_path = watch_path or "/"
            else:
                watch_path, filename = path, ""
            key = (wd, mask, cookie, length)
            yield (
                headers.get(key) or header_of(key),
                list(cache.get(mask) or names_of(mask)),
                watch_path,
                filename,
            )

    def _named_events(
        self, raw: Sequence[RawEvent], dirs: dict[int, str | None], report: int
    ) -> Iterator[Event]:
        """Named events of one tree without bookkeeping, in directories `dirs` maps."""
        cache = self._names
        names_of = self._names_of
        header_of = self._header_of
        headers = self._headers
        encoding, errors_ = self._encoding
        for wd, mask, cookie, length, name in raw:
            path = dirs[wd]
            if path is None or not mask & report:
                continue  # a watch the tree dropped, or a kind only the tree asked for
            key = (wd, mask, cookie, length)
            yield (
                headers.get(key) or header_of(key),
                list(cache.get(mask) or names_of(mask)),
                path,
                name.decode(encoding, errors_),
            )

    def _header_of(self, key: tuple[int, int, int, int]) -> _INOTIFY_EVENT:
        """The header for (wd, mask, cookie, len), made once and then reused.

        Headers are immutable and repeat (a burst is one wd, a few kinds, one name length),
        and building a NamedTuple costs more than looking one up.
        """
        headers = self._headers
        if len(headers) >= _HEADER_CACHE_SIZE:
            headers.clear()
        header = headers[key] = tuple.__new__(_INOTIFY_EVENT, key)
        return header

    def _route(self, raw: Sequence[RawEvent]) -> None:
        """Hand each event to its plain watch or to the tree that owns its wd, in order.

        The trees do their bookkeeping now, while the events are fresh: a new directory is
        watched at once, not when the caller gets to its event.
        """
        if len(self._trees) == 1 and not self._path_of:
            overflowed = self._route_one_tree(self._trees[0], raw)
        else:
            overflowed = self._route_events(raw)
        self._after_route(overflowed)

    def _route_one_tree(self, tree: Tree, raw: Sequence[RawEvent]) -> bool:
        """_route_events for one tree alone, with a shortcut for the common events.

        A named event without bookkeeping bits (a file created, written, deleted...) only
        needs its directory's path, which the tree can tell: such runs are turned into events
        here, at half the cost of going through Tree.handle. Every other event goes through
        the tree, in order. (Tree.handle treats such an event otherwise only when it reports
        synthetic events or follows symlinks, which trees here never do.)
        """
        path_of = tree.path_of
        report = self._tree_report
        overflowed = False
        start, end = 0, len(raw)
        while start < end:
            # The paths as they are now, before a rename further on in this read.
            dirs: dict[int, str | None] = {}
            stop = start
            while stop < end:
                wd, mask, _cookie, _length, name = raw[stop]
                if not name or mask & _NEEDS_TREE:
                    break
                if wd not in dirs:
                    dirs[wd] = path_of(wd)
                stop += 1
            if stop > start:
                self._pending.append(self._named_events(raw[start:stop], dirs, report))
            start = stop
            while stop < end:
                ev = raw[stop]
                if ev.name and not ev.mask & _NEEDS_TREE:
                    break
                stop += 1
            if stop > start:
                overflowed = self._route_events(raw[start:stop]) or overflowed
            start = stop
        return overflowed

    def _route_events(self, raw: Sequence[RawEvent]) -> bool:
        """Route events one by one; True when one of them is an overflow."""
        run: list[RawEvent] = []
        run_tree: Tree | None = None
        overflowed = False
        for ev in raw:
            wd = ev.wd
            if wd in self._path_of or wd == -1:
                if run_tree is not None:
                    self._flush(run_tree, run)
                    run, run_tree = [], None
                if wd == -1:
                    overflowed = overflowed or bool(ev.mask & IN_Q_OVERFLOW)
                self._pending.append(self._plain_events([ev]))
                continue
            tree = None
            for candidate in self._trees:
                if candidate.owns(wd):
                    tree = candidate
                    break
            if tree is None:
                continue  # a watch this instance has removed
            if ev.mask & _UNREPORTED:
                if run_tree is not None:
                    self._flush(run_tree, run)
                    run, run_tree = [], None
                self._unreported(tree, ev)
                continue
            if tree is not run_tree:
                if run_tree is not None:
                    self._flush(run_tree, run)
                run, run_tree = [], tree
            run.append(ev)
        if run_tree is not None:
            self._flush(run_tree, run)
        return overflowed

    def _after_route(self, overflowed: bool) -> None:
        """Resync the trees after an overflow, warn of watch limits, close lost trees."""
        if overflowed:
            for tree in self._trees:
                if tree.lost is None:
                    tree.resync()
        self._check_limits()
        for tree in [t for t in self._trees if t.lost is not None]:
            # The root is gone: its tree has nothing left to watch.
            tree.close()
            self._trees.remove(tree)

    def _unreported(self, tree: Tree, ev: RawEvent) -> None:
        """Queue an event that the tree does its bookkeeping on but does not report.

        Trees drop IN_IGNORED, and IN_UNMOUNT but on their root; this API reports both, with
        the directory's path as it was before the tree forgets it.
        """
        path = tree.path_of(ev.wd)
        reported = tree.handle([ev])
        if reported:  # the root's own IN_UNMOUNT
            self._pending.append(self._tree_events(reported))
        elif path is not None:
            self._pending.append(self._tree_events(
                [TreeEvent(ev.mask, ev.cookie, path, None, ev.wd, ev.name, ev.length)]))

    def _flush(self, tree: Tree, run: Sequence[RawEvent]) -> None:
        """Let `tree` do its bookkeeping on a run of its events; queue what it reports."""
        reported = tree.handle(run)
        if reported:
            self._pending.append(self._tree_events(reported))

    def _check_limits(self) -> None:
        """Warn (once per tree) when a tree ran out of watches while following new dirs."""
        for tree in self._trees:
            if tree.limit_error is not None and tree not in self._warned:
                self._warned.append(tree)
                _LOGGER.warning(
                    "%s (directories left unwatched under %s: %d)", tree.limit_error,
                    tree.root, tree.unwatched,
                )

    def _exhausted(self) -> bool:
        """True when this instance watched trees and every one of them is gone."""
        return self._had_trees and not self._trees and not self._path_of

    def event_gen(
        self,
        timeout_s: float | None = None,
        yield_nones: bool = True,
        filter_predicate: Callable[[str, Event], bool] | None = None,
        terminal_events: Container[str] = _DEFAULT_TERMINAL_EVENTS,
    ) -> Iterator[Event | None]:
        """Yield events as they come (and None after each wait when yield_nones).

        Ends when no event came for timeout_s seconds, or when filter_predicate returns
        False for an event (then last_success_return holds it); raises TerminalEventException
        on one of terminal_events. Watching only trees, it also ends once all are gone.
        """
        self._last_success_return = None
        terminal_bits = 0
        for bit, name in MASK_LOOKUP.items():
            if name in terminal_events:
                terminal_bits |= bit
        pending = self._pending
        popleft = pending.popleft
        wait = self._fd.wait_readable
        monotonic = time.monotonic
        last_hit = monotonic()
        while True:
            if not pending:
                if self._exhausted():
                    return
                block = self._get_block_duration()
                if timeout_s is not None:
                    left = max(0.0, last_hit + timeout_s - monotonic())
                    block = left if block is None else min(block, left)
                if wait(block):
                    self._read()
            if pending:
                handed = False
                while pending:
                    if filter_predicate is None:
                        for event in pending[0]:
                            handed = True
                            if event[0].mask & terminal_bits:
                                _raise_terminal(event, terminal_events)
                            yield event
                    else:
                        for event in pending[0]:
                            handed = True
                            for type_name in event[1]:
                                if filter_predicate(type_name, event) is False:
                                    self._last_success_return = (type_name, event)
                                    return
                                if type_name in terminal_events:
                                    raise TerminalEventException(type_name, event)
                            yield event
                    popleft()
                if handed:
                    last_hit = monotonic()
            if timeout_s is not None and monotonic() - last_hit > timeout_s:
                return
            if yield_nones:
                yield None

    @property
    def last_success_return(self) -> tuple[str, Event] | None:
        """(type_name, event) for which filter_predicate ended the last event_gen, else None."""
        return self._last_success_return


class _BaseTree:
    """Recursive watching of one or more directory trees through one Inotify."""

    def __init__(
        self,
        mask: int = IN_ALL_EVENTS,
        block_duration_s: BlockDuration = _DEFAULT_EPOLL_BLOCK_DURATION_S,
        *,
        exclude: Exclude = None,
    ) -> None:
        self._mask = mask | _TREE_MASK_BITS
        self._prune = _pruner(exclude)
        self._i = Inotify(block_duration_s=block_duration_s)
        self._roots: list[Tree] = []

    def _load_tree(self, path: PathIn) -> None:
        try:
            self._roots.append(self._i._watch_tree(path, self._mask, self._prune))
        except BaseException:
            self._i.close()
            raise

    def event_gen(
        self,
        ignore_missing_new_folders: bool = False,
        *,
        timeout_s: float | None = None,
        yield_nones: bool = True,
        filter_predicate: Callable[[str, Event], bool] | None = None,
        terminal_events: Container[str] = _DEFAULT_TERMINAL_EVENTS,
    ) -> Iterator[Event | None]:
        """Inotify.event_gen over every watched directory.

        New directories are watched as they appear, and one that is gone by then is simply
        skipped, so ignore_missing_new_folders is accepted and has nothing left to do.
        """
        del ignore_missing_new_folders
        return self._i.event_gen(timeout_s, yield_nones, filter_predicate, terminal_events)

    @property
    def inotify(self) -> Inotify:
        """The Inotify underneath (its fd, plain watches and last_success_return)."""
        return self._i

    @property
    def lost(self) -> list[str]:
        """The roots that went away (deleted, moved or unmounted); their trees are closed."""
        return [tree.root for tree in self._roots if tree.lost is not None]

    def fileno(self) -> int:
        """The inotify fd (for select, epoll or asyncio)."""
        return self._i.fileno()

    def close(self) -> None:
        """Close the inotify fd and every watch of the trees."""
        self._i.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InotifyTree(_BaseTree):
    """Recursively watch a directory; `exclude` (globs or a predicate on a directory's base
    name) keeps matching directories out, with everything below them."""

    def __init__(
        self,
        path: PathIn,
        mask: int = IN_ALL_EVENTS,
        block_duration_s: BlockDuration = _DEFAULT_EPOLL_BLOCK_DURATION_S,
        *,
        exclude: Exclude = None,
    ) -> None:
        super().__init__(mask=mask, block_duration_s=block_duration_s, exclude=exclude)
        self._load_tree(path)


class InotifyTrees(_BaseTree):
    """Recursively watch several directories through one inotify instance."""

    def __init__(
        self,
        paths: Iterable[PathIn],
        mask: int = IN_ALL_EVENTS,
        block_duration_s: BlockDuration = _DEFAULT_EPOLL_BLOCK_DURATION_S,
        *,
        exclude: Exclude = None,
    ) -> None:
        super().__init__(mask=mask, block_duration_s=block_duration_s, exclude=exclude)
        for path in paths:
            self._load_tree(path)


__all__ = [
    "Event",
    "EventTimeoutException",
    "Inotify",
    "InotifyTree",
    "InotifyTrees",
    "TerminalEventException",
]
