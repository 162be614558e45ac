"""The one exception tree of watchd; every message is written for a person."""


class WatchdError(Exception):
    """Base of every error watchd raises on purpose."""


class ConfigError(WatchdError):
    """A configuration file that cannot be used: names the file, the key and the problem."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {problem}")
