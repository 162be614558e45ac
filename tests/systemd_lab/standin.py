"""A stand-in for the daemon, to tell a broken harness from a broken daemon.

Selected with WATCHD_LAB_STANDIN=1. Standard library only. It speaks just enough of
the wire protocol for the probe (hello, status, subscribe with events found by polling
the watched directories), and the systemd side the way the daemon must: READY=1 once
serving, RELOADING=1 with MONOTONIC_USEC then READY=1 on SIGHUP, WATCHDOG=1 pings,
STOPPING=1 on SIGTERM, and the socket passed as fd 3.

    standin.py [--check] --config FILE
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import time
import tomllib
from typing import Any


def notify(*fields: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall("\n".join(fields).encode("ascii", "backslashreplace"))


def load(path: str) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        watches = tomllib.load(f).get("watch", [])
    return [{"name": w["name"], "path": w["path"]} for w in watches]


def listing(watches: list[dict[str, Any]]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for watch in watches:
        try:
            names = os.listdir(watch["path"])
        except OSError:
            continue
        found.update((watch["name"], os.path.join(watch["path"], n)) for n in names)
    return found


class StandIn:
    def __init__(self, config: str) -> None:
        self.config = config
        self.watches = load(config)
        self.reloads = 0
        self.seq = 0
        self.clients: dict[socket.socket, bytes] = {}
        self.subscribed: set[socket.socket] = set()
        self.seen = listing(self.watches)
        self.flags: set[str] = set()

    def status(self) -> dict[str, Any]:
        return {"type": "status", "pid": os.getpid(), "reloads": self.reloads, "seq": self.seq,
                "config": self.config, "clients": len(self.clients),
                "watches": [{**w, "recursive": False, "state": "active", "directories": 1}
                            for w in self.watches]}

    def send(self, conn: socket.socket, message: dict[str, Any]) -> None:
        conn.sendall(json.dumps(message).encode() + b"\n")

    def handle(self, conn: socket.socket, line: bytes) -> None:
        request = json.loads(line)
        ident = request.get("id")
        if request.get("op") == "status":
            self.send(conn, {**self.status(), "id": ident})
        elif request.get("op") == "subscribe":
            self.subscribed.add(conn)
            self.send(conn, {"type": "subscribed", "id": ident, "subscription": "s1",
                             "seq": self.seq})
        else:
            self.send(conn, {"type": "error", "id": ident, "code": "unknown_op",
                             "message": "not in the stand-in"})

    def poll(self) -> None:
        now = listing(self.watches)
        for watch, path in sorted(now - self.seen):
            self.seq += 1
            event = {"type": "event", "subscription": "s1", "seq": self.seq, "time": time.time(),
                     "watch": watch, "kind": "create", "path": path, "is_dir": False,
                     "mask": ["IN_CREATE"], "cookie": 0}
            for conn in self.subscribed:
                self.send(conn, event)
        self.seen = now

    def run(self, listener: socket.socket) -> int:
        selector = selectors.DefaultSelector()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        for signum, flag in ((signal.SIGHUP, "reload"), (signal.SIGTERM, "stop")):
            signal.signal(signum, lambda *_, flag=flag: self.flags.add(flag))
        selector.register(wake_r, selectors.EVENT_READ)
        selector.register(listener, selectors.EVENT_READ)
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
        ping = usec / 3e6 if usec else None
        last_ping = 0.0
        notify("READY=1", f"STATUS=stand-in serving {len(self.watches)} watch(es)")
        while "stop" not in self.flags:
            if ping and time.monotonic() - last_ping >= ping:
                notify("WATCHDOG=1")
                last_ping = time.monotonic()
            for key, _ in selector.select(0.05):
                if key.fileobj == wake_r:
                    os.read(wake_r, 512)
                elif key.fileobj is listener:
                    conn, _ = listener.accept()
                    self.clients[conn] = b""
                    selector.register(conn, selectors.EVENT_READ)
                    self.send(conn, {"type": "hello", "protocol": 1, "server": "watchd",
                                     "version": "stand-in", "pid": os.getpid(),
                                     "instance": "stand-in", "seq": self.seq})
                else:
                    conn = key.fileobj  # type: ignore[assignment]
                    data = conn.recv(65536)
                    if not data:
                        selector.unregister(conn)
                        self.clients.pop(conn, None)
                        self.subscribed.discard(conn)
                        conn.close()
                        continue
                    buffered = self.clients[conn] + data
                    *lines, self.clients[conn] = buffered.split(b"\n")
                    for line in lines:
                        self.handle(conn, line)
            self.poll()
            if "reload" in self.flags:
                self.flags.discard("reload")
                usec_now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                notify("RELOADING=1", f"MONOTONIC_USEC={usec_now}")
                self.watches = load(self.config)
                self.reloads += 1
                notify("READY=1", f"STATUS=stand-in reloaded {self.reloads} time(s)")
        notify("STOPPING=1")
        return 0


def main(argv: list[str]) -> int:
    check = "--check" in argv
    config = argv[argv.index("--config") + 1]
    try:
        load(config)
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        print(f"stand-in: invalid configuration {config}: {e}", file=sys.stderr)
        return 78
    if check:
        print(f"{config}: OK")
        return 0
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        print("stand-in: serves a socket passed by systemd only", file=sys.stderr)
        return 1
    listener = socket.socket(fileno=3)
    os.set_inheritable(3, False)
    print(f"stand-in {os.getpid()} serving", flush=True)
    return StandIn(config).run(listener)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
