"""The systemd side of the daemon: sd_notify, the watchdog, socket activation and the
environment systemd sets up for a service.

Everything here reads that environment and does nothing when it is absent, so the same daemon
runs unchanged in a terminal or under systemd. Logging to the journal is watchd.logs (its
functions are also found here, where the entry points have always imported them).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
import warnings
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from typing import Any

from sdnotify import SystemdNotifier

from watchd.errors import WatchdError
from watchd.logs import (
    LOGGER_NAME,
    configure_logging,
    journal_stream,
    log_level,
    print_error,
    stderr_is_journal,
)

__all__ = [
    "CLOSE_FLUSH_S",
    "COMPLAINT_INTERVAL_S",
    "LASTING_FIELDS",
    "LISTEN_FDS_START",
    "PENDING_MAX",
    "SYSTEMD_ONLY_VARIABLES",
    "Notifier",
    "ascii_field",
    "child_environment",
    "configure_logging",
    "journal_stream",
    "listen_sockets",
    "log_level",
    "print_error",
    "stderr_is_journal",
    "under_systemd",
    "watchdog_interval",
]

# First descriptor systemd passes on socket activation (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3

# The variables that only the main process may act on: a watcher child that inherited
# them could notify systemd in the daemon's name or serve the daemon's sockets.
SYSTEMD_ONLY_VARIABLES = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)


def _log() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def ascii_field(text: str) -> str:
    """`text` as one line of plain ASCII, safe to send in a notification datagram."""
    one_line = " ".join(text.splitlines())
    return one_line.encode("ascii", "backslashreplace").decode("ascii")


# Notifications that change the state systemd holds of the service: a lost READY=1 leaves a
# start or a reload pending until it times out, a lost STOPPING=1 makes a stop look like a
# crash. When the receiver's queue is full they wait and are retried, in order; everything
# else (WATCHDOG=1, STATUS=, EXTEND_TIMEOUT_USEC=) is periodic and dropped, as the next one
# replaces it.
LASTING_FIELDS = ("READY=", "RELOADING=", "STOPPING=")
_NOT_READING = "systemd is not reading its notification socket"
# A bound on what waits: only a receiver that never reads again reaches it.
PENDING_MAX = 64
# A receiver that does not read is reported at once, then at most this often.
COMPLAINT_INTERVAL_S = 60.0
# At exit, how long to wait for a stalled receiver to take what still waits (STOPPING=1).
CLOSE_FLUSH_S = 3.0


class Notifier:
    """Sends sd_notify messages to systemd; every method is a no-op when not started by it.

    Never blocks: a receiver that stops reading must not stall the event loop (and so every
    client) on this side channel. sdnotify finds and connects the socket; the datagrams go out
    on that socket with MSG_DONTWAIT.
    """

    __slots__ = ("_complained_at", "_dropped", "_pending", "_sock", "_told")

    def __init__(self, notifier: Any | None) -> None:
        self._sock: socket.socket | None = None if notifier is None else notifier.socket
        if self._sock is not None:
            self._sock.setblocking(False)
        self._pending: deque[bytes] = deque()
        self._dropped: Counter[str] = Counter()  # what was dropped since the last complaint
        self._complained_at: float | None = None
        self._told = False  # a stall was reported and its end is not yet

    @classmethod
    def from_env(cls) -> Notifier:
        """A notifier for $NOTIFY_SOCKET; call it after any fork, as it connects at once."""
        address = os.environ.get("NOTIFY_SOCKET")
        if not address:
            return cls(None)
        # sdnotify opens its socket before connecting and drops it unclosed when the
        # connect fails; the ResourceWarning of that socket is sdnotify's, not ours.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                notifier = SystemdNotifier(debug=True)
            except OSError as e:
                _log().warning(
                    "cannot reach systemd's notification socket %s (%s): systemd will not "
                    "learn that watchd is ready, and may stop it after its start timeout",
                    ascii_field(address),
                    e.strerror or e,
                )
                return cls(None)
        return cls(notifier)

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere."""
        return self._sock is not None

    @property
    def pending(self) -> int:
        """How many lasting notifications wait for the receiver to read."""
        return len(self._pending)

    def close(self, flush_s: float = CLOSE_FLUSH_S) -> None:
        """Deliver what waits (up to flush_s), then close; later messages are dropped."""
        sock = self._sock
        if sock is None:
            return
        deadline = time.monotonic() + flush_s
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        while not self.flush() and (left := deadline - time.monotonic()) > 0:
            # A connected datagram socket polls writable once the receiver's queue has room.
            poller.poll(max(1, int(left * 1000)))
        if self._pending:
            _log().warning("systemd did not read its notification socket for %.0f s; "
                           "not delivered: %s", flush_s, _show(self._pending))
            self._pending.clear()
        sock.close()
        self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, *fields: str) -> bool:
        """Send `fields` (each "KEY=value") in one datagram; True when it went out.

        A lasting notification (see LASTING_FIELDS) that cannot go out now waits for flush();
        a periodic one is dropped.
        """
        if self._sock is None or not fields:
            return False
        # systemd reads the datagram as lines of KEY=value; a newline inside a value would
        # start a new assignment, and anything but ASCII is best not left to its parser.
        data = "\n".join(ascii_field(field) for field in fields).encode("ascii")
        lasting = any(field.startswith(LASTING_FIELDS) for field in fields)
        if not self.flush():
            # Nothing overtakes what waits: systemd must see the states in their order.
            self._keep_or_drop(data, lasting, f"{_NOT_READING} (earlier notifications wait)")
            return False
        error = self._try_send(data)
        if error is None:
            return True
        if isinstance(error, BlockingIOError):
            self._keep_or_drop(data, lasting, f"{_NOT_READING} (its receive queue is full)")
        else:
            self._refused(data, error)
        return False

    def flush(self) -> bool:
        """Retry what waits, oldest first; True when nothing waits any more."""
        while self._pending and self._sock is not None:
            error = self._try_send(self._pending[0])
            if isinstance(error, BlockingIOError):
                return False
            data = self._pending.popleft()
            if error is not None:
                self._refused(data, error)
            elif not self._pending and self._told:
                _log().info("systemd reads its notification socket again; the notifications "
                            "that waited went out")
                self._told = False
        return True

    def _try_send(self, data: bytes) -> OSError | None:
        assert self._sock is not None
        try:
            self._sock.send(data, socket.MSG_DONTWAIT)
        except OSError as e:
            return e
        return None

    def _keep_or_drop(self, data: bytes, lasting: bool, why: str) -> None:
        """A lasting notification waits for flush(); a periodic one is dropped."""
        if lasting:
            if len(self._pending) >= PENDING_MAX:
                self._dropped[_key(self._pending.popleft())] += 1
            self._pending.append(data)
        else:
            self._dropped[_key(data)] += 1
        self._complain(why)

    def _refused(self, data: bytes, error: OSError) -> None:
        # Refused, not stalled: retrying cannot help, so even a lasting one is dropped.
        self._dropped[_key(data)] += 1
        self._complain(f"cannot send to systemd's notification socket ({error.strerror or error})")

    def _complain(self, why: str) -> None:
        """Log what was lost and what waits: at once the first time, then rarely."""
        now = time.monotonic()
        if self._complained_at is not None and now - self._complained_at < COMPLAINT_INTERVAL_S:
            return
        self._complained_at = now
        self._told = True
        dropped = ", ".join(f"{key} x{n}" for key, n in self._dropped.items()) or "none"
        _log().warning(
            "%s: dropped %s; waiting to be retried: %s; watchd keeps serving, and says this "
            "again at most every %.0f s", why, dropped, _show(self._pending), COMPLAINT_INTERVAL_S)
        self._dropped.clear()

    def ready(self, status: str | None = None) -> None:
        """Tell systemd start-up or a reload is complete."""
        self.send("READY=1", *_status_field(status))

    def reloading(self, status: str | None = None) -> None:
        """Tell systemd a reload has begun (with the timestamp Type=notify-reload wants)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status_field(status))

    def stopping(self, status: str | None = None) -> None:
        """Tell systemd an orderly stop has begun."""
        self.send("STOPPING=1", *_status_field(status))

    def status(self, text: str) -> bool:
        """Set the one-line STATUS shown by `systemctl status`; True when it went out."""
        return self.send(*_status_field(text))

    def watchdog(self) -> None:
        """Tell systemd's watchdog the daemon is alive."""
        self.send("WATCHDOG=1")

    def extend_timeout(self, usec: int, status: str | None = None) -> bool:
        """Ask for `usec` more microseconds before systemd gives up on the current phase.

        With `status`, in the same datagram: what is taking so long. Periodic, so dropped when
        systemd is not reading (the next one replaces it); True when it went out.
        """
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, int(usec))}", *_status_field(status))


