"""A `watchd.client` follower that runs inside the container through a restart; prints JSON.

    follower.py SOCKET DIR COUNT READY

Creates COUNT files in DIR, one every few milliseconds, while following every event with
`Client.follow`; once it has seen a quarter of them it creates the file READY (the test then
restarts the service). Ends when every file was reported (by a kernel or a synthetic event)
or after a minute. Prints what it saw: the files never reported, the seqs yielded twice or out
of order, the notices, and the instances the daemon greeted it with.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
from typing import Any

from watchd.client import Client

DEADLINE_S = 60.0
_SEEN_KINDS = ("create", "close_write", "moved_to")


def write(directory: str, count: int, stop: threading.Event) -> None:
    for i in range(count):
        if stop.is_set():
            return
        with open(os.path.join(directory, f"follow-{i:04}"), "w") as f:
            f.write("x")
        time.sleep(0.02)


def main(socket_path: str, directory: str, count: int, ready: str) -> dict[str, Any]:
    names = {os.path.join(directory, f"follow-{i:04}") for i in range(count)}
    seen: set[str] = set()
    seqs: list[int] = []
    notices: list[dict[str, Any]] = []
    instances: list[str] = []
    follower = Client.follow(socket_path=socket_path, paths=[directory])
    follower.start()
    stop = threading.Event()
    writer = threading.Thread(target=write, args=(directory, count, stop))
    writer.start()
    deadline = time.monotonic() + DEADLINE_S
    try:
        while seen != names and time.monotonic() < deadline:
            message = follower.get(timeout=1.0)
            if follower.instance is not None and follower.instance not in instances:
                instances.append(follower.instance)
            if message is None:
                continue
            if message.get("type") != "event":
                notices.append({k: message.get(k) for k in ("type", "reason", "resync")})
                continue
            seqs.append(message["seq"])
            if message["kind"] in _SEEN_KINDS and message["path"] in names:
                seen.add(message["path"])
                if len(seen) == count // 4:
                    open(ready, "w").close()
    finally:
        stop.set()
        writer.join()
        follower.close()
    return {"missing": sorted(names - seen)[:10], "missing_count": len(names - seen),
            "out_of_order": sum(1 for a, b in itertools.pairwise(seqs) if b <= a),
            "events": len(seqs), "notices": notices, "instances": instances}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])))
