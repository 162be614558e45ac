"""The configuration file: defaults, validation messages, reload diffs, the shipped examples."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from watchd.config import (
    Config,
    DaemonConfig,
    WatchConfig,
    diff_config,
    load_config,
    parse_config,
)
from watchd.config.model import WATCH_KEYS
from watchd.errors import ConfigError, WatchdError
from watchd.events import ALL_KINDS, DEFAULT_KINDS, Kind

FILE = "/etc/watchd/watchd.toml"
ROOT = Path(__file__).resolve().parent.parent
NO_SUCH_USER = "watchd-no-such-user"
NO_SUCH_GROUP = "watchd-no-such-group"


def refused(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, FILE)
    return info.value


def watch_toml(extra: str = "", name: str = "up", path: str = "/srv/up") -> str:
    return f'[[watch]]\nname = "{name}"\npath = "{path}"\n{extra}\n'


def only_watch(extra: str) -> WatchConfig:
    (watch,) = parse_config(watch_toml(extra), FILE).watches
    return watch


# --- defaults and values ------------------------------------------------------------------------


def test_an_empty_file_gives_the_defaults() -> None:
    config = parse_config("", FILE)
    assert config == Config(path=FILE, daemon=DaemonConfig(), watches=())
    d = config.daemon
    assert d.socket == "/run/watchd/watchd.sock"
    assert d.socket_mode == 0o660
    assert d.socket_group is None
    assert d.log_level == "info"
    assert (d.max_clients, d.max_subscriptions, d.client_queue) == (1024, 64, 10000)
    assert (d.replay_buffer, d.max_line_bytes, d.watcher_timeout) == (65536, 65536, 10.0)


def test_a_minimal_watch_gets_the_defaults() -> None:
    watch = only_watch("")
    assert watch == WatchConfig(name="up", path="/srv/up")
    assert watch.recursive is True
    assert watch.events == DEFAULT_KINDS
    assert Kind.ACCESS not in watch.events
    assert Kind.OPEN not in watch.events
    assert Kind.CLOSE_NOWRITE not in watch.events
    assert (watch.include, watch.exclude) == ((), ())
    assert (watch.allow_users, watch.allow_groups) == (None, None)


def test_every_key_is_read() -> None:
    root_group = grp.getgrgid(0).gr_name
    text = f"""
[daemon]
socket = "/run/w//x.sock"
socket_mode = "0600"
socket_group = "{root_group}"
log_level = "debug"
max_clients = 5
max_subscriptions = 6
client_queue = 7
replay_buffer = 8
max_line_bytes = 9
max_batch = 10
watcher_timeout = 2.5

[[watch]]
name = "a.b-c_1"
path = "/srv/up/"
recursive = false
events = ["create", "delete"]
include = ["*.csv"]
exclude = [".*", "*.swp"]
allow_users = ["root", 1234, "55"]
allow_groups = ["{root_group}", 99]