def _key(datagram: bytes) -> str:
    """The name of the first field of a datagram (READY, STATUS, ...)."""
    return datagram.split(b"=", 1)[0].decode("ascii")


def _show(datagrams: Iterable[bytes]) -> str:
    """The first line of each datagram, for a log line."""
    return ", ".join(d.split(b"\n", 1)[0].decode("ascii") for d in datagrams) or "none"


def _status_field(text: str | None) -> tuple[str, ...]:
    return () if text is None else (f"STATUS={text}",)


def _int_variable(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    try:
        return int(value)
    except ValueError:
        return None


def watchdog_interval(
    *, env: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between WATCHDOG=1 pings systemd expects of this process, or None."""
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    usec = _int_variable(env, "WATCHDOG_USEC")
    if usec is None or usec <= 0:
        return None
    if env.get("WATCHDOG_PID") and _int_variable(env, "WATCHDOG_PID") != pid:
        return None
    # systemd wants a ping at least every WATCHDOG_USEC/2; a third leaves room for a
    # busy event loop to run late without the service being killed.
    return usec / 1_000_000 / 3


def listen_sockets(
    *, env: Mapping[str, str] | None = None, pid: int | None = None
) -> list[socket.socket]:
    """The listening sockets systemd passed to this process (fd 3 on), or [] when none."""
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    if _int_variable(env, "LISTEN_PID") != pid:
        return []
    count = _int_variable(env, "LISTEN_FDS")
    if count is None or count < 0:
        raise WatchdError(
            f"systemd socket activation: LISTEN_FDS={env.get('LISTEN_FDS', '')!r} is not a "
            "count of file descriptors; check the [Socket] section of watchd.socket"
        )
    names = env.get("LISTEN_FDNAMES", "").split(":")
    sockets: list[socket.socket] = []
    try:
        for index in range(count):
            name = names[index] if index < len(names) else ""
            sockets.append(_listening_socket(LISTEN_FDS_START + index, name))
    except WatchdError:
        # The descriptors stay systemd's: release them without closing.
        for sock in sockets:
            sock.detach()
        raise
    return sockets


def _listening_socket(fd: int, name: str) -> socket.socket:
    label = f"fd {fd}" + (f" ({name})" if name else "")
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise WatchdError(
            f"systemd socket activation: {label} is not a usable socket ({e.strerror or e}); "
            "watchd.socket must use ListenStream= with a path"
        ) from e
    try:
        accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        accepting = 0
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not accepting:
        what = f"{_name(sock.family)} {_name(sock.type)}{'' if accepting else ', not listening'}"
        sock.detach()
        raise WatchdError(
            f"systemd socket activation: {label} is {what}, but watchd serves a listening "
            "AF_UNIX stream socket; use ListenStream=/path/to/socket in watchd.socket"
        )
    # systemd hands the descriptors over inheritable; the watcher child must not hold
    # them, or the socket would outlive a daemon that has gone.
    os.set_inheritable(fd, False)
    return sock


def _name(value: int) -> str:
    return getattr(value, "name", str(value))


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` without the variables only the main process may act on."""
    return {key: value for key, value in env.items() if key not in SYSTEMD_ONLY_VARIABLES}


def under_systemd(env: Mapping[str, str] | None = None) -> bool:
    """Whether systemd started this process (it sets one of these for every service)."""
    env = os.environ if env is None else env
    return any(env.get(name) for name in ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET"))
