#!/usr/bin/env python3
"""Fan-out: N subscribers each receive every event of a burst of file creations.

The consumer counts lines and looks for notices without decoding the JSON, so what is
measured is the daemon's delivery, not a client's parser (the shared peer harness decodes
every line in one Python process, which for 100 subscribers is most of its time).

    .venv/bin/python bench/fanout.py --subs 100 --files 10000
"""

from __future__ import annotations

import argparse
import selectors
import sys
import time
from pathlib import Path

from bench.daemon import running, subscribe


def run(subs: int, files: int, fs: Path) -> dict[str, float]:
    with running(fs, "fanout", "FANOUT_PROFILE") as daemon:
        conns = [subscribe(daemon.socket) for _ in range(subs)]
        sel = selectors.DefaultSelector()
        lines = {c.fileno(): 0 for c in conns}
        carry = {c.fileno(): b"" for c in conns}
        notices = 0
        for c in conns:
            sel.register(c, selectors.EVENT_READ)
        t0 = time.monotonic()
        for i in range(files):
            with open(daemon.root / f"f{i:06}", "wb"):
                pass
        t_gen = time.monotonic() - t0
        done = 0
        deadline = time.monotonic() + 120
        while done < subs and time.monotonic() < deadline:
            for key, _ in sel.select(1.0):
                chunk = carry[key.fd] + key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
                cut = chunk.rfind(b"\n") + 1  # whole lines only; the rest waits for the next read
                data, carry[key.fd] = chunk[:cut], chunk[cut:]
                n = data.count(b'"kind":"create"')
                found = data.count(b'"type":"overflow"') + data.count(b'"type":"dropped"')
                if found and not notices:
                    i = max(data.find(b'"type":"overflow"'), data.find(b'"type":"dropped"'))
                    print("first notice:", data[max(0, i - 2): data.find(b"\n", i)].decode(),
                          file=sys.stderr)
                notices += found
                before = lines[key.fd]
                lines[key.fd] = before + n
                if before < files <= before + n:
                    done += 1
        took = time.monotonic() - t0
        for c in conns:
            c.close()
        return {"subs": subs, "files": files, "gen_s": t_gen, "total_s": took,
                "complete": sum(min(v, files) for v in lines.values()) / (subs * files),
                "notices": notices}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subs", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--fs", type=Path, default=Path("/tmp/benchfs"),
                        help="where the watched tree goes (a tmpfs)")
    args = parser.parse_args()
    args.fs.mkdir(parents=True, exist_ok=True)
    print("| subscribers | files | generator s | all delivered s | complete | notices |")
    print("|---|---|---|---|---|---|")
    for n in args.subs:
        r = run(n, args.files, args.fs)
        print(f"| {n} | {args.files} | {r['gen_s']:.3f} | {r['total_s']:.3f} | "
              f"{100 * r['complete']:.1f}% | {r['notices']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
