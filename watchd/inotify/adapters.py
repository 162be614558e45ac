"""The `inotify` package's event API (Inotify, InotifyTree, InotifyTrees) on watchd's binding.

Events are `(header, type_names, watch_path, filename)` tuples, as in that package; the
differences from it (overflow never silent, trees that follow renames, ...) are listed in
docs/inotify.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Container, Iterable, Iterator
from typing import Self, TypeAlias

from watchd.errors import WatchdError
from watchd.globs import glob_predicate
from watchd.inotify import calls, errors
from watchd.inotify._binding import InotifyFd
from watchd.inotify.constants import (
    IN_ALL_EVENTS,
    IN_CREATE,
    IN_DELETE,
    MASK_LOOKUP,
)
from watchd.inotify.stream import (
    _INOTIFY_EVENT,  # noqa: F401  # that package's users reach for it here by name
    Event,
    EventStream,
)
from watchd.inotify.tree import Tree

_DEFAULT_EPOLL_BLOCK_DURATION_S = 1
_DEFAULT_TERMINAL_EVENTS = ("IN_Q_OVERFLOW", "IN_UNMOUNT")

# Bits a tree adds to the caller's mask, as that package does: its trees always report
# creations and deletions, whatever the mask asked for.
_TREE_MASK_BITS = IN_CREATE | IN_DELETE

PathIn: TypeAlias = str | bytes | os.PathLike[str] | os.PathLike[bytes]
BlockDuration: TypeAlias = float | Callable[[], float | None] | None
Exclude: TypeAlias = Iterable[str] | Callable[[str], bool] | None


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
        self._last_success_return: tuple[str, Event] | None = None
        try:
            self._fd = InotifyFd()
        except errors.InotifyError as e:
            raise calls.InotifyError.from_error(e) from e
        self._stream = EventStream(self._fd, self._path_of, self._wd_of)
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
        self._stream.clear()
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
        self._stream.add_tree(tree, mask)
        return tree

    # -- events ----------------------------------------------------------------------------

    def _names_of(self, mask: int) -> tuple[str, ...]:
        """The type names of `mask` in the order of constants.MASK_LOOKUP, cached per mask."""
        return self._stream.maker.names_of(mask)

    def _get_event_names(self, event_type: int) -> list[str]:
        """The names of the bits of `event_type`, in the order of constants.MASK_LOOKUP."""
        return list(self._names_of(event_type))  # a list of its own: callers sort theirs

    def _get_block_duration(self) -> float | None:
        block = self._block_duration
        return block() if callable(block) else block

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
        stream = self._stream
        pending = stream.pending
        popleft = pending.popleft
        wait = self._fd.wait_readable
        monotonic = time.monotonic
        last_hit = monotonic()
        while True:
            if not pending:
                if stream.exhausted():
                    return
                block = self._get_block_duration()
                if timeout_s is not None:
                    left = max(0.0, last_hit + timeout_s - monotonic())
                    block = left if block is None else min(block, left)
                if wait(block):
                    stream.read()
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
