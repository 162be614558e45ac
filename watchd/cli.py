"""The `watchd` command: foreground, --check and --daemonize; the only place that exits."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import logging
import os
import socket
import sys
from types import TracebackType

from watchd import __version__
from watchd.config.load import load_config
from watchd.config.model import Config
from watchd.errors import ConfigError, WatchdError
from watchd.levels import LOG_LEVELS, syslog_priority
from watchd.systemd import (
    Notifier,
    configure_logging,
    journal_stream,
    listen_sockets,
    print_error,
    stderr_is_journal,
    under_systemd,
)

DEFAULT_CONFIG = "/etc/watchd/watchd.toml"
SYSLOG_SOCKET = "/dev/log"
SYSLOG_DAEMON_FACILITY = 3 << 3  # LOG_DAEMON, added to a message's priority
EX_CONFIG = 78  # sysexits.h: a unit says RestartPreventExitStatus=78 so a bad file is not respawned
EX_FAILURE = 1

log = logging.getLogger("watchd")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="watchd",
        description="Watch directories with inotify and serve their events over a Unix socket.")
    parser.add_argument("--config", metavar="FILE",
                        default=os.environ.get("WATCHD_CONFIG", DEFAULT_CONFIG),
                        help="configuration file (default: $WATCHD_CONFIG, else %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration, print a summary and exit (0, or 78)")
    parser.add_argument("--daemonize", action="store_true",
                        help="detach as a classic daemon (for hosts without systemd)")
    parser.add_argument("--pidfile", metavar="FILE",
                        help="with --daemonize: where to write the pid")
    parser.add_argument("--log-file", metavar="FILE",
                        help="with --daemonize: append the log here (default: syslog)")
    parser.add_argument("--syslog-socket", metavar="PATH", default=SYSLOG_SOCKET,
                        help="with --daemonize and no --log-file: the syslog daemon's socket "
                             "(default: %(default)s)")
    parser.add_argument("--log-level", choices=tuple(LOG_LEVELS),
                        help="overrides daemon.log_level of the configuration")
    parser.add_argument("--version", action="version", version=f"watchd {__version__}")
    args = parser.parse_args(argv)
    if args.daemonize and not args.pidfile:
        parser.error("--daemonize needs --pidfile FILE")
    if args.pidfile and not args.daemonize:
        parser.error("--pidfile is used with --daemonize only")
    if args.log_file and not args.daemonize:
        parser.error("--log-file is used with --daemonize only "
                     "(in the foreground logs go to stderr)")
    return args


def summary(config: Config) -> str:
    """What --check prints about a valid file."""
    lines = [f"{config.path}: OK, {len(config.watches)} watch(es); socket {config.daemon.socket}"]
    for w in config.watches:
        state = "" if os.path.isdir(w.path) else "  (does not exist yet: pending)"
        kind = "recursive" if w.recursive else "not recursive"
        lines.append(f"  {w.name}: {w.path} ({kind}, {len(w.events)} event kinds){state}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `watchd` command."""
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        # Also what `systemctl reload` shows for a refused file (ExecReload= runs --check):
        # at error priority in the journal, so `journalctl -p warning` says why.
        print_error(f"watchd: invalid configuration: {e}")
        return EX_CONFIG
    if args.check:
        print(summary(config))
        return 0
    level = args.log_level or config.daemon.log_level
    if args.daemonize:
        return daemonize(config, level, pidfile=args.pidfile, log_file=args.log_file,
                         level_override=args.log_level, syslog_socket=args.syslog_socket)
    configure_logging(level)
    return serve(config, args.log_level)


def serve(config: Config, log_level: str | None = None) -> int:
    """Run the daemon in this process until it is told to stop."""
    from watchd.daemon import Daemon  # the server side is imported only by the server

    # A watchdog abort (SIGABRT) leaves the Python stack of every thread in the log.
    crash_stream = _enable_faulthandler()
    try:
        listen = listen_sockets()
        # After any daemonization: sdnotify connects when built. Closing it at exit delivers a
        # STOPPING=1 that systemd's socket could not take yet.
        with Notifier.from_env() as notifier:
            daemon = Daemon(config, notifier, listen[0] if listen else None, log_level)
            return asyncio.run(daemon.run())
    except WatchdError as e:
        log.error("%s", e)
        return EX_FAILURE
    except KeyboardInterrupt:
        return 0
    except Exception:
        # Through the log, not Python's raw print: one record, at its priority in the journal.
        log.critical("watchd stopped on an unexpected error; please report it", exc_info=True)
        return EX_FAILURE
    finally:
        faulthandler.disable()
        if crash_stream is not None:
            crash_stream.close()


