"""The client's errors: what failed, where, and what to do; built here once for both transports."""

from __future__ import annotations

import errno
from typing import Any

from watchd.errors import WatchdError

DEFAULT_SOCKET = "/run/watchd/watchd.sock"
SOCKET_ENV = "WATCHD_SOCKET"

# Event lines carry paths of up to PATH_MAX bytes in which every byte that is not UTF-8 grows to a
# six-character escape; 16 MiB leaves ample room and still bounds what a confused peer can make
# us buffer.
MAX_LINE_BYTES = 16 * 1024 * 1024

JSONDict = dict[str, Any]

# Error replies after which the same request may succeed on a later connection: the daemon was
# full, or (request_timeout) it gave up on a line it did not receive whole.
_TRANSIENT_CODES = frozenset({"too_many_clients", "request_timeout"})
# A connect that fails with these finds the daemon absent (not yet started, or restarting).
_ABSENT = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN})


class ClientError(WatchdError):
    """The daemon could not be reached or the connection failed; the message says what to do.

    transient: the same attempt may well succeed later (the daemon is not running yet, hung up,
    or did not answer in time); a follower connects again after such an error.
    """

    def __init__(
        self, message: str, socket_path: str | None = None, *, transient: bool = False
    ) -> None:
        self.socket_path = socket_path
        self.transient = transient
        super().__init__(message)


class ServerError(ClientError):
    """The daemon answered a request with an error reply."""

    def __init__(self, reply: JSONDict, socket_path: str | None = None) -> None:
        self.reply = reply
        self.code = str(reply.get("code", "unknown"))
        self.message = str(reply.get("message", ""))
        super().__init__(
            f"{self.code}: {self.message}", socket_path, transient=self.code in _TRANSIENT_CODES
        )


def connect_error(socket_path: str, error: OSError) -> ClientError:
    """A ClientError for a failed connect, with a hint that fits the errno."""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOENT:
        hint = f"is watchd running? start it or set {SOCKET_ENV} to its socket"
    elif error.errno in (errno.EACCES, errno.EPERM):
        hint = f"you need to be in the socket's group (see: ls -l {socket_path}) or run as root"
    elif error.errno == errno.ECONNREFUSED:
        hint = "nothing is listening there: watchd is not running (stale socket?); start it"
    elif error.errno == errno.ENOTDIR:
        hint = f"check the path, or set {SOCKET_ENV} to the socket of a running watchd"
    else:
        hint = f"check that watchd is running and {SOCKET_ENV} names its socket"
    return ClientError(f"cannot connect to watchd at {socket_path}: {reason}; {hint}", socket_path,
                       transient=error.errno in _ABSENT)


def connect_timeout_error(socket_path: str, timeout: float | None) -> ClientError:
    """The daemon's listen queue stayed full for the whole timeout."""
    return ClientError(
        f"watchd at {socket_path} did not accept the connection within {timeout}s; "
        "it may be overloaded or stuck",
        socket_path,
        transient=True,
    )


def timeout_error(socket_path: str, timeout: float | None) -> ClientError:
    """No reply (or greeting) within the timeout."""
    return ClientError(
        f"watchd at {socket_path} did not answer within {timeout}s; it may be overloaded or stuck",
        socket_path,
        transient=True,
    )


def closed_error(socket_path: str) -> ClientError:
    """The daemon hung up, or the connection broke."""
    return ClientError(
        f"watchd closed the connection ({socket_path}); it may have stopped or restarted: "
        "check that it runs, then connect again",
        socket_path,
        transient=True,
    )


def long_line_error(socket_path: str) -> ClientError:
    """The peer sent a line no watchd sends."""
    return ClientError(
        f"watchd at {socket_path} sent a line over {MAX_LINE_BYTES} bytes; "
        "is it really watchd's socket?",
        socket_path,
    )


def not_connected_error(socket_path: str) -> ClientError:
    """An AsyncClient used before open()."""
    return ClientError(
        "this AsyncClient is not connected: use `async with AsyncClient(...)` "
        "or `await AsyncClient.connect(...)`",
        socket_path,
    )


def fork_error(owner: int) -> ClientError:
    """The connection is used in a process other than the one that opened it."""
    return ClientError(
        f"this watchd connection was opened by process {owner}; a forked child shares its "
        "socket, so open a new client in the child instead"
    )
