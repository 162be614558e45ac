#!/usr/bin/env python3
"""Events per CPU second through `watchd.client`'s read path (framing, decoding, routing).

A stand-in server greets, confirms one subscription and writes `lines` ready-made event lines as
fast as the socket takes them; the client under test reads them with `Subscription.get_message`
(blocking) and `AsyncSubscription.get_message` (asyncio). Each measurement runs in a child
process whose `watchd` is imported from the source tree given, so that two trees (say, the
current one and an export of an older commit) are compared within one run, rounds interleaved:

    git archive main | tar -x -C /tmp/base
    .venv/bin/python -m bench.client_read --tree . --tree /tmp/base --lines 200000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

HELLO = {"type": "hello", "protocol": 1, "server": "watchd", "version": "0", "pid": 1,
         "instance": "bench", "seq": 0}


def _event(seq: int) -> bytes:
    return (
        b'{"type":"event","subscription":"s1","seq":%d,"time":1732700000.123456,'
        b'"watch":"uploads","kind":"close_write","path":"/srv/uploads/in/a/b/file-%06d.csv",'
        b'"is_dir":false,"mask":["IN_CLOSE_WRITE"],"cookie":0}\n' % (seq, seq)
    )


def _serve(listener: socket.socket, payload: bytes) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(json.dumps(HELLO).encode() + b"\n")
        request = b""
        while b"\n" not in request:
            request += conn.recv(4096)
        rid = json.loads(request.split(b"\n")[0])["id"]
        reply = {"type": "subscribed", "id": rid, "subscription": "s1", "seq": 0}
        conn.sendall(json.dumps(reply).encode() + b"\n")
        try:
            conn.sendall(payload)
            conn.recv(1)  # until the client hangs up
        except OSError:
            pass


def _measure(mode: str, lines: int) -> float:
    """Events per CPU second of the reading thread for one client mode, in this process.

    CPU time of the client's own thread, not wall time: on a loaded machine it is what holds
    still between rounds, and the stand-in server's thread is left out.
    """
    from watchd.client import AsyncClient, Client

    payload = b"".join(_event(seq) for seq in range(1, lines + 1))
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        path = os.path.join(directory, "s")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        server = threading.Thread(target=_serve, args=(listener, payload))
        server.start()
        if mode == "sync":
            with Client(path) as client:
                sub = client.subscribe()
                start = time.thread_time()
                for _ in range(lines):
                    sub.get_message()
                took = time.thread_time() - start
        else:

            async def main() -> float:
                async with AsyncClient(path) as client:
                    sub = await client.subscribe()
                    start = time.thread_time()
                    for _ in range(lines):
                        await sub.get_message()
                    return time.thread_time() - start

            took = asyncio.run(main())
        server.join()
        listener.close()
    return lines / took


def _child(tree: str, mode: str, lines: int) -> float:
    # With -c the child's first import path is its working directory: the tree's watchd is
    # imported ahead of the installed one. This file is run by path so as not to add its own.
    code = (
        f"import runpy, watchd.client; assert watchd.client.__file__.startswith({tree!r}); "
        f"print(runpy.run_path({os.path.abspath(__file__)!r})['_measure']({mode!r}, {lines}))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=tree)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", help="a source tree holding watchd/")
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trees: list[str] = [os.path.abspath(tree) for tree in args.tree or ["."]]
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for mode in ("sync", "async"):
            for tree in trees:
                rate = _child(tree, mode, args.lines)
                best[tree, mode] = max(best.get((tree, mode), 0.0), rate)
    base = trees[0]
    for mode in ("sync", "async"):
        for tree in trees:
            rate = best[tree, mode]
            ratio = rate / best[base, mode]
            print(f"{mode:5}  {tree:30}  {rate:>10,.0f} events/CPU-s  x{ratio:.2f} of the first")


if __name__ == "__main__":
    main()
