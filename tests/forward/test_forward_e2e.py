"""Forwarding to a real nats-server with JetStream: the daemon, its forwarder process and
the server as they run in production."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon, config, wait_for, watch
from tests.nats_server import (
    NatsServer,
    add_stream,
    nats_server,
    operator_mode,
    stream_messages,
    stream_subjects,
    update_stream,
    wait_stream_count,
)

pytest.importorskip("nats")

HOST = socket.gethostname()


@pytest.fixture
def nats(workdir: str) -> Iterator[NatsServer]:
    with nats_server(workdir) as server:
        yield server


def forward(url: str, **keys: object) -> str:
    lines = ["[[forward]]", 'name = "central"', 'type = "nats"', f'url = "{url}"']
    keys.setdefault("create_stream", True)
    for key, value in keys.items():
        text = str(value).lower() if isinstance(value, bool) else f'"{value}"' if isinstance(
            value, str) else str(value).replace("'", '"')
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def forwarder(daemon: Daemon) -> dict[str, object]:
    (one,) = daemon.status()["forwarders"]
    return one  # type: ignore[no-any-return]


def wait_connected(daemon: Daemon, timeout: float = 20.0) -> dict[str, object]:
    """The forwarder's status once it is connected and subscribed (it forwards from then)."""
    return wait_for(lambda: (f := forwarder(daemon))["connected"]
                    and daemon.status()["subscriptions"] >= 1 and f, timeout,
                    "the forwarder connected")


def event_seqs(url: str, kind: str | None = None) -> list[int]:
    msgs = stream_messages(url)
    return [p["seq"] for s, p, _ in msgs if not s.endswith("._notice")
            and (kind is None or p["kind"] == kind)]


def burst(root: Path, n: int, prefix: str = "f") -> None:
    for i in range(n):
        (root / f"{prefix}{i}").write_bytes(b"")


@pytest.fixture
def start(start_daemon: Callable[..., Daemon], watched: Path,
          nats: NatsServer) -> Callable[..., Daemon]:
    def go(daemon_extra: str = "", **keys: object) -> Daemon:
        text = config(daemon_extra=daemon_extra,
                      watches=watch("uploads", watched, events=["create"])) + forward(
            nats.url, **keys)
        return start_daemon(text)
    return go


def test_a_burst_reaches_the_stream_once_and_in_order(start: Callable[..., Daemon],
                                                       nats: NatsServer, watched: Path) -> None:
    daemon = start()
    status = wait_connected(daemon)
    assert status["server"] == nats.url
    assert status["last_error"] is None
    burst(watched, 1000)
    wait_stream_count(nats.url, 1000)
    msgs = [m for m in stream_messages(nats.url) if not m[0].endswith("._notice")]
    seqs = [p["seq"] for _, p, _ in msgs]
    assert seqs == sorted(seqs)
    assert len(seqs) == len(set(seqs)) == 1000
    subject, payload, msg_id = msgs[0]
    assert subject == f"watchd.{HOST.replace('.', '%2E')}.uploads"
    assert "subscription" not in payload
    assert list(payload)[:2] == ["type", "seq"] and payload["type"] == "event"
    assert payload["kind"] == "create" and payload["watch"] == "uploads"
    assert msg_id == f"{daemon.status()['instance']}:{payload['seq']}"
    assert [p["path"] for _, p, _ in msgs] == [str(watched / f"f{i}") for i in range(1000)]
    wait_for(lambda: forwarder(daemon)["lag"] == 0 and forwarder(daemon)["last_acked_seq"]
             == seqs[-1], 10.0, "lag 0 and the last seq acknowledged")


def test_a_setup_larger_than_the_socket_buffer_reaches_the_forwarder(
        start_daemon: Callable[..., Daemon], watched: Path, nats: NatsServer,
        workdir: str) -> None:
    # The forwarder's setup names every watch it forwards: 2500 long names make it about
    # 300 KB, more than a socketpair's buffer takes at once (wmem_default, about 200 KB).
    quiet = Path(workdir) / "quiet"
    quiet.mkdir()
    others = "".join(watch(f"w{i:04d}-" + "x" * 114, quiet) for i in range(2500))
    daemon = start_daemon(config(watches=watch("uploads", watched, events=["create"])
                                 + others) + forward(nats.url))
    wait_connected(daemon, 60.0)
    burst(watched, 3)
    wait_for(lambda: forwarder(daemon)["last_acked_seq"] == 3, 30.0, "3 events acknowledged")
    uploads = [p["path"] for s, p, _ in stream_messages(nats.url) if s.endswith(".uploads")]
    assert uploads == [str(watched / f"f{i}") for i in range(3)]
    assert forwarder(daemon)["errors"] == 0


