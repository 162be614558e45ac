"""The replay journal on real files: what is written is read back, bounded, and a damaged file
is told from a write cut short."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from watchd import journal
from watchd.events import KIND_BITS, Kind
from watchd.protocol.event_lines import EventEncoder
from watchd.replay import Held, Marker

IN_CREATE = 0x100


def events(first: int, count: int, watch: str = "w") -> list[Held]:
    enc = EventEncoder()
    out = []
    for seq in range(first, first + count):
        path = f"/t/f{seq}"
        tail = enc.tail(seq, 1.5, watch, "create", path, IN_CREATE, 0, None)
        out.append((seq, watch, KIND_BITS[Kind.CREATE], path, tail))
    return out


def opened(directory: Path, *, max_bytes: int = 1 << 20, retain: int = 1000,
           last_seq: int = 0) -> tuple[journal.Journal, list[tuple[str, OSError]]]:
    errors: list[tuple[str, OSError]] = []
    rec = journal.Journal(str(directory), max_bytes=max_bytes, retain=lambda: retain,
                          on_error=lambda what, e: errors.append((what, e)),
                          on_rotate=lambda: None)
    rec.open(last_seq)
    return rec, errors


def test_what_is_written_is_read_back(tmp_path: Path) -> None:
    rec, errors = opened(tmp_path)
    first, second = events(1, 3), events(4, 1)
    rec.events(first)
    marker = Marker(3, "w", "kernel_queue", frozenset({"w"}))
    rec.marker(marker)
    rec.events(second)
    rec.close()
    loaded = journal.load(str(tmp_path))
    assert loaded.entries == first + second
    assert loaded.markers == [marker]
    assert loaded.last_seq == 4
    assert not errors


def test_an_empty_journal_knows_its_last_seq_from_the_segment_name(tmp_path: Path) -> None:
    rec, _ = opened(tmp_path, last_seq=41)
    rec.close()
    assert journal.load(str(tmp_path)).last_seq == 41
    rec, _ = opened(tmp_path, last_seq=41)  # resumed: appends to that segment
    rec.events(events(42, 2))
    rec.close()
    loaded = journal.load(str(tmp_path))
    assert [e[0] for e in loaded.entries] == [42, 43]


def test_never_grows_past_its_size_and_keeps_the_newest(tmp_path: Path) -> None:
    max_bytes = 65536
    rec, errors = opened(tmp_path, max_bytes=max_bytes, retain=1 << 20)
    batch = 20
    for first in range(1, 5001, batch):
        rec.events(events(first, batch))
        on_disk = sum(f.stat().st_size for f in tmp_path.iterdir())
        assert on_disk <= max_bytes, on_disk
        assert on_disk == rec.size
    rec.close()
    loaded = journal.load(str(tmp_path))
    seqs = [e[0] for e in loaded.entries]
    assert seqs == list(range(seqs[0], 5001))
    assert len(seqs) > 100  # three quarters of the size at least, of some 80-byte events
    assert not errors


def test_keeps_segments_only_while_the_history_needs_them(tmp_path: Path) -> None:
    rec, _ = opened(tmp_path, retain=100)
    for first in range(1, 1001, 10):
        rec.events(events(first, 10))
    rec.close()
    seqs = [e[0] for e in journal.load(str(tmp_path)).entries]
    assert seqs[-1] == 1000
    assert 100 <= len(seqs) <= 100 + 100 // 4 + 10


def test_a_record_cut_short_at_the_end_is_dropped(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    rec, _ = opened(tmp_path)
    rec.events(events(1, 2))
    rec.events(events(3, 2))
    rec.close()
    (segment,) = tmp_path.iterdir()
    size = segment.stat().st_size
    os.truncate(segment, size - 5)
    with caplog.at_level(logging.WARNING, "watchd"):
        loaded = journal.load(str(tmp_path))
    assert [e[0] for e in loaded.entries] == [1, 2]
    assert str(segment) in caplog.text
    assert segment.stat().st_size < size - 5  # cut back to the last whole record


@pytest.mark.parametrize("where", ["first_record", "header"])
def test_damage_before_the_end_is_an_error_naming_the_file(tmp_path: Path, where: str) -> None:
    rec, _ = opened(tmp_path)
    rec.events(events(1, 2))
    rec.events(events(3, 2))
    rec.close()
    (segment,) = tmp_path.iterdir()
    data = bytearray(segment.read_bytes())
    at = len(journal.MAGIC) + 20 if where == "first_record" else 2
    data[at] ^= 0xFF
    segment.write_bytes(bytes(data))
    with pytest.raises(journal.StateError) as err:
        journal.load(str(tmp_path))
    assert err.value.path == str(segment)


def test_a_gap_between_segments_is_an_error(tmp_path: Path) -> None:
    rec, _ = opened(tmp_path)
    rec.events(events(1, 2))
    rec.close()
    (tmp_path / journal.segment_name(10)).write_bytes(journal.MAGIC)
    with pytest.raises(journal.StateError, match="expected 3"):
        journal.load(str(tmp_path))


def test_a_failed_write_is_reported_once_and_recording_stops(tmp_path: Path) -> None:
    rec, errors = opened(tmp_path)
    rec.events(events(1, 1))
    os.close(rec.fd)
    rec.fd = os.open("/dev/full", os.O_WRONLY)  # a real device that is always full
    rec.events(events(2, 1))
    rec.events(events(3, 1))
    assert rec.failed
    assert len(errors) == 1 and errors[0][1].errno == 28
    assert [e[0] for e in journal.load(str(tmp_path)).entries] == [1]
