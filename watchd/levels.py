"""Log levels: the names a user configures, and the syslog priorities they are written at."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

# What daemon.log_level and --log-level accept, least severe first, and the logging level of each.
LOG_LEVELS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warning": logging.WARNING,
        "error": logging.ERROR,
    }
)
DEFAULT_LOG_LEVEL: Final = "info"  # where neither the configuration nor --log-level names one

# Logging level -> syslog priority as the journal reads it from a "<N>" prefix (sd-daemon(3)),
# most severe first: a record gets the priority of the first threshold it reaches.
_PRIORITIES: Final = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
    (logging.DEBUG, 7),
)
_DEBUG_PRIORITY: Final = 7


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level."""
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return _DEBUG_PRIORITY


def priority_level(priority: int) -> int:
    """The logging level of a syslog priority (0-7), the inverse of syslog_priority.

    A priority no level is written at gets the most severe level written at a less severe one:
    0 and 1 (emerg, alert) are critical, 5 (notice) is info.
    """
    for threshold, written_at in _PRIORITIES:
        if written_at >= priority:
            return threshold
    return logging.DEBUG
