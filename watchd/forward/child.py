"""The forwarder process: reads the daemon's events like any subscriber and publishes them.

It subscribes over the daemon's socket with `"batch": true` and resumes with `since` and
`instance` from its last acknowledged seq, so the daemon's history (its journal, with a state
directory) holds what it has not published yet. It never makes the daemon wait: events that
arrive while it cannot publish them (no connection to NATS) are counted and let go; while its
window in flight is full it reads nothing, and the daemon drops for it what its queue for it
cannot hold (it says so). Once it can publish again it subscribes anew from its position. When
the daemon no longer holds that position (`since_expired`), it publishes an `overflow` notice
with reason `forward_gap` for each watch it forwards and goes on from the oldest event held.

The daemon sends its setup as the first line of the control socket, and reads the status
lines this process writes back; the end of the control socket means stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, Final

from watchd.forward.frames import frame_messages
from watchd.forward.publisher import ACK_TIMEOUT_S, Publisher, first_of
from watchd.forward.setup import Setup, position_file
from watchd.forward.subjects import notice_subject, render
from watchd.protocol import OverflowReason
from watchd.protocol.event_lines import frame_head

log = logging.getLogger("watchd.forward")

READ_LIMIT: Final = 64 << 20  # the longest line: a frame of max_batch long paths
STATUS_EVERY_S: Final = 0.2  # status lines at most this often
SAVE_EVERY_S: Final = 1.0  # the position file at most this often
STOP_DRAIN_S: Final = 2.0  # for the acknowledgements of what is in flight, at a stop
FORWARD_NICE: Final = 10  # added to the daemon's nice value
FORWARDED_NOTICES: Final = frozenset({"overflow", "resynced", "watch_lost", "watch_restored"})


def read_position(setup: Setup) -> tuple[str, int] | None:
    """The last acknowledged (instance, seq): the state file's or the daemon's, the later."""
    best = setup.resume
    if setup.state_directory is None:
        return best
    path = position_file(setup.state_directory, setup.config.name)
    try:
        with open(path, "rb") as f:
            d = json.load(f)
        stored = (str(d["instance"]), int(d["seq"]))
    except FileNotFoundError:
        return best
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("forward %s: cannot read %s (%s); resuming from what the daemon knows",
                    setup.config.name, path, e)
        return best
    if best is None or best[0] != stored[0] or best[1] < stored[1]:
        return stored
    return best


def write_position(setup: Setup, instance: str, seq: int) -> None:
    from watchd.statefiles import write_atomic

    assert setup.state_directory is not None
    path = position_file(setup.state_directory, setup.config.name)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_atomic(path, json.dumps({"instance": instance, "seq": seq}).encode())


class Forwarder:
    """One forwarder: the daemon's subscription on one side, the publisher on the other."""

    def __init__(self, setup: Setup, control: socket.socket) -> None:
        self.setup = setup
        self.control = control
        self.publisher = Publisher(setup.config, self.changed)
        self.instance = ""
        self.position = read_position(setup)  # (instance, seq) of the last acknowledgement
        self.stored = self.position  # as it was at our start (status, until the next ack)
        self.writer: asyncio.StreamWriter | None = None
        self.sid: str | None = None  # the subscription whose events we take
        self.head = b"-"  # what a frame of that subscription begins with (nothing before it)
        self.request = 0  # the id of the last subscribe sent
        self.behind = True  # events were let go: subscribe anew once we can publish
        self.skipped = 0  # events let go since the last subscribe (part of the lag)
        self.last_seq = 0  # the last seq seen on the subscription
        self.subjects: dict[str, bytes] = {}
        self.notice_ids = NoticeIds()
        self.kick = asyncio.Event()
        self.reported = b""
        self.saved: int | None = None

    # -- status --------------------------------------------------------------------------------

    def changed(self) -> None:
        if not self.publisher.connected:
            self.behind = True  # what was in flight is published again from the position
        self.kick.set()

    def status(self) -> dict[str, Any]:
        p = self.publisher
        acked = p.acked
        if acked is None and self.stored is not None and self.stored[0] == self.instance:
            acked = self.stored[1]
        return {"connected": p.connected, "server": p.server, "last_acked_seq": acked,
                "lag": p.events_in_flight + p.forgotten + self.skipped,
                "last_error": p.last_error,
                "errors": p.errors, "instance": self.instance or None}

    async def report_forever(self) -> None:
        """Status lines to the daemon, and the position to the state directory."""
        loop = asyncio.get_running_loop()
        last_save = 0.0
        while True:
            await self.kick.wait()
            self.kick.clear()
            await self.steer()
            line = json.dumps(self.status()).encode() + b"\n"
            if line != self.reported:
                self.reported = line
                with contextlib.suppress(BlockingIOError):
                    await loop.sock_sendall(self.control, line)
            if time.monotonic() - last_save >= SAVE_EVERY_S and self.save():
                last_save = time.monotonic()
            await asyncio.sleep(STATUS_EVERY_S)
            self.kick.set()  # once more, for what changed meanwhile (a cheap no-op if nothing)

    def save(self) -> bool:
        """Record the position in the state directory, if it moved; True if written."""
        acked = self.publisher.acked
        if self.setup.state_directory is None or acked is None or acked == self.saved:
            return False
        try:
            write_position(self.setup, self.instance, acked)
        except OSError as e:
            log.error("forward %s: cannot record the position in %s: %s",
                      self.setup.config.name, self.setup.state_directory, e)
            return False
        self.saved = acked
        return True

    # -- the daemon's side ---------------------------------------------------------------------

    async def read_daemon(self) -> None:
        """Read the daemon's lines until it closes the connection."""
        reader, self.writer = await asyncio.open_unix_connection(self.setup.socket,
                                                                 limit=READ_LIMIT)
        hello = json.loads(await reader.readline())
        if hello.get("type") != "hello":
            raise ConnectionError(f"the daemon refused the connection: {hello.get('message')}")
        self.instance = hello["instance"]
        self.kick.set()
        while True:
            await self.wait_room()
            line = await reader.readline()
            if not line:
                return
            if line.startswith(self.head):
                self.on_frame(line)
                continue
            msg = json.loads(line)
            kind = msg.get("type")
            if kind in FORWARDED_NOTICES:
                if msg.get("subscription") == self.sid:
                    self.on_notice(msg)
            elif kind == "dropped":
                if msg.get("subscription") == self.sid:
                    self.let_go(int(msg.get("count", 0)))  # the history still holds them
            elif kind == "subscribed":
                if msg.get("id") == self.request:
                    self.sid = msg["subscription"]
                    self.head = frame_head(msg["subscription"])
                    if self.position is None:  # from now on: this is where we stand
                        self.position = (self.instance, int(msg["seq"]))
            elif kind == "error" and msg.get("id") == self.request:
                await self.refused(msg)

    async def wait_room(self) -> None:
        """While the window in flight is full, read nothing more of the daemon.

        A replay from the history (the daemon writes it as our socket takes it) waits for us
        then, and live events wait in the daemon's queue for us until it is full: then the
        daemon drops them for us (it never waits for a forwarder), tells us so, and we
        subscribe again from our position once there is room. Events are let go only while
        there is no connection to publish them on.
        """
        publisher = self.publisher
        while publisher.connected and not publisher.room.is_set():
            await first_of(asyncio.ensure_future(publisher.room.wait()),
                           asyncio.ensure_future(publisher.lost.wait()))
        if self.behind:
            await self.steer()

    async def steer(self) -> None:
        """Subscribe anew from the position when events were let go and we can publish.

        Before the first connection to NATS, subscribe all the same, to count the lag: the
        events are let go, and subscribed for again from the position once connected.
        """
        if not (self.behind and self.writer is not None and self.instance):
            return
        ready = self.publisher.connected and self.publisher.room.is_set()
        if not ready and self.request:
            return  # subscribed: counting what we let go until we can publish
        since = self.publisher.position() if ready else None
        if since is None and self.position is not None:
            if self.position[0] != self.instance:
                # The daemon started a new instance: its seqs say nothing of ours.
                if ready:
                    await self.gap(None)
                return
            since = self.position[1]
        self.subscribe(since)
        self.behind = not ready

    def subscribe(self, since: int | None) -> None:
        """Subscribe from `since` (None: from now on)."""
        assert self.writer is not None
        cfg = self.setup.config
        if self.sid is not None:
            self.writer.write(json.dumps({"op": "unsubscribe", "subscription": self.sid})
                              .encode() + b"\n")
        self.request += 1
        self.sid = None
        self.head = b"-"
        self.behind = False
        self.skipped = 0
        self.notice_ids = NoticeIds()  # the subscription hands the notices again from since
        self.publisher.forgotten = 0  # handed again from the position, or part of a gap
        request: dict[str, Any] = {"op": "subscribe", "id": self.request, "batch": True}
        if cfg.watches is not None:
            request["watch"] = list(cfg.watches)
        if cfg.events is not None:
            request["events"] = sorted(cfg.events)
        if since is not None:
            request["since"] = since
            request["instance"] = self.instance
        self.writer.write(json.dumps(request).encode() + b"\n")

    async def refused(self, msg: dict[str, Any]) -> None:
        """The daemon does not hold the position: a gap, then on from the oldest it holds."""
        if msg.get("code") != "since_expired":
            raise ConnectionError(f"the daemon refused the subscription: {msg.get('message')}")
        oldest = msg.get("oldest")
        await self.gap(oldest - 1 if isinstance(oldest, int) and oldest > 0 else None)

    async def gap(self, since: int | None) -> None:
        """Publish a forward_gap notice for each watch forwarded, then subscribe from since."""
        log.warning("forward %s: the daemon no longer holds the events after seq %s; "
                    "publishing a forward_gap notice and going on", self.setup.config.name,
                    self.position[1] if self.position else None)
        for watch in self.setup.watches:
            notice = {"type": "overflow", "seq": self.last_seq, "reason":
                      OverflowReason.FORWARD_GAP.value, "watch": watch, "resync": False}
            self.publish_notice(notice, watch)
        self.position = None if since is None else (self.instance, since)
        self.subscribe(since)

    def let_go(self, count: int) -> None:
        self.behind = True
        self.skipped += count
        self.kick.set()

    # -- publishing ----------------------------------------------------------------------------

    def subject(self, watch: str) -> bytes:
        subject = self.subjects.get(watch)
        if subject is None:
            subject = render(self.setup.config.subject, self.setup.host, watch).encode()
            self.subjects[watch] = subject
        return subject

    def on_frame(self, line: bytes) -> None:
        """A frame of our subscription's events: what fits in the window, in one write."""
        messages = frame_messages(line, len(self.head))
        if not messages:
            return
        self.last_seq = messages[-1][0]
        taken = 0 if self.behind else min(len(messages), self.publisher.free())
        if taken:
            subject = self.subject
            self.publisher.publish_events(self.instance.encode() + b":", [
                (seq, subject(watch), payload) for seq, watch, payload in messages[:taken]])
        if taken < len(messages):
            self.let_go(len(messages) - taken)

    def on_notice(self, msg: dict[str, Any]) -> None:
        if self.behind or not self.publisher.ready():
            self.let_go(0)
            return
        del msg["subscription"]
        watches = [msg["watch"]] if msg.get("watch") is not None else list(self.setup.watches)
        for watch in watches:
            self.publish_notice({**msg, "watch": watch}, watch)

    def publish_notice(self, notice: dict[str, Any], watch: str) -> None:
        msg_id = self.notice_ids.next(self.instance, notice.get("seq", self.last_seq),
                                      notice["type"], watch, notice.get("reason", ""))
        self.publisher.publish_notice(notice_subject(self.subject(watch).decode()).encode(),
                                      json.dumps(notice, separators=(",", ":")).encode(),
                                      msg_id)

    async def watch_connection(self) -> None:
        """Give up a connection whose acknowledgements stopped coming, or that is quiet and
        does not answer a PING."""
        # A quarter of the ping interval: a dead connection is seen within 2.25 of them.
        tick = min(1.0, self.setup.config.ping_interval / 4)
        while True:
            await asyncio.sleep(tick)
            self.publisher.keepalive()
            if self.publisher.overdue():
                self.publisher.fail("JetStream did not acknowledge a message within "
                                    f"{ACK_TIMEOUT_S:.0f} s")


