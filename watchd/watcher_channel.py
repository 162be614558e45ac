"""The watcher's end of the channel: a non-blocking socket, a bounded outgoing buffer, a reader.

The watcher reads the kernel queues as fast as it can, however fast the daemon takes batches:
what the socket does not take now waits here, whole frames in a deque, up to a limit past which
a watch's batches are dropped and the loss announced (an Overflow), once per episode.
"""

from __future__ import annotations

import errno
import itertools
import select
import socket
from collections import deque
from collections.abc import Callable

from watchd import channel

# Bytes of batches held for a daemon that does not read (~2M events); past it, overflow.
OUTBUF_LIMIT = 128 << 20
SEND_FRAMES = 64  # buffers per sendmsg (far below IOV_MAX)


class ChannelEnd:
    """The socket to the daemon, registered in the watcher's epoll; EPOLLOUT only while needed."""

    def __init__(self, sock: socket.socket, epoll: select.epoll,
                 limit: int = OUTBUF_LIMIT) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        sock.setblocking(False)
        self.epoll = epoll
        epoll.register(self.fd, select.EPOLLIN)
        self.limit = limit
        self.out: deque[bytes] = deque()  # frames not yet written, whole
        self.out_offset = 0  # bytes of out[0] already written
        self.out_bytes = 0
        self.out_registered = False
        self.dropping: set[str] = set()  # watches whose batches our full buffer is discarding
        self.resync_on: frozenset[str] = frozenset()  # watches the daemon keeps an index of
        # Sends a Scan of a watch (the watcher's): for such a watch, when dropping stops.
        self.rescan: Callable[[str], None] | None = None
        self.reader = channel.FrameReader()
        self.open = True  # False once the daemon is gone: nothing left to serve

    def send(self, message: channel.FromWatcher) -> None:
        """Queue a message for the daemon and push what the socket takes now."""
        self.push(channel.frame(message))

    def send_events(self, name: str, reads: list[channel.Read],
                    records: list[channel.Records]) -> None:
        """Queue one watch's reads (and their records, aligned) for the daemon, unless our
        buffer is full: then overflow."""
        data = channel.events_frame(name, reads, records)
        if self.out_bytes + len(data) > self.limit:
            # The daemon has stopped reading. Losing events is allowed only when announced,
            # once per episode and per watch, at the point where the loss begins.
            if name not in self.dropping:
                self.dropping.add(name)
                self.send(channel.Overflow(name, name in self.resync_on))
            return
        if name in self.dropping:
            self.dropping.discard(name)
            if self.rescan is not None and name in self.resync_on:
                self.rescan(name)  # what was dropped is in it; these events follow it
        self.push(data)

    def push(self, data: bytes) -> None:
        self.out.append(data)
        self.out_bytes += len(data)
        self.flush()

    def flush(self) -> None:
        """Write queued frames until the socket is full.

        Frames stay whole objects in a deque, written with one sendmsg of many buffers: a
        backlog of megabytes (the daemon paused reading) drains in linear time, where slicing
        one big buffer from the front would copy the rest at every write.
        """
        out = self.out
        while out:
            if self.out_offset:
                out[0] = out[0][self.out_offset :]
                self.out_offset = 0
            try:
                sent = self.sock.sendmsg(list(itertools.islice(out, SEND_FRAMES)))
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in (errno.EPIPE, errno.ECONNRESET):
                    self.open = False
                    return
                raise
            self.out_bytes -= sent
            while sent and sent >= len(out[0]):
                sent -= len(out.popleft())
            self.out_offset = sent
        want_out = bool(out)
        if want_out != self.out_registered:
            events = select.EPOLLIN | (select.EPOLLOUT if want_out else 0)
            self.epoll.modify(self.fd, events)
            self.out_registered = want_out

    def receive(self) -> list[channel.ToWatcher | None]:
        """The messages the daemon sent that are here now (None: a tag we do not know).

        At the end of the stream, `open` turns False.
        """
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return []
        except ConnectionResetError:
            data = b""  # the daemon was killed: as final as its orderly close, and no error of ours
        if not data:
            self.open = False
            return []
        return [channel.to_watcher(raw) for raw in self.reader.feed(data)]