def test_the_server_killed_during_a_burst_loses_nothing_and_repeats_nothing(
        start: Callable[..., Daemon], nats: NatsServer, watched: Path) -> None:
    daemon = start()
    wait_connected(daemon)
    burst(watched, 600, "a")
    nats.kill()
    burst(watched, 600, "b")
    # Its status says it lost the connection as soon as it does, and counts the second burst
    # in its lag as those events reach it: later on a loaded machine (it runs niced), so the
    # lag is awaited, not read once at the disconnection (when it may still be 0).
    down = wait_for(lambda: (f := forwarder(daemon)) and not f["connected"] and
                    f["last_error"] and int(str(f["lag"])) > 0 and f, 30.0,
                    "the forwarder disconnected, with a lag")
    assert down["last_error"], down
    nats.start()
    wait_stream_count(nats.url, 1200)
    seqs = event_seqs(nats.url)
    assert len(seqs) == 1200
    assert seqs == sorted(set(seqs))
    wait_for(lambda: forwarder(daemon)["lag"] == 0, 10.0, "lag 0")
    assert "forward central" in daemon.log_text()


def test_the_daemon_killed_and_restarted_with_state_resumes(
        start: Callable[..., Daemon], nats: NatsServer, watched: Path, workdir: str) -> None:
    state = Path(workdir) / "state"
    position = state / "forward" / (b"central".hex() + ".json")
    daemon = start(f'state_directory = "{state}"')
    wait_connected(daemon)
    burst(watched, 600, "a")
    wait_for(position.exists, 10.0, "the position recorded")
    burst(watched, 600, "b")
    assert daemon.proc is not None
    os.killpg(daemon.proc.pid, signal.SIGKILL)  # the daemon and its children, as a crash would
    daemon.proc.wait()
    daemon.log.close()
    daemon = start(f'state_directory = "{state}"')
    wait_connected(daemon)
    burst(watched, 300, "c")
    every = {str(watched / f"c{i}") for i in range(300)}
    wait_for(lambda: every <= {p.get("path") for s, p, _ in stream_messages(nats.url)}, 30.0,
             "the last burst forwarded", interval=0.2)
    msgs = [(s, p) for s, p, _ in stream_messages(nats.url)]
    events = [p for s, p in msgs if not s.endswith("._notice")]
    # Every seq once, in order; every file there: from the journal, or (what the watcher
    # had not read when it was killed) from the start-up comparison, as synthetic events.
    # (That comparison may report a file the journal had as well: a second event, with
    # a seq of its own; see configuration.md, "What a crash can lose".)
    seqs = [p["seq"] for p in events]
    assert seqs == sorted(set(seqs))
    assert {p["path"] for p in events} == {str(watched / f"{x}{i}") for x, n in
                                           (("a", 600), ("b", 600), ("c", 300))
                                           for i in range(n)}
    notices = [p for s, p in msgs if s.endswith("._notice")]
    assert any(n["type"] == "overflow" and n["reason"] == "daemon_restart" for n in notices)


def test_a_position_the_daemon_no_longer_holds_is_a_forward_gap(
        start: Callable[..., Daemon], nats: NatsServer, watched: Path) -> None:
    daemon = start("replay_buffer = 100")
    wait_connected(daemon)
    nats.kill()
    wait_for(lambda: not forwarder(daemon)["connected"], 10.0, "the forwarder disconnected")
    burst(watched, 300)
    nats.start()
    subject = f"watchd.{HOST.replace('.', '%2E')}.uploads._notice"

    def gap() -> bool:
        return any(p.get("reason") == "forward_gap" for _, p, _ in
                   stream_messages(nats.url, subject=subject))
    wait_for(gap, 20.0, "a forward_gap notice", interval=0.2)
    # (Other notices may come too on a loaded machine: kernel_queue overflows, resyncs.)
    (notice,) = [p for _, p, _ in stream_messages(nats.url, subject=subject)
                 if p.get("reason") == "forward_gap"]
    assert notice["type"] == "overflow" and notice["watch"] == "uploads"
    assert notice["resync"] is False
    # On from the oldest event the daemon held.
    wait_for(lambda: len(event_seqs(nats.url)) >= 100, 10.0, "the events still held",
             interval=0.2)
    assert event_seqs(nats.url)[-1] == daemon.status()["seq"]


