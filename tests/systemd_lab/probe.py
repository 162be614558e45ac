"""A client of the daemon's socket that runs inside the container; prints one JSON object.

    probe.py events SOCKET DIR     subscribe, create a file in DIR, wait for its event
    probe.py status SOCKET         the status reply
    probe.py hello SOCKET          connect and read the greeting only

Standard library only and independent of the package, so that what it checks is the
wire protocol as served, not the package's own client. Exit status 0 on success, 1 when
the daemon did not answer as expected, 2 when the socket could not be opened.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

TIMEOUT_S = 10.0


class ProbeFailed(Exception):
    """The daemon did not answer as expected."""


class Line:
    """One connection, read and written a JSON line at a time."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT_S)
        self.sock.connect(path)
        self.buffer = b""

    def read(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProbeFailed("timed out waiting for a line from the daemon")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError as e:
                raise ProbeFailed("timed out waiting for a line from the daemon") from e
            if not chunk:
                raise ProbeFailed("the daemon closed the connection")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ProbeFailed(f"not a JSON object: {line!r}")
        return message

    def request(self, deadline: float, **fields: Any) -> dict[str, Any]:
        """Send a request and return its reply, skipping pushed events."""
        ident = uuid.uuid4().hex[:8]
        self.sock.sendall(json.dumps({**fields, "id": ident}).encode() + b"\n")
        while True:
            message = self.read(deadline)
            if message.get("id") == ident:
                if message.get("type") == "error":
                    raise ProbeFailed(f"{fields['op']} refused: {message}")
                return message


def hello(path: str) -> dict[str, Any]:
    started = time.monotonic()
    conn = Line(path)
    greeting = conn.read(started + TIMEOUT_S)
    return {"hello": greeting, "hello_s": time.monotonic() - started}


def status(path: str) -> dict[str, Any]:
    conn = Line(path)
    deadline = time.monotonic() + TIMEOUT_S
    conn.read(deadline)
    return conn.request(deadline, op="status")


def events(path: str, directory: str) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + TIMEOUT_S
    conn = Line(path)
    greeting = conn.read(deadline)
    hello_s = time.monotonic() - started
    subscribed = conn.request(deadline, op="subscribe", paths=[directory])
    # The daemon may greet an activating client before its watches are in place; a
    # careful client waits for them, as this one does, and says how long it took.
    while True:
        watches = conn.request(deadline, op="status")["watches"]
        if all(w["state"] == "active" for w in watches if directory.startswith(w["path"])):
            break
        time.sleep(0.02)
    active_s = time.monotonic() - started
    target = os.path.join(directory, f"probe-{uuid.uuid4().hex[:8]}.txt")
    created = time.monotonic()
    with open(target, "w") as f:
        f.write("probe\n")
    while True:
        message = conn.read(deadline)
        if message.get("type") == "event" and message.get("path") == target:
            return {
                "hello": greeting, "subscribed": subscribed, "event": message,
                "hello_s": hello_s, "active_s": active_s,
                "event_s": time.monotonic() - created, "total_s": time.monotonic() - started,
            }


def main(argv: list[str]) -> int:
    commands: dict[str, Callable[..., dict[str, Any]]] = {
        "hello": hello, "status": status, "events": events}
    arity = {"hello": 1, "status": 1, "events": 2}
    if not argv or argv[0] not in commands or len(argv) - 1 != arity[argv[0]]:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        result = commands[argv[0]](*argv[1:])
    except (ProbeFailed, ValueError) as e:
        print(json.dumps({"error": str(e)}))
        return 1
    except OSError as e:
        print(json.dumps({"error": f"{argv[1]}: {e.strerror or e}", "errno": e.errno}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
