"""`watchctl`: ping a running watchd, show its status or metrics, or print its events as they
happen."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, BinaryIO

from watchd import __version__
from watchd.client import DEFAULT_SOCKET, SOCKET_ENV, Client, ClientError, Message, ServerError
from watchd.events import KIND_LIST, Kind
from watchd.protocol import encode

EXIT_OK = 0
EXIT_FAILURE = 1  # the daemon could not be reached, or refused the request
EXIT_INTERRUPTED = 130  # Ctrl-C during a one-shot command (subscribe ends with 0 instead)

# What a "reason" of a notice means, for a person.
_LOST_REASONS = {
    "deleted": "was deleted",
    "unmounted": "was unmounted",
    "removed": "was removed from the configuration",
    "forbidden": "may no longer be seen by this user (the watch's allow_users / allow_groups)",
}
# What a limit named by a watch_degraded notice is, for a person.
_LIMITS = {
    "max_directories": "the watch's max_directories",
    "max_user_watches": "the kernel's fs.inotify.max_user_watches",
}


# How `escape` shows the control characters that have a name in C (as `ls -b` does).
_NAMED_ESCAPES = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v",
                  "\f": "\\f", "\r": "\\r", "\\": "\\\\"}
# The daemon sends a byte of a name that is not UTF-8 as this surrogate plus the byte.
_SURROGATE_BYTES = range(0xDC80, 0xDD00)


def escape(text: str) -> str:
    """`text` safe to print on a terminal line, as `ls -b` shows names.

    A file name is chosen by whoever may write in a watched tree: printed raw, a newline in it
    would forge an output line and an escape character would drive the terminal. Control and
    other unprintable characters become C escapes (\\n, \\t, \\033, \\u202e), a byte that
    is not UTF-8 becomes \\xNN, and a backslash is doubled so the output stays unambiguous.
    """
    if text.isprintable() and "\\" not in text:
        return text  # almost every name: no copy
    return "".join(_escape_char(c) for c in text)


def _escape_char(c: str) -> str:
    named = _NAMED_ESCAPES.get(c)
    if named is not None:
        return named
    if c.isprintable():
        return c
    code = ord(c)
    if code in _SURROGATE_BYTES:
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\{code:03o}"  # ESC as \033, DEL as \177, as ls -b prints them
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _show(value: object) -> str:
    """A value from the daemon, escaped for a terminal line."""
    return escape(str(value))


def build_parser() -> argparse.ArgumentParser:
    """The watchctl command line."""
    parser = argparse.ArgumentParser(
        prog="watchctl",
        description="Talk to a running watchd: check it, show its status, follow its events.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help=f"watchd's socket (default: ${SOCKET_ENV}, else {DEFAULT_SOCKET})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("ping", help="check that watchd answers")
    status = commands.add_parser("status", help="show what watchd is doing")
    status.add_argument("--json", action="store_true", help="print the status object as JSON")
    commands.add_parser(
        "metrics", help="print watchd's metrics in the Prometheus text format (for "
        "node_exporter's textfile collector)")
    sub = commands.add_parser("subscribe", help="print events as they happen, until Ctrl-C")
    sub.add_argument(
        "--watch", metavar="NAME", action="append", help="only this watch (repeatable)"
    )
    sub.add_argument(
        "--event",
        metavar="KIND",
        action="append",
        choices=[kind.value for kind in Kind],
        help="only this kind of event (repeatable): " + KIND_LIST,
    )
    sub.add_argument(
        "--path", metavar="PATH", action="append", help="only events at or below PATH (repeatable)"
    )
    sub.add_argument(
        "--glob", metavar="PATTERN", action="append", help="only base names matching (repeatable)"
    )
    sub.add_argument(
        "--since", metavar="SEQ", type=_seq, help="first replay the held events after SEQ"
    )
    sub.add_argument(
        "--json", action="store_true", help="print each line exactly as watchd sent it"
    )
    sub.add_argument(
        "--follow",
        action="store_true",
        help="keep going when watchd restarts or the connection drops: connect again and "
        "resume after the last event printed",
    )
    return parser


def _seq(text: str) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a seq number, got {text!r}") from e
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seq is 0 or more, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run watchctl; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "subscribe" else EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and point stdout at /dev/null so the
        # interpreter's final flush does not complain about the pipe again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK
    except ServerError as e:
        print(f"watchctl: watchd refused the request: {e.code}: {e.message}", file=sys.stderr)
        hint = _server_error_hint(e)
        if hint:
            print(f"watchctl: {hint}", file=sys.stderr)
        return EXIT_FAILURE
    except ClientError as e:
        print(f"watchctl: {e}", file=sys.stderr)
        return EXIT_FAILURE


def _run(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    if args.command == "subscribe" and args.follow:
        _follow_always(out, args)
        return EXIT_OK
    with Client(args.socket) as client:
        if args.command == "ping":
            _write(out, _pong_line(client.hello))
        elif args.command == "status":
            _print_status(out, client, as_json=args.json)
        elif args.command == "metrics":
            # As the daemon made it: prometheus_client's exposition, which escapes its labels.
            out.write(client.metrics().encode())
            out.flush()
        else:
            _follow(out, client, args)
    return EXIT_OK


def _pong_line(hello: dict[str, Any]) -> str:
    version, pid = _show(hello.get("version", "?")), _show(hello.get("pid", "?"))
    return f"pong from watchd {version} (pid {pid})"


def _print_status(out: BinaryIO, client: Client, as_json: bool) -> None:
    status = client.status()
    if as_json:
        out.write(encode(status))
        out.flush()
        return
    for line in format_status(status, client.hello):
        _write(out, line)


def format_status(status: dict[str, Any], hello: dict[str, Any]) -> list[str]:
    """The readable status summary, one string per line."""
    version = status.get("version", hello.get("version", "?"))
    error = status.get("last_reload_error")
    lines = [
        f"watchd {_show(version)}, pid {status.get('pid')}, "
        f"instance {_show(status.get('instance'))}, "
        f"up {format_duration(status.get('uptime_s', 0))}",
        f"config:  {_show(status.get('config'))} (reloads: {status.get('reloads', 0)}, "
        f"last reload error: {_show(error) if error else 'none'})",
        f"seq:     {status.get('seq')}",
        f"clients: {status.get('clients')} ({status.get('subscriptions')} subscriptions)",
        f"events:  {status.get('events')}, dropped {status.get('dropped')}, "
        f"overflows {status.get('overflows')}",
    ]
    lines.extend(_optional_status_lines(status))
    watches = status.get("watches") or []
    lines.append(f"watches: {len(watches)}")
    width = max((len(_show(w.get("name"))) for w in watches), default=0)
    for watch in watches:
        tree = "recursive" if watch.get("recursive") else "not recursive"
        count = watch.get("directories")
        lines.append(
            f"  {_show(watch.get('name')):<{width}}  {_show(watch.get('state')):<7}  "
            f"{_show(watch.get('path'))}"
            f"  ({tree}, {count} {'directory' if count == 1 else 'directories'})"
        )
        if watch.get("problem"):
            lines.append(f"  {'':<{width}}  problem: {_show(watch['problem'])}")
    lines.extend(_forwarder_lines(status.get("forwarders") or []))
    return lines


def _forwarder_lines(forwarders: list[dict[str, Any]]) -> list[str]:
    """The forwarders (watchd.forward), one line each, and their last error."""
    if not forwarders:
        return []
    lines = [f"forwarders: {len(forwarders)}"]
    width = max(len(_show(f.get("name"))) for f in forwarders)
    for f in forwarders:
        where = (f"connected to {_show(f.get('server'))}" if f.get("connected")
                 else "not connected")
        lines.append(f"  {_show(f.get('name')):<{width}}  {_show(f.get('type'))}  {where}, "
                     f"acknowledged up to seq {_show(f.get('last_acked_seq'))}, "
                     f"lag {f.get('lag')} events")
        if f.get("last_error"):
            lines.append(f"  {'':<{width}}  last error: {_show(f['last_error'])}")
    return lines


def _optional_status_lines(status: dict[str, Any]) -> list[str]:
    # Fields a daemon may add beyond the documented ones: shown when present.
    lines = []
    watcher = status.get("watcher")
    if isinstance(watcher, dict):
        lines.append(f"watcher: pid {watcher.get('pid')}, restarts {watcher.get('restarts', 0)}")
    if "inotify_watches" in status:
        limit = status.get("max_user_watches")
        of_limit = f" (fs.inotify.max_user_watches={limit})" if limit else ""
        lines.append(f"inotify: {status['inotify_watches']} watches{of_limit}")
    if status.get("restart_needed"):
        lines.append("restart needed to apply: " + ", ".join(map(_show, status["restart_needed"])))
    return lines


def format_duration(seconds: float) -> str:
    """Seconds as e.g. "3d 04h 05m", "1h 02m 03s" or "42s"."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _follow(out: BinaryIO, client: Client, args: argparse.Namespace) -> None:
    subscription = client.subscribe(
        watch=args.watch, events=args.event, paths=_paths(args), glob=args.glob, since=args.since
    )
    while True:
        _print_message(out, subscription.get_message(), args.json)