def test_an_unreachable_url_is_retried_until_the_server_comes(
        start_daemon: Callable[..., Daemon], watched: Path, workdir: str) -> None:
    server = NatsServer(workdir)  # not started yet
    daemon = start_daemon(config(watches=watch("uploads", watched)) + forward(server.url))
    first = wait_for(lambda: (f := forwarder(daemon))["last_error"] and f, 20.0, "an error")
    assert "cannot reach the NATS server" in first["last_error"], first
    assert not first["connected"] and first["server"] is None
    daemon.wait_log("forward central: cannot reach the NATS server")
    pid_before = daemon.status()["pid"]
    # What happens meanwhile (once the forwarder subscribed: it starts from its start) is
    # counted as lag, and forwarded once the server is there.
    wait_for(lambda: daemon.status()["subscriptions"] == 1, 10.0, "the forwarder subscribed")
    burst(watched, 5)
    seq = wait_for(lambda: (s := daemon.status()["seq"]) >= 10 and s, 10.0, "10 events")
    wait_for(lambda: forwarder(daemon)["lag"] == seq, 10.0, f"lag {seq}")
    with _started(server):
        wait_connected(daemon, 30.0)
        (watched / "x").write_bytes(b"")
        wait_stream_count(server.url, seq + 2)
        assert event_seqs(server.url) == list(range(1, seq + 3))
        wait_for(lambda: forwarder(daemon)["lag"] == 0, 10.0, "lag 0")
    assert daemon.status()["pid"] == pid_before


@contextlib.contextmanager
def _started(server: NatsServer) -> Iterator[NatsServer]:
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_bad_credentials_are_reported_and_retried(start_daemon: Callable[..., Daemon],
                                                  watched: Path, workdir: str) -> None:
    with nats_server(workdir, extra=("--user", "fwd", "--pass", "right")) as server:
        text = config(watches=watch("uploads", watched))
        daemon = start_daemon(text + forward(server.url, user="fwd", password="wrong"))
        status = wait_for(lambda: (f := forwarder(daemon))["errors"] >= 2 and f, 20.0,
                          "two failed attempts")
        assert "authorization" in status["last_error"].lower(), status
        assert not status["connected"]
        daemon.wait_log("the NATS server refused the credentials")
        daemon.reload(text + forward(server.url, user="fwd", password="right"))
        wait_connected(daemon)
        assert forwarder(daemon)["last_error"] is None


def test_the_password_of_a_url_is_never_shown(start_daemon: Callable[..., Daemon],
                                              watched: Path, workdir: str) -> None:
    with nats_server(workdir, extra=("--user", "fwd", "--pass", "s3cret")) as server:
        url = f"nats://fwd:s3cret@127.0.0.1:{server.port}"
        daemon = start_daemon(config(watches=watch("uploads", watched)) + forward(url))
        assert wait_connected(daemon)["server"] == server.url
        daemon.wait_log(f"connected to {server.url}")
        server.stop()
        lost = wait_for(lambda: (f := forwarder(daemon))["last_error"] and f, 20.0, "an error")
        assert "s3cret" not in str(lost)
        assert "s3cret" not in daemon.log_text()


def test_an_unknown_stream_is_reported_and_retried(start_daemon: Callable[..., Daemon],
                                                   watched: Path, nats: NatsServer) -> None:
    daemon = start_daemon(config(watches=watch("uploads", watched))
                          + forward(nats.url, stream="ELSEWHERE", create_stream=False))
    status = wait_for(lambda: (f := forwarder(daemon))["last_error"] and f, 20.0, "an error")
    assert "stream 'ELSEWHERE' not found" in status["last_error"], status
    daemon.wait_log("stream 'ELSEWHERE' not found on the server")
    add_stream(nats.url, "ELSEWHERE", ["watchd.*.*", "watchd.*.*._notice"])
    wait_connected(daemon, 30.0)
    (watched / "x").write_bytes(b"")
    wait_stream_count(nats.url, 1, stream="ELSEWHERE")


