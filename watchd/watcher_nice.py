"""The watcher's scheduling priority: above the daemon's, where it is allowed."""

from __future__ import annotations

import logging
import os
import resource

log = logging.getLogger("watchd.watcher")

# How far below the daemon's nice value we run, where allowed. The kernel queue is the one
# place where events are lost for good; every stage after it buffers. So when the CPUs are
# contended (a burst: the writer, we, the daemon and its clients), we must be scheduled first.
NICE_BOOST = 10


def priority_targets(current: int, rlimit_nice: int) -> list[int]:
    """The nice values to try, best first: NICE_BOOST below current, then RLIMIT_NICE's floor.

    Unprivileged, RLIMIT_NICE r allows going down to 20 - r (RLIM_INFINITY: anywhere).
    """
    wanted = max(-20, current - NICE_BOOST)
    floor = wanted if rlimit_nice == resource.RLIM_INFINITY else max(wanted, 20 - rlimit_nice)
    return [value for value in dict.fromkeys((wanted, floor)) if value < current]


def raise_priority() -> int:
    """Lower our nice value by NICE_BOOST where allowed; returns the value we run at.

    Allowed with CAP_SYS_NICE (root) or by an RLIMIT_NICE that reaches far enough (systemd's
    LimitNICE=, as the shipped unit sets); otherwise we stay at the daemon's priority.
    """
    current = os.getpriority(os.PRIO_PROCESS, 0)
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    for value in priority_targets(current, soft):
        try:
            os.setpriority(os.PRIO_PROCESS, 0, value)
        except PermissionError:
            continue
        log.debug("watcher runs at nice %d, the daemon at %d", value, current)
        return value
    log.debug("watcher runs at the daemon's nice value %d (not allowed to lower it: no "
              "CAP_SYS_NICE, RLIMIT_NICE %s)", current, soft)
    return current