def _follow_always(out: BinaryIO, args: argparse.Namespace) -> None:
    """subscribe --follow: through restarts and dropped connections, until Ctrl-C."""

    def retrying(error: ClientError, delay: float) -> None:
        # Once per outage: the follower keeps trying, with waits of up to a few seconds.
        if follower.failures == 1:
            print(f"watchctl: {error}", file=sys.stderr)
            print("watchctl: connecting again (--follow); Ctrl-C to stop", file=sys.stderr)

    follower = Client.follow(
        watch=args.watch, events=args.event, paths=_paths(args), glob=args.glob,
        since=args.since, socket_path=args.socket, on_retry=retrying,
    )
    with follower:
        while True:
            _print_message(out, follower.get_message(), args.json)


def _paths(args: argparse.Namespace) -> list[str] | None:
    return None if args.path is None else [os.path.abspath(p) for p in args.path]


def _print_message(out: BinaryIO, message: Message | None, as_json: bool) -> None:
    if message is None:
        return
    if as_json:
        out.write(message.raw)
        out.flush()
    else:
        _write(out, format_message(message.data))


def format_message(message: dict[str, Any]) -> str:
    """One readable line for an event or a notice."""
    kind = message.get("type")
    when = message.get("time")
    stamp = format_clock(when if isinstance(when, int | float) else time.time())
    if kind == "event":
        line = f"{stamp} {_show(message.get('kind')):<13} {_show(message.get('path'))}"
        if message.get("is_dir"):
            line += " (dir)"
        if message.get("src_path") is not None:
            line += f" <- {_show(message['src_path'])}"
        if message.get("synthetic"):
            line += " (found by the resync)"
        return line
    return f"{stamp} !! {format_notice(message)}"


