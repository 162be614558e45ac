"""Event kinds and their inotify bits (watchd.events): the names on the wire, the kernel's
values, masks of kind sets, and real kernel events mapped to exactly one kind each."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.harness import read_until
from watchd.events import ALL_KINDS, DEFAULT_KINDS, KIND_BITS, KIND_LIST, Kind, kinds_mask
from watchd.inotify import InotifyFd
from watchd.inotify.flags import IN_ALL_EVENTS, IN_ISDIR, Mask

WIRE_NAMES = ["access", "modify", "attrib", "close_write", "close_nowrite", "open",
              "moved_from", "moved_to", "create", "delete", "delete_self", "move_self"]


def kinds_of(mask: int) -> set[Kind]:
    """The kinds whose bits a mask holds."""
    return {kind for kind, bit in KIND_BITS.items() if mask & bit}


def test_the_wire_names_are_the_kinds() -> None:
    assert [str(kind) for kind in Kind] == WIRE_NAMES
    assert Kind("close_write") is Kind.CLOSE_WRITE
    with pytest.raises(ValueError, match="'crete'"):
        Kind("crete")


@pytest.mark.parametrize("kind", list(Kind))
def test_each_kind_is_the_kernel_bit_of_its_name(kind: Kind) -> None:
    # The kernel ABI: IN_<NAME> of <sys/inotify.h>, as the inotify layer declares it.
    assert KIND_BITS[kind] == Mask["IN_" + kind.upper()]


def test_one_bit_per_kind_and_every_event_bit_a_kind() -> None:
    bits = list(KIND_BITS.values())
    assert all(bit and bit & (bit - 1) == 0 for bit in bits)  # a single bit each
    assert len(set(bits)) == len(bits) == len(ALL_KINDS) == 12
    assert kinds_mask(set(ALL_KINDS)) == IN_ALL_EVENTS
    assert not kinds_mask(set(ALL_KINDS)) & IN_ISDIR  # a flag on an event, not a kind


def test_the_default_kinds_leave_out_the_read_only_ones() -> None:
    assert {Kind.ACCESS, Kind.OPEN, Kind.CLOSE_NOWRITE} == ALL_KINDS - DEFAULT_KINDS
    assert kinds_mask(set(DEFAULT_KINDS)) == IN_ALL_EVENTS & ~(
        Mask.IN_ACCESS | Mask.IN_OPEN | Mask.IN_CLOSE_NOWRITE)


def test_no_kinds_is_no_bits() -> None:
    assert kinds_mask(set()) == 0
    assert kinds_mask(frozenset()) == 0


@given(st.sets(st.sampled_from(list(Kind))))
def test_a_mask_holds_exactly_the_kinds_it_was_made_of(kinds: set[Kind]) -> None:
    mask = kinds_mask(kinds)
    assert kinds_of(mask) == kinds
    assert kinds_mask(frozenset(kinds)) == mask


def test_every_kernel_event_carries_exactly_one_kind(tmp_path: Path) -> None:
    # Real events on a real directory: what the daemon maps to a kind on the wire.
    with InotifyFd() as ino:
        ino.add_watch(str(tmp_path), IN_ALL_EVENTS)
        (tmp_path / "f").write_text("x")  # create, open, modify, close_write
        (tmp_path / "f").read_text()  # open, access, close_nowrite
        os.chmod(tmp_path / "f", 0o600)  # attrib
        (tmp_path / "f").rename(tmp_path / "g")  # moved_from, moved_to
        (tmp_path / "d").mkdir()  # create, with IN_ISDIR
        (tmp_path / "g").unlink()  # delete
        seen = [e for e in read_until(ino, lambda got: len(got) >= 12) if e.name]
    assert all(len(kinds_of(e.mask)) == 1 for e in seen), seen
    got = [(next(iter(kinds_of(e.mask))), e.name, bool(e.mask & IN_ISDIR)) for e in seen]
    assert got == [
        (Kind.CREATE, b"f", False), (Kind.OPEN, b"f", False), (Kind.MODIFY, b"f", False),
        (Kind.CLOSE_WRITE, b"f", False),
        (Kind.OPEN, b"f", False), (Kind.ACCESS, b"f", False), (Kind.CLOSE_NOWRITE, b"f", False),
        (Kind.ATTRIB, b"f", False),
        (Kind.MOVED_FROM, b"f", False), (Kind.MOVED_TO, b"g", False),
        (Kind.CREATE, b"d", True),
        (Kind.DELETE, b"g", False),
    ]


# The kernel ABI (<sys/inotify.h>), written out here independently of watchd.inotify.flags.
ABI = {
    "access": 0x001,
    "modify": 0x002,
    "attrib": 0x004,
    "close_write": 0x008,
    "close_nowrite": 0x010,
    "open": 0x020,
    "moved_from": 0x040,
    "moved_to": 0x080,
    "create": 0x100,
    "delete": 0x200,
    "delete_self": 0x400,
    "move_self": 0x800,
}


def test_each_kind_has_the_bit_the_kernel_abi_gives_it() -> None:
    assert {kind.value: bit for kind, bit in KIND_BITS.items()} == ABI
    assert all(type(bit) is int for bit in KIND_BITS.values())  # plain ints for the hot path


def test_kinds_are_listed_in_bit_order_for_messages() -> None:
    assert KIND_LIST.split(", ") == list(ABI)
    assert [kind.value for kind in Kind] == list(ABI)
