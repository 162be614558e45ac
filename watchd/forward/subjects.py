"""NATS subjects of a forwarder: the template, its placeholders, and escaping names into tokens.

A subject is tokens separated by `.`; a token may not be empty nor hold `.`, `*`, `>` or
whitespace. A host or watch name may hold `.` (a fully qualified host name does), so each
character a token may not hold, and `%` itself, is written as `%` and two upper-case hex
digits of its UTF-8 bytes: `web1.example.org` becomes `web1%2Eexample%2Eorg`. The mapping is
one to one, so a consumer can undo it (`unescape`).
"""

from __future__ import annotations

import re
import string
from typing import Final

PLACEHOLDERS: Final = ("host", "watch")
NOTICE_TOKEN: Final = "_notice"  # noqa: S105  # a subject token, no secret
# What a token may not hold (whitespace: any character str.isspace() calls so), and "%", so
# that escaped names are unambiguous.
_SPECIAL: Final = frozenset(".*>%")
_ESCAPED: Final = re.compile(rb"%([0-9A-F]{2})")


def escape(name: str) -> str:
    """A name as one subject token."""
    if name and not any(c in _SPECIAL or c.isspace() for c in name):
        return name
    if not name:
        return "%"  # names are never empty; "%" alone is no escape of another name
    out = []
    for c in name:
        if c in _SPECIAL or c.isspace():
            out.append("".join(f"%{b:02X}" for b in c.encode()))
        else:
            out.append(c)
    return "".join(out)


def unescape(token: str) -> str:
    """The name a token was escaped from."""
    if "%" not in token:
        return token
    raw = _ESCAPED.sub(lambda m: bytes([int(m.group(1), 16)]), token.encode())
    return raw.decode("utf-8", "replace")


def template_problem(template: str) -> str | None:
    """What is wrong with a subject template, or None."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        return f"not a valid template ({e}); write placeholders as {{host}} and {{watch}}"
    for field in fields:
        if field not in PLACEHOLDERS:
            return (f"unknown placeholder {{{field}}}; the placeholders are {{host}} and "
                    "{watch}")
    for token in template.split("."):
        if token != token.strip("{}") and token not in ("{host}", "{watch}"):
            return (f"a placeholder must be a whole token, as in 'watchd.{{host}}.{{watch}}'; "
                    f"got {token!r}")
    sample = render(template, "h", "w")
    for token in sample.split("."):
        if not token:
            return "has an empty token (a leading, trailing or doubled '.')"
        if any(c in "*>" or c.isspace() for c in token):
            return ("must not contain wildcards ('*', '>') or whitespace: events are "
                    "published to one subject each")
    if sample.endswith("." + NOTICE_TOKEN):
        return f"must not end in '.{NOTICE_TOKEN}', the notices' subject"
    return None


def render(template: str, host: str, watch: str) -> str:
    """The subject of a watch's events: the template with the escaped names put in."""
    return template.replace("{host}", escape(host)).replace("{watch}", escape(watch))


def notice_subject(subject: str) -> str:
    """The subject of the notices that concern the watch whose events go to `subject`."""
    return f"{subject}.{NOTICE_TOKEN}"


def capture(template: str) -> tuple[str, str]:
    """The subjects a stream must capture for a template: its events and its notices, with
    each placeholder as a wildcard token."""
    events = template.replace("{host}", "*").replace("{watch}", "*")
    return events, notice_subject(events)


def covers(pattern: str, subject: str) -> bool:
    """Whether every subject `subject` (which may hold wildcards) matches `pattern`: a
    stream's subject and one it must capture. `*` covers one token (a literal or a `*`),
    `>` the one or more tokens left."""
    have, want = pattern.split("."), subject.split(".")
    for i, part in enumerate(have):
        if part == ">":
            return len(want) > i
        if i >= len(want) or part not in ("*", want[i]):
            return False
    return len(have) == len(want)
