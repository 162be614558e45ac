"""The watcher's output lines as the daemon's log records (no I/O)."""

from __future__ import annotations

import logging

from watchd.childlog import MAX_LINE, LineSplitter, Record, parse_line


def test_prefixed_lines_keep_their_logger_and_priority() -> None:
    assert parse_line(b"<3>watchd.watcher: cannot watch /x", 7) == Record(
        "watchd.watcher", logging.ERROR, "cannot watch /x")
    assert parse_line(b"<7>watchd.inotify.tree: scanned", 7) == Record(
        "watchd.inotify.tree", logging.DEBUG, "scanned")
    assert parse_line(b"<4>watchd: w", 7) == Record("watchd", logging.WARNING, "w")


def test_anything_else_is_an_error_of_the_watcher() -> None:
    assert parse_line(b"Traceback (most recent call last):", 42) == Record(
        "watchd.watcher", logging.ERROR, "watcher process 42: Traceback (most recent call last):")
    # A prefix naming a logger that is not ours is not trusted to pick the logger.
    assert parse_line(b"<6>root: x", 42) == Record(
        "watchd.watcher", logging.ERROR, "watcher process 42: <6>root: x")
    assert parse_line(b"\xff\xfe bad", 1) == Record(
        "watchd.watcher", logging.ERROR, "watcher process 1: \\xff\\xfe bad")
    assert parse_line(b"   ", 1) is None


def test_lines_split_across_reads_and_capped() -> None:
    split = LineSplitter()
    assert split.feed(b"<6>watchd: a\n<6>wat") == [b"<6>watchd: a"]
    assert split.feed(b"chd: b\npartial") == [b"<6>watchd: b"]
    assert split.finish() == [b"partial"]
    assert split.finish() == []
    long = split.feed(b"x" * (MAX_LINE * 2 + 5))
    assert [len(x) for x in long] == [MAX_LINE, MAX_LINE]
    assert split.finish() == [b"x" * 5]
