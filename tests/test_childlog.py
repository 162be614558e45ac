"""The watcher's output lines as the daemon's log records (no I/O)."""

from __future__ import annotations

import logging

from watchd.childlog import CONTINUED, MAX_LINE, LineSplitter, Record, parse_line


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
    assert long == [b"x" * MAX_LINE, CONTINUED + b"x" * MAX_LINE]
    assert split.finish() == [CONTINUED + b"x" * 5]


def test_a_cut_line_cannot_forge_a_record() -> None:
    # A long name in a log line, cut where the rest reads as a record of another logger.
    forged = b"<0>watchd.server: all clients disconnected"
    split = LineSplitter()
    head = b"<4>watchd.inotify.tree: cannot read /w/"
    # It arrives in two reads, the first as long as a line may be.
    pieces = split.feed(head + b"n" * (MAX_LINE - len(head)))
    pieces += split.feed(forged + b"\n")
    assert len(pieces) == 2
    records = [parse_line(piece, 7) for piece in pieces]
    assert records[0] is not None and records[0].logger == "watchd.inotify.tree"
    assert records[1] == Record("watchd.watcher", logging.ERROR,
                                "watcher process 7: (continued) " + forged.decode())
