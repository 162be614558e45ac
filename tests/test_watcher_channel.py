"""The watcher's end of the channel on a real socketpair: order, the bounded buffer, the end."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from watchd import channel
from watchd.watcher_channel import ChannelEnd

LIMIT = 64 << 10  # a small outgoing buffer, so that filling it takes milliseconds


@pytest.fixture
def pair() -> Iterator[tuple[ChannelEnd, socket.socket]]:
    ours, theirs = socket.socketpair()
    # Small kernel buffers: the socket is full after a few frames.
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    theirs.setblocking(False)
    epoll = select.epoll()
    with ours, theirs, epoll:
        yield ChannelEnd(ours, epoll, limit=LIMIT), theirs


def drain(end: ChannelEnd, theirs: socket.socket, reader: channel.FrameReader,
          timeout: float = 10.0) -> list[tuple[Any, ...]]:
    """Read from the daemon's side until everything the end holds arrived, as the loop does."""
    out: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            out += reader.feed(theirs.recv(1 << 16))
            continue
        except BlockingIOError:
            pass
        if not end.out:
            return out
        assert time.monotonic() < deadline, "the end did not drain"
        for _, mask in end.epoll.poll(0.1):
            if mask & select.EPOLLOUT:
                end.flush()


def batch(n: int) -> list[channel.Read]:
    return [(1.5, [(0x100, 0, f"/w/f{i:05}", None) for i in range(n)])]


def test_messages_arrive_whole_and_in_order(pair: tuple[ChannelEnd, socket.socket]) -> None:
    end, theirs = pair
    end.send(channel.Hello(7))
    for i in range(50):  # more than the socket takes at once: the rest waits in the end
        end.send_events("w", batch(20 + i), [None])
    end.send(channel.Overflow("w"))
    got = drain(end, theirs, channel.FrameReader())
    assert got[0] == ("hello", 7)
    assert [len(m[2][0][1]) for m in got[1:-1]] == [20 + i for i in range(50)]
    assert got[-1] == ("overflow", "w", False)
    assert end.out_bytes == 0
    assert not end.out_registered  # nothing waits: no wake-ups for writability


def test_a_full_buffer_drops_with_one_overflow_per_episode(
        pair: tuple[ChannelEnd, socket.socket]) -> None:
    end, theirs = pair
    sent = 0
    while not end.dropping:  # the daemon does not read: fill the socket, then the buffer
        end.send_events("w", batch(10), [None])
        sent += 1
        assert sent < 10_000
    assert end.out_registered  # frames wait: the loop is woken when the socket takes more
    # Bounded: batches up to the limit, and the notice of the loss, which always goes.
    assert end.out_bytes <= LIMIT + len(channel.frame(channel.Overflow("w")))
    for _ in range(20):
        end.send_events("w", batch(10), [None])  # dropped, and not announced again
    end.send_events("v", batch(10), [None])  # another watch's loss is its own notice
    reader = channel.FrameReader()
    got = drain(end, theirs, reader)
    overflows = [m for m in got if m[0] == "overflow"]
    assert overflows == [("overflow", "w", False), ("overflow", "v", False)]
    # The notice follows the last batch that got through.
    assert got.index(("overflow", "w", False)) == len(got) - 2
    assert len(got) - 2 == sent - 1  # the batch that found the buffer full was not queued

    end.send_events("w", batch(3), [None])  # read again: a new episode, batches go through
    assert "w" not in end.dropping
    assert [m[0] for m in drain(end, theirs, reader)] == ["ev"]


def test_a_watch_with_an_index_is_rescanned_when_dropping_ends(
        pair: tuple[ChannelEnd, socket.socket]) -> None:
    end, theirs = pair
    end.resync_on = frozenset({"w"})
    rescans: list[str] = []
    end.rescan = lambda name: (rescans.append(name), end.send(channel.Scan(name, {}, 0.0)))[0]
    while not end.dropping:
        end.send_events("w", batch(10), [None])
    reader = channel.FrameReader()
    got = drain(end, theirs, reader)
    assert got[-1] == ("overflow", "w", True)  # a scan is promised
    assert rescans == []
    end.send_events("w", batch(3), [None])  # room again: the scan goes first, then the batch
    assert rescans == ["w"]
    assert [m[0] for m in drain(end, theirs, reader)] == ["scan", "ev"]


def test_a_daemon_that_is_gone_closes_the_end(pair: tuple[ChannelEnd, socket.socket]) -> None:
    end, theirs = pair
    theirs.close()
    end.send(channel.Hello(1))  # no exception: the loop sees `open` and stops
    assert not end.open


def test_receive_decodes_what_the_daemon_sends_in_any_chunks(
        pair: tuple[ChannelEnd, socket.socket]) -> None:
    end, theirs = pair
    spec = channel.Spec("w", "/w", True, 0x100, (), ("*.tmp",), "/w")
    data = (channel.frame(channel.Configure(3, (spec,), {"w": 10}))
            + channel._frame_raw(("no such tag",)) + channel.frame(channel.Stop()))
    assert end.receive() == []  # nothing there yet: not the end
    theirs.sendall(data[:5])
    assert end.receive() == []  # half a frame waits for the rest
    theirs.sendall(data[5:])
    assert end.receive() == [channel.Configure(3, (spec,), {"w": 10}), None, channel.Stop()]
    assert end.open
    theirs.shutdown(socket.SHUT_WR)
    assert end.receive() == []
    assert not end.open
