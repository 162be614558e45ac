"""What the daemon tells a forwarder process at its start, and where its position is kept.

Shared by the daemon's side (watchd.forward.supervise) and the process (watchd.forward.child);
it imports no NATS code, so that the daemon runs without the client library.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from watchd.config.model import ForwardConfig
from watchd.events import Kind


@dataclass(frozen=True, slots=True)
class Setup:
    """What the daemon tells a forwarder process at its start."""

    config: ForwardConfig
    socket: str  # the daemon's socket
    host: str  # {host} in the subject
    watches: tuple[str, ...]  # the watches forwarded (for notices about every watch)
    state_directory: str | None
    resume: tuple[str, int] | None  # (instance, seq) the daemon last heard acknowledged

    def to_json(self) -> bytes:
        c = self.config
        config = {"name": c.name, "urls": list(c.urls), "type": c.type, "subject": c.subject,
                  "stream": c.stream, "watches": None if c.watches is None else list(c.watches),
                  "events": None if c.events is None else sorted(c.events),
                  "create_stream": c.create_stream, "credentials": c.credentials,
                  "token": c.token, "user": c.user, "password": c.password,
                  "ping_interval": c.ping_interval}
        return json.dumps({"config": config, "socket": self.socket, "host": self.host,
                           "watches": list(self.watches),
                           "state_directory": self.state_directory,
                           "resume": self.resume}).encode() + b"\n"

    @classmethod
    def from_json(cls, line: bytes) -> Setup:
        d = json.loads(line)
        c = d["config"]
        config = ForwardConfig(
            name=c["name"], urls=tuple(c["urls"]), type=c["type"], subject=c["subject"],
            stream=c["stream"], watches=None if c["watches"] is None else tuple(c["watches"]),
            events=None if c["events"] is None else frozenset(Kind(k) for k in c["events"]),
            create_stream=c["create_stream"], credentials=c["credentials"], token=c["token"],
            user=c["user"], password=c["password"], ping_interval=c["ping_interval"])
        resume = d["resume"]
        return cls(config, d["socket"], d["host"], tuple(d["watches"]), d["state_directory"],
                   None if resume is None else (resume[0], int(resume[1])))


def position_file(state_directory: str, name: str) -> str:
    # Hex, as for the stored indexes: a name may be "." or "..".
    return os.path.join(state_directory, "forward", name.encode().hex() + ".json")
