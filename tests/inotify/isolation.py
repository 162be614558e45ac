"""Run a check in a forked child with lowered inotify limits or another uid, never touching ours.

The per-user inotify limits are global sysctls; lowering them for a test would break every
other inotify user on the machine meanwhile. A child user namespace has limits of its own
(/proc/sys/user/max_inotify_*) that bind only the processes inside it, so that is where the
limits are lowered.
"""

from __future__ import annotations

import ctypes
import os
import pickle
from collections.abc import Callable
from typing import Any

import pytest

_CLONE_NEWUSER = 0x10000000


def _enter_user_namespace() -> None:
    uid, gid = os.getuid(), os.getgid()  # before unsharing: unmapped, they read as 65534
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWUSER) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWUSER): {os.strerror(err)}")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


_PR_SET_KEEPCAPS = 8
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _set_caps(caps: int) -> None:
    """Make `caps` (a mask of the first 32 capability bits) this process's only capabilities."""
    libc = ctypes.CDLL(None, use_errno=True)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = caps
    if libc.capset(ctypes.byref(_CapHeader(_CAP_VERSION_3, 0)), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def _child(
    fn: Callable[[], Any], watches: int | None, instances: int | None, uid: int | None,
    caps: int | None = None,
) -> tuple[str, Any]:
    if watches is not None or instances is not None:
        try:
            _enter_user_namespace()
            if watches is not None:
                with open("/proc/sys/user/max_inotify_watches", "w") as f:
                    f.write(str(watches))
            if instances is not None:
                with open("/proc/sys/user/max_inotify_instances", "w") as f:
                    f.write(str(instances))
        except OSError as e:
            return ("skip", f"cannot lower inotify limits in a user namespace: {e}")
    if uid is not None:
        try:
            if caps is not None:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            if caps is not None:
                _set_caps(caps)
        except OSError as e:
            return ("skip", f"cannot switch to uid {uid}: {e}")
    return ("ok", fn())


def run_isolated(
    fn: Callable[[], Any],
    *,
    watches: int | None = None,
    instances: int | None = None,
    uid: int | None = None,
    caps: int | None = None,
) -> Any:
    """Run fn in a forked child (in a user namespace with the given limits, or as uid, keeping
    the capabilities of the mask `caps`, e.g. 1 << 2 for CAP_DAC_READ_SEARCH)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(r)
            try:
                outcome = _child(fn, watches, instances, uid, caps)
            except BaseException as e:
                outcome = ("error", f"{type(e).__name__}: {e}")
            try:
                data = pickle.dumps(outcome)
            except Exception as e:
                data = pickle.dumps(("error", f"unpicklable result: {e!r}"))
            with os.fdopen(w, "wb") as f:
                f.write(data)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the isolated child failed to report"
    status_word, value = pickle.loads(data)
    if status_word == "skip":
        pytest.skip(value)
    if status_word == "error":
        pytest.fail(f"isolated child raised {value}")
    return value