def _enable_faulthandler() -> socket.socket | None:
    """Dump stacks on a fatal signal: into the journal at error priority when stderr is the
    journal (whose stderr stream logs every raw line at info), else to stderr."""
    if stderr_is_journal():
        stream = journal_stream("watchd")
        if stream is not None:
            faulthandler.enable(file=stream)
            return stream
    faulthandler.enable()
    return None


def daemonize(config: Config, level: str, *, pidfile: str, log_file: str | None,
              level_override: str | None, syslog_socket: str = SYSLOG_SOCKET) -> int:
    """The classic detached daemon, for hosts without systemd."""
    if under_systemd():
        # DaemonContext would close systemd's fds, send stderr to /dev/null and set umask 0.
        print_error("watchd: --daemonize is for hosts without systemd; under systemd run "
                    "`watchd --config FILE` in the foreground (Type=notify)")
        return EX_CONFIG
    import daemon

    pidfile = os.path.abspath(pidfile)
    lock = PidFile(pidfile)
    try:
        lock.check()
    except WatchdError as e:
        print(f"watchd: {e}", file=sys.stderr)
        return EX_FAILURE
    if log_file is None:
        problem = _syslog_problem(syslog_socket)
        if problem is not None:
            # A detached daemon with nowhere to log would fail unseen; a fallback file of a
            # fixed name in a shared directory could be planted by anyone (see docs/security.md).
            print(f"watchd: --daemonize logs to syslog, but {problem}; start a syslog daemon, "
                  "or give --log-file FILE", file=sys.stderr)
            return EX_CONFIG
    stream = open(log_file, "a", buffering=1) if log_file else None  # noqa: SIM115
    context = daemon.DaemonContext(
        pidfile=lock, umask=0o022, working_directory="/",
        stdout=stream, stderr=stream,
        files_preserve=[stream] if stream is not None else None,
    )
    with context:
        # With the standard descriptors closed, python-daemon opens /dev/null onto each of them
        # and dup2()s it onto itself, which keeps the close-on-exec flag: the watcher child
        # would then start with no stdout or stderr and die before it could say why.
        for fd in (0, 1, 2):
            os.set_inheritable(fd, True)
        if stream is None:
            _log_to_syslog(level, syslog_socket)
        else:
            configure_logging(level)
        return serve(config, level_override)


def _syslog_problem(path: str) -> str | None:
    """Why the syslog socket at `path` cannot take our messages, or None when it can."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except OSError as e:
            return f"its socket {path} cannot be reached ({e.strerror or e})"
    return None


def _log_to_syslog(level: str, path: str) -> None:
    handler = SyslogHandler(path)
    handler.setFormatter(logging.Formatter("watchd[%(process)d]: %(name)s: %(message)s"))
    root = logging.getLogger("watchd")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class SyslogHandler(logging.Handler):
    """Log to syslog's datagram socket (facility daemon) without ever waiting.

    A syslog daemon that stops reading its socket must not freeze the event loop, and with it
    every client: a line it cannot take is dropped, counted, and the count is logged once it
    reads again.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.sock = self._connect()
        self.dropped = 0

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        return sock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.dropped and self._send(
                    logging.WARNING, f"watchd[{os.getpid()}]: watchd: {self.dropped} log "
                    "line(s) dropped: syslog did not read its socket"):
                self.dropped = 0
            if not self._send(record.levelno, self.format(record)):
                self.dropped += 1
        except Exception:
            self.handleError(record)

    def _send(self, levelno: int, text: str) -> bool:
        """Send one message without waiting; False when syslog's queue is full."""
        # A file name that is not UTF-8 is logged with its bytes escaped, not lost.
        data = f"<{SYSLOG_DAEMON_FACILITY + syslog_priority(levelno)}>{text}".encode(
            "utf-8", "backslashreplace")
        try:
            self.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            # Syslog was restarted and its socket is a new one: reconnect, once.
            self.sock.close()
            self.sock = self._connect()
            try:
                self.sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
        return True

    def close(self) -> None:
        self.sock.close()
        super().close()


class PidFile:
    """The pid file of --daemonize: refuses a live owner, replaces a stale one, removed at exit."""

    def __init__(self, path: str) -> None:
        self.path = path

    def owner(self) -> int | None:
        """The pid of a live process named in the file, if any."""
        try:
            with open(self.path) as f:
                pid = int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            return None
        if pid <= 0:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def check(self) -> None:
        pid = self.owner()
        if pid is not None and pid != os.getpid():
            raise WatchdError(f"already running with pid {pid} (pid file {self.path}); "
                              "stop it first, or remove the pid file if that process is not watchd")
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise WatchdError(f"cannot write the pid file {self.path}: {directory} does not exist")

    def __enter__(self) -> PidFile:
        self.check()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # stale: its process is gone
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.owner() == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


if __name__ == "__main__":
    sys.exit(main())
