"""A configuration file on this machine: read it, then check it against the file system and
the process limits."""

from __future__ import annotations

import dataclasses
import os
import resource
from typing import Final

from watchd.config.model import RESERVED_CLIENTS, Config, DaemonConfig
from watchd.config.parse import parse_config, show
from watchd.errors import ConfigError

# File descriptors the daemon needs besides its clients: the listening socket, the watcher's
# pipes (two watchers for a moment while one is replaced), logging, the notify socket, stdio.
FD_RESERVE: Final = 64


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file; raises ConfigError."""
    file = os.path.abspath(os.fspath(path))
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(file, "", f"cannot read the configuration file: {e.strerror or e}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            file, "", f"not UTF-8 text: byte 0x{data[e.start]:02x} on line {line}; save it as UTF-8"
        ) from e
    config = resolve_paths(parse_config(text, file))
    check_fd_limit(config)
    return config


def resolve_paths(config: Config) -> Config:
    """Resolve each watch's symbolic links, once, and refuse a pseudo file system as a root.

    The watcher then opens the resolved path following no link, so a link put in place of
    the directory (or of a parent) later is never followed; a reload resolves again.
    """
    from watchd.inotify.fs import pseudo_fs_at

    watches = []
    for i, watch in enumerate(config.watches):
        real = os.path.realpath(watch.path)
        pseudo = pseudo_fs_at(real)
        if pseudo is not None:
            raise ConfigError(
                config.path, f"watch[{i}].path",
                f"{show(watch.path)} is on the pseudo file system {pseudo}, whose changes "
                f"inotify does not report; watch a directory of a real file system "
                f"(in watch {watch.name!r})")
        resolved = real if real != watch.path else ""
        watches.append(dataclasses.replace(watch, resolved=resolved))
    return dataclasses.replace(config, watches=tuple(watches))


def fds_needed(daemon: DaemonConfig) -> int:
    """The file descriptors the daemon needs at most with this configuration."""
    return daemon.max_clients + RESERVED_CLIENTS + FD_RESERVE


def check_fd_limit(config: Config) -> None:
    """Refuse a max_clients the hard RLIMIT_NOFILE cannot hold (the daemon raises its soft
    limit up to the hard one at start); raises ConfigError."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    need = fds_needed(config.daemon)
    if hard != resource.RLIM_INFINITY and hard < need:
        most = hard - RESERVED_CLIENTS - FD_RESERVE
        raise ConfigError(
            config.path,
            "daemon.max_clients",
            f"{config.daemon.max_clients} clients need {need} file descriptors, more than the "
            f"limit of this process allows (RLIMIT_NOFILE {hard}); lower max_clients to "
            f"{max(most, 0)} or less, or raise the limit (LimitNOFILE= in the unit, ulimit -Hn)",
        )