def format_notice(message: dict[str, Any]) -> str:
    """What a notice means, for a person."""
    kind = message.get("type")
    watch = _show(message.get("watch"))
    path = _show(message.get("path"))
    if kind == "overflow":
        where = f" on watch {watch}" if message.get("watch") else " on all watches"
        reason = _show(message.get("reason"))
        if message.get("resync") is True:
            return (f"overflow ({reason}){where}: events were lost; what changed follows, "
                    "up to a resynced notice")
        return f"overflow ({reason}){where}: events may have been lost; rescan"
    if kind == "resynced":
        return (f"resynced watch {watch}: {_show(message.get('changes'))} changes found in "
                f"{_show(message.get('duration_ms'))} ms; the events above are complete")
    if kind == "dropped":
        first = message.get("first_seq")
        since = first - 1 if isinstance(first, int) else "SEQ"
        return (
            f"dropped {_show(message.get('count'))} events "
            f"(seq {_show(first)}..{_show(message.get('last_seq'))}): "
            f"this client read too slowly; subscribe again with --since {since} to get them"
        )
    if kind == "watch_lost":
        lost = str(message.get("reason"))
        why = _LOST_REASONS.get(lost, f"is gone ({_show(lost)})")
        return f"watch {watch} lost: {path} {why}"
    if kind == "watch_restored":
        return f"watch {watch} restored: {path} is watched again"
    if kind == "watch_degraded":
        limit = str(message.get("reason"))
        return (
            f"watch {watch} degraded: {_show(message.get('unwatched'))} directories are not "
            f"watched, past {_LIMITS.get(limit, _show(limit))}; changes in them are not "
            "reported until watches are freed (then an overflow notice says to rescan)"
        )
    return f"{_show(kind)}: {_show(message)}"


def format_clock(when: float) -> str:
    """Local wall-clock time as HH:MM:SS.mmm."""
    millis = int(when * 1000) % 1000
    return time.strftime("%H:%M:%S", time.localtime(when)) + f".{millis:03d}"


def _server_error_hint(error: ServerError) -> str | None:
    if error.code == "since_expired" and isinstance(error.reply.get("oldest"), int):
        oldest = error.reply["oldest"]
        return (
            f"the oldest event watchd still holds is seq {oldest}: use --since {oldest - 1} "
            "(and accept the gap), or subscribe without --since"
        )
    if error.code == "unknown_watch":
        return "see `watchctl status` for the configured watches"
    if error.code == "too_many_clients":
        return "try again later, or raise daemon.max_clients in the configuration"
    return None


def _write(out: BinaryIO, line: str) -> None:
    # Bytes out, with surrogateescape, so a name that is not UTF-8 prints as the bytes it is;
    # flushed per line so that a pipe sees each event as it happens.
    out.write(line.encode("utf-8", "surrogateescape") + b"\n")
    out.flush()


if __name__ == "__main__":
    sys.exit(main())
