"""Log levels: one table of names, and syslog priorities both ways."""

from __future__ import annotations

import logging

import pytest

from watchd import cli, config
from watchd.errors import WatchdError
from watchd.levels import LOG_LEVELS, priority_level, syslog_priority
from watchd.systemd import log_level


def test_names_are_the_documented_ones_least_severe_first() -> None:
    assert list(LOG_LEVELS) == ["debug", "info", "warning", "error"]
    assert [LOG_LEVELS[name] for name in LOG_LEVELS] == sorted(LOG_LEVELS.values())


def test_the_daemon_the_command_line_and_the_config_accept_the_same_names() -> None:
    assert [log_level(name) for name in LOG_LEVELS] == list(LOG_LEVELS.values())
    assert cli.parse_args(["--log-level", "warning"]).log_level == "warning"
    assert config.parse_config("[daemon]\nlog_level = 'debug'\n", "f.toml").daemon.log_level == (
        "debug"
    )


def test_an_unknown_name_is_refused_with_the_list() -> None:
    with pytest.raises(WatchdError) as refused:
        log_level("loud")
    assert str(refused.value) == "unknown log level 'loud': use one of debug, info, warning, error"


@pytest.mark.parametrize(
    ("priority", "level"),
    [
        (0, logging.CRITICAL),  # emerg
        (1, logging.CRITICAL),  # alert
        (2, logging.CRITICAL),
        (3, logging.ERROR),
        (4, logging.WARNING),
        (5, logging.INFO),  # notice
        (6, logging.INFO),
        (7, logging.DEBUG),
    ],
)
def test_priority_level(priority: int, level: int) -> None:
    assert priority_level(priority) == level


def test_priority_level_inverts_syslog_priority() -> None:
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
        assert priority_level(syslog_priority(level)) == level
