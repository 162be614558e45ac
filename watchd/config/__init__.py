"""The TOML configuration: parsed into frozen dataclasses, every problem named by file and key.

`model` holds the values (and what a reload changes), `parse` reads TOML text into them,
`load` reads a file and checks it against this machine (symbolic links, pseudo file systems,
the file descriptor limit).
"""

from watchd.config.load import load_config
from watchd.config.model import (
    Config,
    ConfigDiff,
    DaemonConfig,
    ForwardConfig,
    WatchConfig,
    diff_config,
)
from watchd.config.parse import parse_config

__all__ = [
    "Config",
    "ConfigDiff",
    "DaemonConfig",
    "ForwardConfig",
    "WatchConfig",
    "diff_config",
    "load_config",
    "parse_config",
]
