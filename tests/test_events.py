"""Event kinds: names on the wire, the kernel bits behind them, and the masks they make."""

from __future__ import annotations

from watchd.events import ALL_KINDS, DEFAULT_KINDS, KIND_BITS, KIND_LIST, Kind, kinds_mask

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


def test_each_kind_has_its_kernel_bit() -> None:
    assert {kind.value: bit for kind, bit in KIND_BITS.items()} == ABI
    assert all(type(bit) is int for bit in KIND_BITS.values())  # plain ints for the hot path


def test_kinds_are_listed_in_bit_order_for_messages() -> None:
    assert KIND_LIST.split(", ") == list(ABI)
    assert [kind.value for kind in Kind] == list(ABI)


def test_kinds_mask() -> None:
    assert kinds_mask(set()) == 0
    assert kinds_mask({Kind.CREATE, Kind.MOVED_TO}) == 0x180
    assert kinds_mask(ALL_KINDS) == 0xFFF


def test_default_kinds_leave_out_the_read_only_ones() -> None:
    left_out = ALL_KINDS - DEFAULT_KINDS
    assert left_out == {Kind.ACCESS, Kind.OPEN, Kind.CLOSE_NOWRITE}
