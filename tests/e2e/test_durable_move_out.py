"""The real daemon: a directory moved out of one watch, as that watch's last event, while
another watch stays busy and the journal rotates. Both watches' indexes are stored again (a
stored index older than the journal would cost its watch its resync after a crash)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.harness import Daemon, config, is_event, wait_for, watch
from watchd import statefiles as sf


def stored(state: Path, name: str) -> sf.StoredIndex | None:
    path = sf.index_file(str(state), name)
    try:
        with open(path, "rb") as f:
            return sf.decode_index(f.read(), path)[1]
    except FileNotFoundError:
        return None


def test_a_move_out_of_one_watch_stops_no_index_from_being_stored(
        start_daemon: Callable[..., Daemon], watched: Path, workdir: str) -> None:
    state, other = Path(workdir) / "state", Path(workdir) / "other"
    other.mkdir()
    # A small replay buffer: the journal closes a segment every few events, and each time
    # the indexes are due to be stored.
    d = start_daemon(config(daemon_extra=f'state_directory = "{state}"\nreplay_buffer = 40',
                            watches=watch("w", watched) + watch("o", other)))
    line, _ = d.subscribe()
    # Both watches scanned (their first indexes stored): what follows is live.
    wait_for(lambda: stored(state, "w") and stored(state, "o"), what="both first indexes")
    (watched / "d").mkdir()
    (watched / "d" / "s").mkdir()
    line.until(is_event(watched / "d" / "s", "create"))
    (watched / "d").rename(Path(workdir) / "out")  # and nothing more happens in watch w
    moved = line.until(is_event(watched / "d", "moved_from"))[-1]["seq"]
    written = 0

    def both_stored() -> bool:
        nonlocal written
        for _ in range(5):  # watch o stays busy
            (other / f"f{written}").write_text("x")
            written += 1
        w, o = stored(state, "w"), stored(state, "o")
        return (w is not None and w.seq >= moved and "d" not in w.dirs[str(watched)]
                and o is not None and o.seq > moved)

    wait_for(both_stored, timeout=30, interval=0.1,
             what="both indexes stored after the move out of watch w")
