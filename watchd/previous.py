"""What a previous run of the daemon left in the state directory (watchd.state), read at start:
whether it can be resumed, and what to resume.

Read only, apart from moving an unreadable file aside: the state directory's one writer stays
watchd.state.State, which takes the directory (its lock) before this reads it, and wipes what
this does not resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass

from watchd import journal
from watchd.statefiles import INDEX, INDEX_SUFFIX, JOURNAL, META, StoredIndex, decode_index

log = logging.getLogger("watchd")

FORMAT = 1  # of state.json; another is not resumed
BAD = ".bad"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


@dataclass(frozen=True, slots=True)
class Resumed:
    """What a previous run left that this one takes over."""

    instance: str
    loaded: journal.Loaded
    indexes: dict[str, StoredIndex]


def boot_id() -> str:
    try:
        with open(BOOT_ID) as f:
            return f.read().strip()
    except OSError:
        return ""


def move_aside(path: str, problem: str) -> None:
    """Keep an unreadable file for a person to look at, out of the daemon's way."""
    log.warning("state %s cannot be used (%s): moved to %s; starting with a new instance",
                path, problem, path + BAD)
    try:
        os.replace(path, path + BAD)
    except OSError as e:
        log.warning("cannot move %s aside: %s; removing it", path, e.strerror)
        with contextlib.suppress(OSError):
            os.unlink(path)


def read_previous(directory: str, specs: dict[str, str]) -> Resumed | None:
    """What to resume from the state in directory; None to start afresh (said in the log
    when that is not a first start). `specs`: the configured watches (watchd.restore's
    index_spec by name); the indexes of others are left out. StateError and OSError for
    files that cannot be read."""
    meta = _meta(os.path.join(directory, META))
    if meta is None:
        return None
    instance, clean, seq, boot = meta
    if not clean and boot != boot_id():
        log.warning("state %s: the machine stopped without a clean stop of watchd: the "
                    "journal may lack events clients saw; starting with a new instance",
                    directory)
        return None
    try:
        loaded = journal.load(os.path.join(directory, JOURNAL))
    except journal.StateError as e:
        move_aside(e.path, str(e).removeprefix(e.path + ": "))
        return None
    if clean and loaded.last_seq != seq:
        log.warning("state %s: the journal ends at seq %d, the daemon stopped at %d; "
                    "starting with a new instance", directory, loaded.last_seq, seq)
        return None
    indexes = stored_indexes(directory, specs)
    return None if indexes is None else Resumed(instance, loaded, indexes)


def _meta(path: str) -> tuple[str, bool, int, object] | None:
    """state.json's instance, clean, seq and boot id; None when there is none or it is not
    usable (then it is moved aside)."""
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"not the state of this version (format {FORMAT})")
        instance, clean, seq = meta["instance"], meta["clean"], meta["seq"]
        if (not isinstance(instance, str) or not instance or type(seq) is not int
                or not isinstance(clean, bool)):
            raise ValueError("no instance, seq or clean")
    except FileNotFoundError:
        return None  # a first start, or a state given up (see State.fail)
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        move_aside(path, str(e))
        return None
    return instance, clean, seq, meta.get("boot_id")


def stored_indexes(directory: str, specs: dict[str, str]) -> dict[str, StoredIndex] | None:
    """The stored indexes of the watches in specs; None when one cannot be read (it is moved
    aside, and nothing is resumed)."""
    found: dict[str, StoredIndex] = {}
    folder = os.path.join(directory, INDEX)
    for entry in os.listdir(folder):
        if not entry.endswith(INDEX_SUFFIX):
            continue
        path = os.path.join(folder, entry)
        with open(path, "rb") as f:
            data = f.read()
        try:
            name, stored = decode_index(data, path)
        except journal.StateError as e:
            move_aside(path, str(e).removeprefix(path + ": "))
            return None
        if name in specs:
            found[name] = stored
    return found
