"""Properties over generated input: the decoders and the config parser fail only with our errors."""

from __future__ import annotations

import json
import math
import os
import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watchd.config import Config, DaemonConfig, WatchConfig, parse_config
from watchd.errors import ConfigError
from watchd.events import Kind
from watchd.protocol import (
    EventEncoder,
    LineFramer,
    LineTooLong,
    ProtocolError,
    Request,
    Subscribe,
    decode_request,
    encode_request,
    event_prefix,
    normalise_path,
)

FEW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
request_keys = st.sampled_from(
    ["op", "id", "watch", "events", "paths", "glob", "since", "instance", "subscription", "x"]
)
request_ops = st.sampled_from(["ping", "status", "subscribe", "unsubscribe", "nope"])
request_like = st.builds(
    lambda op, rest: {"op": op, **rest},
    request_ops,
    st.dictionaries(request_keys.filter(lambda k: k != "op"), json_values, max_size=4),
)


def decodes_or_refuses(line: bytes) -> None:
    try:
        request = decode_request(line)
    except ProtocolError as e:
        json.loads(e.reply())  # the refusal itself is always a valid wire line
    else:
        assert isinstance(request, Request)


@FEW
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_are_refused(line: bytes) -> None:
    decodes_or_refuses(line)


@FEW
@given(json_values)
def test_any_json_decodes_or_is_refused(value: object) -> None:
    decodes_or_refuses(json.dumps(value).encode())


@FEW
@given(request_like)
def test_request_shaped_objects_decode_or_are_refused(obj: dict[str, object]) -> None:
    decodes_or_refuses(json.dumps(obj).encode())


absolute_paths = st.lists(
    st.text(st.characters(blacklist_characters="/\x00"), min_size=1, max_size=6), max_size=4
).map(lambda parts: "/" + "/".join(parts))
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=10)
subscribes = st.builds(
    Subscribe,
    id=json_scalars.filter(lambda v: not (isinstance(v, float) and not math.isfinite(v))),
    watch=st.none() | st.lists(names, min_size=1, max_size=3).map(tuple),
    events=st.none() | st.sets(st.sampled_from(list(Kind)), min_size=1).map(frozenset),
    paths=st.none()
    | st.lists(absolute_paths.map(normalise_path), min_size=1, max_size=3).map(tuple),
    glob=st.none() | st.lists(st.text(max_size=5), min_size=1, max_size=3).map(tuple),
    since=st.none() | st.integers(min_value=0),
    instance=st.none() | names,
)


@FEW
@given(subscribes)
def test_subscribe_round_trips(request: Subscribe) -> None:
    assert decode_request(encode_request(request).rstrip(b"\n")) == request


@FEW
@given(
    st.binary(min_size=1, max_size=30).map(lambda b: "/" + os.fsdecode(b.replace(b"\x00", b""))),
    st.none() | st.text(max_size=10),
    st.integers(0, 2**32 - 1),
)
def test_event_lines_are_valid_json_that_keeps_path_bytes(
    path: str, src: str | None, mask: int
) -> None:
    line = event_prefix("s1") + EventEncoder().tail(1, 1.5, "w", "create", path, mask, 0, src)
    obj = json.loads(line)
    assert os.fsencode(obj["path"]) == os.fsencode(path)
    assert obj.get("src_path") == src


# --- configuration ------------------------------------------------------------------------------


def check_config(text: str) -> None:
    try:
        config: Config | ConfigError = parse_config(text, "/t.toml")
    except ConfigError as e:
        config = e
    if isinstance(config, ConfigError):
        assert str(config).startswith("/t.toml: ")
    else:
        assert isinstance(config, Config)


@FEW
@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused(text: str) -> None:
    check_config(text)


toml_lines = st.sampled_from(
    [
        "[daemon]",
        "[[watch]]",
        "[watch]",
        'name = "w"',
        'name = "a b"',
        'path = "/srv"',
        'path = "rel"',
        "recursive = false",
        'events = ["create"]',
        'events = "all"',
        "events = []",
        'socket_mode = "0600"',
        "socket_mode = 600",
        "max_clients = 0",
        "max_clients = true",
        'include = ["*.c", 3]',
        'allow_users = ["root", 0]',
        "watcher_timeout = nan",
        "x = 1",
        "= =",
        "[",
    ]
)


@FEW
@given(st.lists(toml_lines, max_size=12))
def test_toml_ish_lines_parse_or_are_refused(lines: list[str]) -> None:
    check_config("\n".join(lines))


def toml_value(value: object) -> str:
    """A TOML rendering of a generated value (inline tables and arrays only)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, but TOML also wants DEL escaped."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


toml_text = st.text(st.characters(codec="utf-8"), max_size=12)
toml_scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | toml_text
    | st.sampled_from(["/srv/x", "0660", "all", "create", "root", "info", "*.csv"])
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(toml_text, inner, max_size=3),
    max_leaves=6,
)
daemon_keys = st.sampled_from([*DaemonConfig.__dataclass_fields__, "other"])
watch_keys = st.sampled_from([*WatchConfig.__dataclass_fields__, "other"])
documents = st.fixed_dictionaries(
    {},
    optional={
        "daemon": st.dictionaries(daemon_keys, toml_values, max_size=4),
        "watch": st.lists(st.dictionaries(watch_keys, toml_values, max_size=5), max_size=3),
        "other": toml_values,
    },
)


@FEW
@given(documents)
def test_structured_documents_parse_or_are_refused(doc: dict[str, object]) -> None:
    text = "\n".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in doc.items())
    tomllib.loads(text)  # the generator writes valid TOML, so only validation is exercised
    check_config(text)


# --- framing ------------------------------------------------------------------------------------

line_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").rstrip(b"\r"))


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@FEW
@given(st.lists(line_bytes, max_size=20), st.lists(st.integers(0, 10_000), max_size=30))
def test_framer_in_any_chunks_gives_the_lines(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    framer = LineFramer(40)
    got: list[bytes] = []
    for chunk in chunked(data, cuts):
        got += framer.feed(chunk)
    assert got == lines
    assert framer.buffered == 0


@FEW
@given(
    st.lists(line_bytes, max_size=20),
    st.lists(st.integers(0, 10_000), max_size=30),
    st.integers(0, 40),
)
def test_framer_stops_at_the_first_line_over_the_limit(
    lines: list[bytes], cuts: list[int], limit: int
) -> None:
    data = b"".join(line + b"\n" for line in lines)
    framer = LineFramer(limit)
    got: list[bytes] = []
    refused = False
    for chunk in chunked(data, cuts):
        try:
            got += framer.feed(chunk)
        except LineTooLong as e:
            got += e.lines
            refused = True
            break
    first_long = next((i for i, line in enumerate(lines) if len(line) > limit), None)
    if first_long is None:
        assert got == lines
        assert not refused
    else:
        assert got == lines[:first_long]
        assert refused