def test_a_forwarder_process_killed_is_restarted_and_resumes(
        start: Callable[..., Daemon], nats: NatsServer, watched: Path) -> None:
    from tests.forward.test_forward_status import forward_pids

    daemon = start()  # no state directory: the daemon tells the new process where it stood
    wait_connected(daemon)
    (pid,) = wait_for(lambda: forward_pids(daemon), 10.0, "the forwarder process")
    burst(watched, 400, "a")
    wait_for(lambda: (forwarder(daemon)["last_acked_seq"] or 0) > 0, 10.0, "an acknowledgement")
    os.kill(pid, signal.SIGKILL)
    burst(watched, 400, "b")
    wait_for(lambda: (p := forward_pids(daemon)) and p != {pid}, 10.0, "a new process")
    wait_stream_count(nats.url, 800)
    seqs = event_seqs(nats.url)
    assert len(seqs) == 800 and seqs == sorted(set(seqs))
    daemon.wait_log(f"forward central: process {pid} was killed by signal 9; restarting it")


def test_the_events_in_flight_at_a_disconnection_stay_in_the_lag(
        start: Callable[..., Daemon], nats: NatsServer, watched: Path) -> None:
    daemon = start()
    wait_connected(daemon)
    # A stopped server takes the messages into its socket and never acknowledges them. (On a
    # loaded machine the forwarder may give the connection up, for the acknowledgements not
    # coming within 10 s, before the lag is read: the lag is the same then.)
    nats.pause()
    try:
        burst(watched, 50)
        wait_for(lambda: forwarder(daemon)["lag"] == 50, 30.0, "50 events in flight")
    finally:
        nats.kill()  # (a stopped process is killed all the same)
    down = wait_for(lambda: (f := forwarder(daemon)) and not f["connected"] and f, 20.0,
                    "the forwarder disconnected")
    # Not acknowledged, so still to be forwarded: they are published again from the position.
    assert down["lag"] == 50, down
    nats.start()
    wait_stream_count(nats.url, 50)
    wait_for(lambda: forwarder(daemon)["lag"] == 0, 20.0, "lag 0")
    assert event_seqs(nats.url) == list(range(1, 51))


def test_create_stream_adds_our_subjects_to_a_stream_that_lacks_them(
        start: Callable[..., Daemon], nats: NatsServer, watched: Path) -> None:
    add_stream(nats.url, "WATCHD", ["watchd.*.*", "audit.>"])  # not the notices' subject
    daemon = start()
    wait_connected(daemon)
    # Ours added, the others' kept, in their order.
    assert stream_subjects(nats.url) == ["watchd.*.*", "audit.>", "watchd.*.*._notice"]
    assert "stream WATCHD now captures watchd.*.*._notice too" in daemon.log_text()
    (watched / "x").write_bytes(b"")
    wait_stream_count(nats.url, 1)


def test_without_create_stream_a_stream_is_left_as_it_is(
        start: Callable[..., Daemon], nats: NatsServer, watched: Path) -> None:
    add_stream(nats.url, "WATCHD", ["watchd.*.*"])  # events, not notices
    daemon = start(create_stream=False)
    refused = wait_for(lambda: (f := forwarder(daemon))["errors"] >= 2 and f, 20.0,
                       "two refused attempts")
    assert refused["last_error"] == ("stream 'WATCHD' does not capture watchd.*.*._notice; "
                                     "add it to its subjects or set create_stream = true")
    assert not refused["connected"]
    assert stream_subjects(nats.url) == ["watchd.*.*"]
    update_stream(nats.url, "WATCHD", ["watchd.>"])  # captures both
    wait_connected(daemon, 30.0)
    (watched / "x").write_bytes(b"")
    wait_stream_count(nats.url, 1)
    assert stream_subjects(nats.url) == ["watchd.>"]


