"""Kernel events turned into the `inotify` package's event tuples, lazily, in order.

What an `Inotify` reads goes through here: events of plain watches are made into
`(header, type_names, watch_path, filename)` as they are handed out; events of the recursive
trees go to their Tree first, which does its bookkeeping at once (a new directory is watched
when its event is read, not when the caller gets to it).
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from typing import NamedTuple, TypeAlias

from watchd.inotify._binding import InotifyFd, RawEvent
from watchd.inotify.constants import (
    IN_ALL_EVENTS,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    MASK_LOOKUP,
)
from watchd.inotify.tree import Tree, TreeEvent

# The compatibility API's logger: its users listen to watchd.inotify.adapters.
_LOGGER = logging.getLogger("watchd.inotify.adapters")

# Headers kept for reuse; past this many (cookies and watches vary) the cache starts over.
_HEADER_CACHE_SIZE = 4096

# Bits of the events that need a Tree's bookkeeping (the list Tree.handle itself uses when it
# follows no symlinks and reports no synthetic events, as the trees here do).
_NEEDS_TREE = IN_ISDIR | IN_MOVED_FROM | IN_MOVED_TO | IN_IGNORED | IN_UNMOUNT | IN_Q_OVERFLOW

# Events a Tree handles without reporting them (IN_UNMOUNT: but on its root).
_UNREPORTED = IN_IGNORED | IN_UNMOUNT


class _INOTIFY_EVENT(NamedTuple):  # the name that package's users and tests reach for
    """The kernel's event header; `len` is its padded name length (0 without a name)."""

    wd: int
    mask: int
    cookie: int
    len: int


Event: TypeAlias = tuple[_INOTIFY_EVENT, list[str], str, str]


class EventMaker:
    """Kernel events made into event tuples, with the caches that make that cheap."""

    def __init__(self, path_of: dict[int, str], wd_of: dict[str, int]) -> None:
        # The plain watches, shared with the Inotify that adds and removes them: an
        # IN_IGNORED made into an event here makes both forget the watch.
        self._path_of = path_of
        self._wd_of = wd_of
        self._names: dict[int, tuple[str, ...]] = {}
        self._headers: dict[tuple[int, int, int, int], _INOTIFY_EVENT] = {}
        self._encoding = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())

    def names_of(self, mask: int) -> tuple[str, ...]:
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

    # The generators below build one event per kernel event, lazily: each event is made as
    # it is handed out, so a caller that drops it right away keeps the garbage collector
    # idle (a whole read of events kept alive at once costs ~1 us per event in collections).
    # Locals are bound once, headers are reused, and names are decoded as os.fsdecode does,
    # without its per-call checks.

    def plain_events(self, raw: Sequence[RawEvent]) -> Iterator[Event]:
        """The events of plain watches (and overflows), as they are handed out."""
        path_of = self._path_of
        cache = self._names
        names_of = self.names_of
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

    def tree_events(self, tree_events: list[TreeEvent]) -> Iterator[Event]:
        """The events a tree reported, as they are handed out."""
        cache = self._names
        names_of = self.names_of
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

    def named_events(
        self, raw: Sequence[RawEvent], dirs: dict[int, str | None], report: int
    ) -> Iterator[Event]:
        """Named events of one tree without bookkeeping, in directories `dirs` maps."""
        cache = self._names
        names_of = self.names_of
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


class EventStream:
    """The events read from one inotify fd and not yet handed out, with the trees they feed."""

    def __init__(self, fd: InotifyFd, path_of: dict[int, str], wd_of: dict[str, int]) -> None:
        self._fd = fd
        self._path_of = path_of  # the plain watches (see EventMaker)
        self.maker = EventMaker(path_of, wd_of)
        self.trees: list[Tree] = []
        self.tree_report = 0  # the kinds the trees report (all trees here share one mask)
        self._had_trees = False
        self._warned: list[Tree] = []
        # What was read and not yet handed out, as one iterator per read (or per run of one
        # tree's events): a caller that leaves event_gen early (filter, terminal event, break)
        # finds the rest at its next call.
        self.pending: deque[Iterator[Event]] = deque()

    def add_tree(self, tree: Tree, mask: int) -> None:
        """Route the events of a started tree's watches to it from now on."""
        self.trees.append(tree)
        self.tree_report = mask & IN_ALL_EVENTS
        self._had_trees = True

    def clear(self) -> None:
        """Forget what is pending and every tree (the fd is closed)."""
        self.pending.clear()
        self.trees.clear()

    def read(self) -> None:
        """Read what is queued and queue the events it holds for event_gen."""
        raw = self._fd.read_events()
        if not raw:
            return
        if self.trees:
            self._route(raw)
        else:
            self.pending.append(self.maker.plain_events(raw))

    def _route(self, raw: Sequence[RawEvent]) -> None:
        """Hand each event to its plain watch or to the tree that owns its wd, in order.

        The trees do their bookkeeping now, while the events are fresh: a new directory is
        watched at once, not when the caller gets to its event.
        """
        if len(self.trees) == 1 and not self._path_of:
            overflowed = self._route_one_tree(self.trees[0], raw)
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
        report = self.tree_report
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
                self.pending.append(self.maker.named_events(raw[start:stop], dirs, report))
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
                self.pending.append(self.maker.plain_events([ev]))
                continue
            tree = None
            for candidate in self.trees:
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
            for tree in self.trees:
                if tree.lost is None:
                    tree.resync()
        self._check_limits()
        for tree in [t for t in self.trees if t.lost is not None]:
            # The root is gone: its tree has nothing left to watch.
            tree.close()
            self.trees.remove(tree)

    def _unreported(self, tree: Tree, ev: RawEvent) -> None:
        """Queue an event that the tree does its bookkeeping on but does not report.

        Trees drop IN_IGNORED, and IN_UNMOUNT but on their root; this API reports both, with
        the directory's path as it was before the tree forgets it.
        """
        path = tree.path_of(ev.wd)
        reported = tree.handle([ev])
        if reported:  # the root's own IN_UNMOUNT
            self.pending.append(self.maker.tree_events(reported))
        elif path is not None:
            self.pending.append(self.maker.tree_events(
                [TreeEvent(ev.mask, ev.cookie, path, None, ev.wd, ev.name, ev.length)]))

    def _flush(self, tree: Tree, run: Sequence[RawEvent]) -> None:
        """Let `tree` do its bookkeeping on a run of its events; queue what it reports."""
        reported = tree.handle(run)
        if reported:
            self.pending.append(self.maker.tree_events(reported))

    def _check_limits(self) -> None:
        """Warn (once per tree) when a tree ran out of watches while following new dirs."""
        for tree in self.trees:
            if tree.limit_error is not None and tree not in self._warned:
                self._warned.append(tree)
                _LOGGER.warning(
                    "%s (directories left unwatched under %s: %d)", tree.limit_error,
                    tree.root, tree.unwatched,
                )

    def exhausted(self) -> bool:
        """True when this instance watched trees and every one of them is gone."""
        return self._had_trees and not self.trees and not self._path_of