[[watch]]
name = "etc"
path = "/etc"
"""
    config = parse_config(text, FILE)
    assert config.daemon == DaemonConfig(
        socket="/run/w/x.sock",
        socket_mode=0o600,
        socket_group=0,
        log_level="debug",
        max_clients=5,
        max_subscriptions=6,
        client_queue=7,
        replay_buffer=8,
        max_line_bytes=9,
        max_batch=10,
        watcher_timeout=2.5,
    )
    assert config.watches[0] == WatchConfig(
        name="a.b-c_1",
        path="/srv/up",
        recursive=False,
        events=frozenset({Kind.CREATE, Kind.DELETE}),
        include=("*.csv",),
        exclude=(".*", "*.swp"),
        allow_users=frozenset({0, 1234, 55}),
        allow_groups=frozenset({0, 99}),
    )
    assert config.watch("etc") == WatchConfig(name="etc", path="/etc")
    assert config.watch("nope") is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/srv/up/", "/srv/up"),
        ("/srv//up", "/srv/up"),
        ("/srv/./up/../down", "/srv/down"),
        ("//srv", "/srv"),
        ("///", "/"),
        ("/", "/"),
    ],
)
def test_watch_paths_are_normalised(given: str, expected: str) -> None:
    assert parse_config(watch_toml(path=given), FILE).watches[0].path == expected


def test_a_watch_path_that_does_not_exist_is_fine(tmp_path: Path) -> None:
    missing = tmp_path / "not" / "yet"
    assert parse_config(watch_toml(path=str(missing)), FILE).watches[0].path == str(missing)


@pytest.mark.parametrize("events", ['"all"', '["all"]', '["create", "all"]'])
def test_all_means_every_kind(events: str) -> None:
    assert only_watch(f"events = {events}").events == ALL_KINDS


@pytest.mark.parametrize(("mode", "value"), [('"0660"', 0o660), ('"644"', 0o644), ('"0"', 0)])
def test_socket_mode_octal_strings(mode: str, value: int) -> None:
    assert parse_config(f"[daemon]\nsocket_mode = {mode}", FILE).daemon.socket_mode == value


def test_watcher_timeout_accepts_an_integer() -> None:
    timeout = parse_config("[daemon]\nwatcher_timeout = 3", FILE).daemon.watcher_timeout
    assert timeout == 3.0
    assert isinstance(timeout, float)


def test_numeric_socket_group_is_taken_as_a_gid() -> None:
    assert parse_config("[daemon]\nsocket_group = 4242", FILE).daemon.socket_group == 4242
    assert parse_config('[daemon]\nsocket_group = "4242"', FILE).daemon.socket_group == 4242


def test_users_and_groups_are_resolved_to_ids() -> None:
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid)
    watch = only_watch(f'allow_users = ["nobody"]\nallow_groups = ["{group.gr_name}"]')
    assert watch.allow_users == frozenset({nobody.pw_uid})
    assert watch.allow_groups == frozenset({group.gr_gid})


def test_an_empty_allow_list_leaves_only_root() -> None:
    watch = only_watch("allow_users = []")
    assert watch.allow_users == frozenset()
    assert watch.may_see(0, 0, ())
    assert not watch.may_see(1000, 1000, (1000,))


# --- may_see ------------------------------------------------------------------------------------


def test_without_allow_lists_everyone_may_see() -> None:
    assert WatchConfig("w", "/w").may_see(1000, 1000, ())


@pytest.mark.parametrize(
    ("uid", "gid", "groups", "allowed"),
    [
        (1000, 1000, (), True),  # a listed user
        (1001, 2000, (), True),  # a listed primary group
        (1001, 1001, (5, 2000), True),  # a listed supplementary group
        (1001, 1001, (5, 6), False),  # none of them
        (0, 0, (), True),  # root sees everything
    ],
)
def test_may_see(uid: int, gid: int, groups: tuple[int, ...], allowed: bool) -> None:
    watch = WatchConfig("w", "/w", allow_users=frozenset({1000}), allow_groups=frozenset({2000}))
    assert watch.may_see(uid, gid, groups) is allowed


def test_may_see_with_users_only_or_groups_only() -> None:
    users_only = WatchConfig("w", "/w", allow_users=frozenset({1000}))
    assert users_only.may_see(1000, 5, ())
    assert not users_only.may_see(1001, 5, (5,))
    groups_only = WatchConfig("w", "/w", allow_groups=frozenset({5}))
    assert groups_only.may_see(1001, 7, iter([5]))
    assert not groups_only.may_see(1000, 7, iter([6]))


# --- validation messages --------------------------------------------------------------------------


def test_the_message_names_file_key_and_problem() -> None:
    err = refused(watch_toml('events = ["create", "crete"]', name="uploads"))
    assert isinstance(err, WatchdError)
    assert err.file == FILE
    assert err.key == "watch[0].events[1]"
    assert str(err) == (
        f"{FILE}: watch[0].events[1]: unknown event kind 'crete'; expected one of access, modify,"
        " attrib, close_write, close_nowrite, open, moved_from, moved_to, create, delete,"
        " delete_self, move_self, or \"all\" (in watch 'uploads')"
    )


def test_indexes_are_zero_based_and_count_every_watch() -> None:
    text = watch_toml(name="a") + watch_toml(name="b") + watch_toml('events = ["x"]', name="c")
    err = refused(text)
    assert err.key == "watch[2].events[0]"
    assert err.problem.endswith("(in watch 'c')")


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        # the document
        ("color = 1", "color", "unknown key; the keys allowed here are daemon, forward, watch"),
        ("deamon = {}", "deamon", "did you mean 'daemon'?"),
        ("daemon = 3", "daemon", "expected a table ([daemon]), got an integer (3)"),
        ("[watch]\nname='a'", "watch", "expected an array of tables ([[watch]]), got a table"),
        ("watch = [1]", "watch", "expected an array of tables ([[watch]]), got an array"),
        # [daemon]
        (
            "[daemon]\nsockt = 'x'",
            "daemon.sockt",
            "unknown key; the keys allowed here are client_queue, journal_fsync_interval,"
            " journal_max_bytes, log_level, max_batch, max_clients,"
            " max_clients_per_user, max_line_bytes, max_paths, max_patterns,"
            " max_subscriptions, metrics, replay_buffer, request_timeout, socket, socket_group,"
            " socket_mode, state_directory, watcher_timeout; did you mean 'socket'?",
        ),
        (
            "[daemon]\nstate_directory = 'state'",
            "daemon.state_directory",
            "must be an absolute path, got 'state'",
        ),
        (
            "[daemon]\nstate_directory = 3",
            "daemon.state_directory",
            "expected a string, got an integer (3)",
        ),
        (
            "[daemon]\njournal_max_bytes = 1000",
            "daemon.journal_max_bytes",
            "1000 bytes is less than the least allowed (65536); choose a larger journal",
        ),
        (
            "[daemon]\njournal_fsync_interval = -1",
            "daemon.journal_fsync_interval",
            "must be a finite number greater than 0, got -1",
        ),
        ("[daemon]\nsocket = 5", "daemon.socket", "expected a string, got an integer (5)"),
        ("[daemon]\nsocket = 'w.sock'", "daemon.socket", "must be an absolute path, got 'w.sock'"),
        (
            f"[daemon]\nsocket = '/{'s' * 120}'",
            "daemon.socket",
            "path too long for a Unix socket (121 bytes, at most 107); choose a shorter one",
        ),
        (
            "[daemon]\nsocket_mode = 660",
            "daemon.socket_mode",
            'expected an octal string such as "0660", got an integer (660); write it quoted,'
            ' as in "0660"',
        ),
        (
            "[daemon]\nsocket_mode = '0689'",
            "daemon.socket_mode",
            "expected an octal string such as \"0660\", got '0689'",
        ),
        (
            "[daemon]\nsocket_mode = 'rw-rw----'",
            "daemon.socket_mode",
            "expected an octal string such as \"0660\", got 'rw-rw----'",
        ),
        (
            "[daemon]\nsocket_mode = '4755'",
            "daemon.socket_mode",
            "out of range: 4755 (permission bits go up to 0777)",
        ),
        (
            f"[daemon]\nsocket_group = '{NO_SUCH_GROUP}'",
            "daemon.socket_group",
            f"unknown group '{NO_SUCH_GROUP}': no such group on this system",
        ),
        (
            "[daemon]\nsocket_group = -1",
            "daemon.socket_group",
            "group id out of range: -1",
        ),
        (
            "[daemon]\nsocket_group = true",
            "daemon.socket_group",
            "expected a group name or number, got a boolean (true)",
        ),
        (
            "[daemon]\nlog_level = 'verbose'",
            "daemon.log_level",
            "unknown log level 'verbose'; expected one of debug, info, warning, error",
        ),
        (
            "[daemon]\nlog_level = 'INFO'",
            "daemon.log_level",
            "unknown log level 'INFO'",
        ),
        (
            "[daemon]\nmax_clients = true",
            "daemon.max_clients",
            "expected a positive integer, got a boolean (true)",
        ),
        (
            "[daemon]\nmax_subscriptions = 0",
            "daemon.max_subscriptions",
            "must be greater than 0, got 0",
        ),
        ("[daemon]\nclient_queue = -5", "daemon.client_queue", "must be greater than 0, got -5"),
        ("[daemon]\nmax_batch = 0", "daemon.max_batch", "must be greater than 0, got 0"),
        (
            "[daemon]\nmax_batch = true",
            "daemon.max_batch",
            "expected a positive integer, got a boolean (true)",
        ),
        (
            "[daemon]\nmax_batch = 4097",
            "daemon.max_batch",
            "4097 events is more than the most allowed (4096); larger frames save a client",
        ),
        (
            "[daemon]\nreplay_buffer = 1.5",
            "daemon.replay_buffer",
            "expected a positive integer, got a float (1.5)",
        ),
        (
            "[daemon]\nreplay_buffer = 1000000000000",
            "daemon.replay_buffer",
            "1000000000000 events is more than the most allowed (4194304); choose a smaller",
        ),
        (
            "[daemon]\nmax_line_bytes = '64k'",
            "daemon.max_line_bytes",
            "expected a positive integer, got a string ('64k')",
        ),
        (
            "[daemon]\nwatcher_timeout = 0",
            "daemon.watcher_timeout",
            "must be a finite number greater than 0, got 0",
        ),
        (
            "[daemon]\nwatcher_timeout = inf",
            "daemon.watcher_timeout",
            "must be a finite number greater than 0, got inf",
        ),
        (
            "[daemon]\nwatcher_timeout = false",
            "daemon.watcher_timeout",
            "expected a number of seconds, got a boolean (false)",
        ),
        # [[watch]]: name and path
        ("[[watch]]\npath = '/x'", "watch[0].name", "missing; every watch needs a name"),
        ("[[watch]]\nname = 3", "watch[0].name", "expected a string, got an integer (3)"),
        (
            "[[watch]]\nname = 'my uploads'",
            "watch[0].name",
            "'my uploads' is not a valid name: use letters, digits, '_', '.' and '-' only",
        ),
        ("[[watch]]\nname = ''", "watch[0].name", "'' is not a valid name"),
        (
            "[[watch]]\nname = 'a'",
            "watch[0].path",
            "missing; every watch needs an absolute path (in watch 'a')",
        ),
        (
            "[[watch]]\nname = 'a'\npath = 'src'",
            "watch[0].path",
            "must be an absolute path, got 'src' (in watch 'a')",
        ),
        (
            "[[watch]]\nname = 'a'\npath = '~/src'",
            "watch[0].path",
            "must be an absolute path, got '~/src'",
        ),
        (
            "[[watch]]\nname = 'a'\npath = \"/a\\u0000b\"",
            "watch[0].path",
            "a path cannot contain a NUL character",
        ),
        (
            "[[watch]]\nname = 'a'\npath = ['/a']",
            "watch[0].path",
            "expected a string, got an array (in watch 'a')",
        ),
        (
            watch_toml(name="a") + watch_toml(name="b") + watch_toml(name="a"),
            "watch[2].name",
            "duplicate name 'a', already used by watch[0]; every watch needs its own name",
        ),
        # [[watch]]: the other keys
        (
            watch_toml("recurse = false", name="a"),
            "watch[0].recurse",
            "unknown key; the keys allowed here are allow_groups, allow_users, events, exclude,"
            " include, max_directories, name, path, recursive, resync; did you mean"
            " 'recursive'? (in watch 'a')",
        ),
        (
            watch_toml("resync = 'no'"),
            "watch[0].resync",
            "expected true or false, got a string ('no')",
        ),
        (
            watch_toml("recursive = 'yes'"),
            "watch[0].recursive",
            "expected true or false, got a string ('yes')",
        ),
        (watch_toml("recursive = 1"), "watch[0].recursive", "expected true or false"),
        (
            watch_toml("events = []"),
            "watch[0].events",
            'must not be empty; leave it out for the default kinds, or use "all"',
        ),
        (
            watch_toml("events = 'create'"),
            "watch[0].events",
            "expected an array of event kinds (or the string \"all\"), got a string ('create')",
        ),
        (watch_toml("events = ['create', 5]"), "watch[0].events[1]", "expected a string"),
        (
            watch_toml("events = ['CREATE']"),
            "watch[0].events[0]",
            "unknown event kind 'CREATE'",
        ),
        (
            watch_toml("include = '*.csv'"),
            "watch[0].include",
            "expected an array of fnmatch patterns, got a string ('*.csv')",
        ),
        (
            watch_toml("exclude = ['.*', 3]"),
            "watch[0].exclude[1]",
            "expected a string, got an integer (3)",
        ),
        (watch_toml("include = ['']"), "watch[0].include[0]", "an empty pattern matches nothing"),
        (
            watch_toml("exclude = ['build/*']"),
            "watch[0].exclude[0]",
            "patterns match a base name, which never contains '/'; got 'build/*'",
        ),
        (
            watch_toml("allow_users = 'root'"),
            "watch[0].allow_users",
            "expected an array of user names or ids, got a string ('root')",
        ),
        (
            watch_toml(f"allow_users = ['root', '{NO_SUCH_USER}']"),
            "watch[0].allow_users[1]",
            f"unknown user '{NO_SUCH_USER}': no such user on this system (in watch 'up')",
        ),
        (
            watch_toml(f"allow_groups = ['{NO_SUCH_GROUP}']"),
            "watch[0].allow_groups[0]",
            f"unknown group '{NO_SUCH_GROUP}': no such group on this system",
        ),
        (
            watch_toml("allow_users = [1.0]"),
            "watch[0].allow_users[0]",
            "expected a user name or number, got a float (1.0)",
        ),
        (
            watch_toml("allow_groups = [4294967295]"),
            "watch[0].allow_groups[0]",
            "group id out of range: 4294967295",
        ),
        (
            watch_toml("include = [1979-05-27]"),
            "watch[0].include[0]",
            "expected a string, got a date/time",
        ),
    ],
)
def test_validation_messages(text: str, key: str, problem: str) -> None:
    err = refused(text)
    assert err.key == key
    assert problem in err.problem
    assert str(err) == f"{FILE}: {key}: {err.problem}"


def test_toml_syntax_errors_give_line_and_column() -> None:
    err = refused('[daemon]\nsocket = "/x"\nlog_level = info\n')
    assert err.key == ""
    assert err.problem.startswith("invalid TOML: ")
    assert "(at line 3, column 16)" in err.problem
    assert str(err) == f"{FILE}: {err.problem}"


def test_a_key_given_twice_is_a_toml_error() -> None:
    err = refused("[daemon]\nmax_clients = 1\nmax_clients = 2\n")
    assert err.problem.startswith("invalid TOML: ")


def test_deeply_nested_values_are_refused_cleanly() -> None:
    err = refused("x = " + "[" * 5000 + "]" * 5000)
    assert err.key == ""
    assert err.problem.startswith("invalid TOML")


# --- loading files ------------------------------------------------------------------------------


def test_load_config_reads_the_file_and_records_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "w.toml").write_text(watch_toml())
    monkeypatch.chdir(tmp_path)
    config = load_config("w.toml")
    assert config.path == str(tmp_path / "w.toml")
    assert config.watches == (WatchConfig("up", "/srv/up"),)
    assert load_config(tmp_path / "w.toml") == config


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "none.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: cannot read the configuration file: No such file or directory"
    )


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot read the configuration file: Is a directory"


def test_a_path_that_cannot_be_opened(tmp_path: Path) -> None:
    # A symlink loop: an open() failure that root gets too, unlike a permission error.
    loop = tmp_path / "loop.toml"
    loop.symlink_to(loop)
    with pytest.raises(ConfigError) as info:
        load_config(loop)
    assert str(info.value) == (
        f"{loop}: cannot read the configuration file: Too many levels of symbolic links"
    )


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[daemon]\nsocket = "/caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == ""
    assert info.value.problem == "not UTF-8 text: byte 0xe9 on line 2; save it as UTF-8"


# --- reload -------------------------------------------------------------------------------------


def test_identical_configs_differ_in_nothing() -> None:
    text = watch_toml(name="a") + watch_toml(name="b")
    old, new = parse_config(text, FILE), parse_config(text, FILE)
    diff = diff_config(old, new)
    assert diff.added == ()
    assert diff.removed == ()
    assert diff.changed == ()
    assert diff.restart_needed == ()
    assert old.daemon == new.daemon


def test_diff_finds_added_removed_and_changed_watches_by_name() -> None:
    old = parse_config(
        watch_toml(name="keep") + watch_toml(name="gone") + watch_toml(name="edit"), FILE
    )
    new = parse_config(
        watch_toml(name="new")
        + watch_toml(name="edit", path="/srv/other")
        + watch_toml(name="keep"),
        FILE,
    )
    diff = diff_config(old, new)
    assert [w.name for w in diff.added] == ["new"]
    assert [w.name for w in diff.removed] == ["gone"]
    assert diff.changed == ((old.watch("edit"), new.watch("edit")),)
    assert old.daemon == new.daemon


@pytest.mark.parametrize(
    "extra",
    ["recursive = false", "events = 'all'", "include = ['*']", "allow_users = [0]"],
)
def test_any_watch_key_makes_a_change(extra: str) -> None:
    diff = diff_config(parse_config(watch_toml(), FILE), parse_config(watch_toml(extra), FILE))
    assert len(diff.changed) == 1


def test_daemon_keys_that_need_a_restart() -> None:
    old = parse_config("", FILE)
    new = parse_config(
        "[daemon]\nsocket = '/tmp/w.sock'\nsocket_mode = '0600'\nsocket_group = 0\n", FILE
    )
    diff = diff_config(old, new)
    assert diff.restart_needed == ("daemon.socket", "daemon.socket_mode", "daemon.socket_group")
    assert old.daemon != new.daemon


def test_daemon_keys_a_reload_applies() -> None:
    old = parse_config("", FILE)
    new = parse_config("[daemon]\nlog_level = 'debug'\nclient_queue = 5\n", FILE)
    diff = diff_config(old, new)
    assert diff.restart_needed == ()
    assert old.daemon != new.daemon


# --- the shipped files --------------------------------------------------------------------------


def test_the_system_example_loads(tmp_path: Path) -> None:
    text = (ROOT / "config" / "watchd.toml").read_text()
    # The example names the group "watchd", which this machine may not have.
    group = grp.getgrgid(os.getgid()).gr_name
    assert text.count('"watchd"') == 2
    path = tmp_path / "watchd.toml"
    path.write_text(text.replace('"watchd"', f'"{group}"'))
    config = load_config(path)
    assert config.daemon == DaemonConfig(socket_group=os.getgid(),
                                         state_directory="/var/lib/watchd")
    assert [w.name for w in config.watches] == ["uploads", "etc"]
    assert config.watch("etc") == WatchConfig(
        name="etc", path="/etc", exclude=("*~", ".#*", "*.swp")
    )


def test_the_system_example_mentions_every_key() -> None:
    text = (ROOT / "config" / "watchd.toml").read_text()
    keys = {line.split("=")[0].strip() for line in text.splitlines() if "=" in line[:30]}
    keys.discard("")
    daemon_keys = set(DaemonConfig.__dataclass_fields__)
    watch_keys = set(WATCH_KEYS)
    assert daemon_keys | watch_keys <= keys


def test_the_development_template_loads_once_rendered(tmp_path: Path) -> None:
    template = (ROOT / "config" / "dev.toml.in").read_text()
    root = str(tmp_path)
    path = tmp_path / "dev.toml"
    path.write_text(template.replace("@ROOT@", root))
    config = load_config(path)
    assert config.daemon == DaemonConfig(socket=f"{root}/.dev/watchd.sock", socket_mode=0o600,
                                         state_directory=f"{root}/.dev/state")
    assert config.watches == (WatchConfig(name="dev", path=f"{root}/.dev/watched"),)


# --- roots resolved at load ---------------------------------------------------------------------


def test_a_root_through_a_symlink_is_resolved_when_loaded(tmp_path: Path) -> None:
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    conf = tmp_path / "w.toml"
    conf.write_text(watch_toml(name="a", path=f"{tmp_path}/link/sub")
                    + watch_toml(name="b", path=f"{tmp_path}/real"))
    a, b = load_config(conf).watches
    assert (a.path, a.resolved, a.real_path) == (
        f"{tmp_path}/link/sub", f"{tmp_path}/real/sub", f"{tmp_path}/real/sub")
    assert (b.path, b.resolved, b.real_path) == (f"{tmp_path}/real", "", f"{tmp_path}/real")


@pytest.mark.parametrize("key", [k for k in WATCH_KEYS if k not in ("name", "path")])
def test_every_watch_key_is_validated(key: str) -> None:
    # A table is a valid value for no key: a key of WatchConfig the parser did not read would
    # crash here or be taken as given, instead of being refused by name.
    assert refused(watch_toml(f"{key} = {{}}")).key == f"watch[0].{key}"


def test_resolved_is_not_a_key_of_the_file() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        only_watch('resolved = "/elsewhere"')


def test_state_directory_default_is_systemds_then_none() -> None:
    default = parse_config("", FILE).daemon
    assert default.state_directory is None
    assert default.state_path({}) is None
    assert default.state_path({"STATE_DIRECTORY": "/var/lib/watchd:/other"}) == "/var/lib/watchd"
    assert default.state_path({"STATE_DIRECTORY": "relative"}) is None
    given = parse_config("[daemon]\nstate_directory = '/srv/w//state/'", FILE).daemon
    assert given.state_path({"STATE_DIRECTORY": "/var/lib/watchd"}) == "/srv/w/state"
    off = parse_config("[daemon]\nstate_directory = ''", FILE).daemon
    assert off.state_path({"STATE_DIRECTORY": "/var/lib/watchd"}) is None
    keys = parse_config("[daemon]\njournal_max_bytes = 1048576\njournal_fsync_interval = 0.25",
                        FILE).daemon
    assert (keys.journal_max_bytes, keys.journal_fsync_interval) == (1048576, 0.25)


def test_a_state_directory_inside_a_recursive_watch_is_refused() -> None:
    text = ("[daemon]\nstate_directory = '/srv/data/.state'\n"
            "[[watch]]\nname = 'data'\npath = '/srv/data'\n")
    err = refused(text)
    assert err.key == "daemon.state_directory"
    assert "inside the tree of watch 'data'" in err.problem
    # Beside the tree, or under a watch that is not recursive, it is fine.
    assert parse_config(text.replace("/srv/data/.state", "/srv/data-state"), FILE)
    assert parse_config(text + "recursive = false\n", FILE)