class NoticeIds:
    """The Nats-Msg-Id of each notice: `<instance>:<seq>:<type>:<watch>:<reason>:<n>`, n the
    notice's ordinal among the identical ones at that seq (0 for the first).

    Without n, JetStream would drop the second of two identical notices at one seq (two
    overflows with no event between) as a repeat. The ordinals count from the start of a
    subscription, which hands every notice after `since` in the order it was made: a replay
    from since <= seq numbers them as the first time, and the repeats are dropped.
    """

    def __init__(self) -> None:
        self.seq: object = None
        self.seen: dict[str, int] = {}

    def next(self, instance: str, seq: object, kind: str, watch: str, reason: object) -> bytes:
        if seq != self.seq:
            self.seq = seq
            self.seen.clear()  # ordinals are per seq
        key = f"{instance}:{seq}:{kind}:{watch}:{reason}"
        n = self.seen.get(key, 0)
        self.seen[key] = n + 1
        return f"{key}:{n}".encode()


async def serve(setup: Setup, control: socket.socket) -> int:
    """Run until the daemon closes the control socket or its own; returns the exit status."""
    loop = asyncio.get_running_loop()
    forwarder = Forwarder(setup, control)
    stop = loop.create_future()

    def control_readable() -> None:
        try:
            data = control.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data and not stop.done():
            stop.set_result("the daemon asked to stop")

    loop.add_reader(control.fileno(), control_readable)
    tasks = [loop.create_task(forwarder.publisher.run()),
             loop.create_task(forwarder.report_forever()),
             loop.create_task(forwarder.watch_connection())]
    reading = loop.create_task(forwarder.read_daemon())
    await asyncio.wait({stop, reading}, return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if reading.done() and (e := reading.exception()) is not None:
        log.error("forward %s: the daemon's socket: %s", setup.config.name, e)
        status = 1
    reading.cancel()
    await forwarder.publisher.drain(STOP_DRAIN_S)
    forwarder.save()
    for task in tasks:
        task.cancel()
    await forwarder.publisher.close()
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point of a forwarder child process."""
    parser = argparse.ArgumentParser(prog="watchd-forward")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon stops us, over the channel
    from watchd.systemd import configure_logging

    configure_logging(args.log_level, priority_prefix=True)  # read by the daemon: see childlog
    # A fatal signal leaves our stack in the daemon's log; SIGUSR1 too, for a forwarder that
    # seems stuck (our stderr is the daemon's log, see childlog).
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=False)
    # Below the daemon and its watcher: on a busy machine, local subscribers and the
    # kernel's queue come first; forwarding catches up from the daemon's history.
    with contextlib.suppress(OSError):
        os.nice(FORWARD_NICE)
    control = socket.socket(fileno=args.fd)
    with control.makefile("rb") as f:
        setup = Setup.from_json(f.readline())
    control.setblocking(False)
    return asyncio.run(serve(setup, control))


if __name__ == "__main__":
    sys.exit(main())
