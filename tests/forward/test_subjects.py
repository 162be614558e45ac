"""Subjects of a forwarder: names escaped into tokens one to one, templates checked."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watchd.forward.subjects import capture, covers, escape, notice_subject, render, unescape


@pytest.mark.parametrize(("name", "token"), [
    ("uploads", "uploads"),
    ("web1.example.org", "web1%2Eexample%2Eorg"),
    ("a*b>c", "a%2Ab%3Ec"),
    ("a b\tc", "a%20b%09c"),
    ("100%", "100%25"),
    ("é", "é"),
])
def test_escape(name: str, token: str) -> None:
    assert escape(name) == token
    assert unescape(token) == name


@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1))
def test_escaping_is_one_to_one_and_gives_a_token(name: str) -> None:
    token = escape(name)
    assert token and not any(c in ".*>" or c.isspace() for c in token)
    assert unescape(token) == name


def test_render_and_the_notice_subject() -> None:
    subject = render("watchd.{host}.{watch}", "h.example", "uploads")
    assert subject == "watchd.h%2Eexample.uploads"
    assert notice_subject(subject) == "watchd.h%2Eexample.uploads._notice"


def test_capture_makes_placeholders_wildcards() -> None:
    assert capture("watchd.{host}.{watch}") == ("watchd.*.*", "watchd.*.*._notice")
    assert capture("fleet.{watch}") == ("fleet.*", "fleet.*._notice")


@pytest.mark.parametrize(("pattern", "subject", "want"), [
    ("watchd.*.*", "watchd.*.*", True),
    ("watchd.>", "watchd.*.*", True),
    ("watchd.>", "watchd.*.*._notice", True),
    (">", "watchd.*.*", True),
    ("watchd.*.*", "watchd.*.*._notice", False),
    ("watchd.web1.*", "watchd.*.*", False),
    ("watchd.*", "watchd.*.*", False),
    ("watchd.*.*.>", "watchd.*.*", False),
    ("audit.>", "watchd.*.*", False),
])
def test_covers(pattern: str, subject: str, want: bool) -> None:
    assert covers(pattern, subject) is want