def test_a_server_that_refuses_every_publish_is_retried_ever_more_slowly(
        start_daemon: Callable[..., Daemon], watched: Path, workdir: str) -> None:
    # The user may use JetStream's API and its inbox, but not publish our subjects: the
    # server answers each publish with -ERR 'Permissions Violation ...'.
    conf = os.path.join(workdir, "perms.conf")
    with open(conf, "w") as f:
        f.write('authorization { users = [ { user: fwd, password: pw, permissions: {\n'
                '  publish: { allow: ["$JS.API.>", "_INBOX.>"] },\n'
                '  subscribe: { allow: ["_INBOX.>"] } } } ] }\n')
    with nats_server(workdir, extra=("-c", conf)) as server:
        daemon = start_daemon(config(watches=watch("uploads", watched, events=["create"]))
                              + forward(server.url, user="fwd", password="pw"))
        wait_connected(daemon)
        (watched / "x").write_bytes(b"")  # published again at each connection
        first = wait_for(lambda: (f := forwarder(daemon))["errors"] >= 1 and f, 20.0,
                         "a refused publish")
        assert "Permissions Violation" in first["last_error"], first
        # Backoff after each connection: 0.5, 1, 2 s; every 0.5 s would make 7 or more.
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            time.sleep(0.1)
        assert forwarder(daemon)["errors"] - first["errors"] <= 4
        daemon.wait_log("connecting again in 2.0 s")


def test_a_credentials_file_authenticates_the_forwarder(
        start_daemon: Callable[..., Daemon], watched: Path, workdir: str) -> None:
    # A server that trusts an operator: only users of its accounts' JWTs get in.
    extra, creds = operator_mode(workdir)
    os.mkdir(other := os.path.join(workdir, "other"))
    _, stranger = operator_mode(other)  # a user of an operator the server does not trust
    with nats_server(workdir, extra=extra) as server:
        text = config(watches=watch("uploads", watched, events=["create"]))
        daemon = start_daemon(text + forward(server.url, credentials=stranger))
        refused = wait_for(lambda: (f := forwarder(daemon))["last_error"] and f, 20.0,
                           "an error")
        assert "the NATS server refused the credentials" in refused["last_error"], refused
        daemon.reload(text + forward(server.url, credentials=creds))
        wait_connected(daemon)
        burst(watched, 20)
        wait_stream_count(server.url, 20, credentials=creds)
        messages = stream_messages(server.url, credentials=creds)
        assert [p["seq"] for _, p, _ in messages] == list(range(1, 21))
        assert forwarder(daemon)["last_error"] is None


def test_an_error_acknowledgement_ends_the_connection_and_the_events_are_published_again(
        start: Callable[..., Daemon], nats: NatsServer, watched: Path) -> None:
    from nats.js.api import DiscardPolicy

    subjects = ["watchd.*.*", "watchd.*.*._notice"]
    add_stream(nats.url, "WATCHD", subjects, max_msgs=5, discard=DiscardPolicy.NEW)
    daemon = start(create_stream=False)
    wait_connected(daemon)
    burst(watched, 10)
    refused = wait_for(lambda: (f := forwarder(daemon))["last_error"] and f, 20.0, "an error")
    assert refused["last_error"] == "JetStream refused a message: maximum messages exceeded"
    assert refused["last_acked_seq"] == 5, refused
    daemon.wait_log("forward central: JetStream refused a message: maximum messages exceeded")
    update_stream(nats.url, "WATCHD", subjects)  # no limit
    wait_stream_count(nats.url, 10)
    assert event_seqs(nats.url) == list(range(1, 11))
    done = wait_for(lambda: (f := forwarder(daemon))["lag"] == 0 and f["last_acked_seq"] == 10
                    and f, 20.0, "every event acknowledged")
    assert done["connected"] and done["last_error"] is None, done


def test_a_subject_no_stream_captures_is_reported(
        start: Callable[..., Daemon], nats: NatsServer, watched: Path) -> None:
    add_stream(nats.url, "WATCHD", ["watchd.*.*", "watchd.*.*._notice"])
    daemon = start(create_stream=False)
    wait_connected(daemon)
    (watched / "x").write_bytes(b"")
    wait_stream_count(nats.url, 1)
    update_stream(nats.url, "WATCHD", ["watchd.*.*"])  # changed behind the forwarder's back
    watched.rename(watched.with_name("gone"))  # a watch_lost notice, to watchd.*.*._notice
    refused = wait_for(lambda: (f := forwarder(daemon))["last_error"] and f, 20.0, "an error")
    assert refused["last_error"] == (
        "no stream captures the subject (stream 'WATCHD' must capture watchd.*.* and "
        "watchd.*.*._notice)"), refused
