"""The glob matcher (watchd.globs): fnmatch's rules on base names, whatever shape the patterns
have, with the common shapes tested without a regex."""

from __future__ import annotations

import dataclasses
import fnmatch
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watchd.globs import GlobSet, compile_globs, glob_predicate

_pattern = st.text(alphabet="ab.*?[]!-", min_size=1, max_size=6)
_name = st.text(alphabet="ab.*?[]!-\n", max_size=8)


@given(st.lists(_pattern, min_size=1, max_size=5), _name)
def test_globset_agrees_with_fnmatchcase(patterns: list[str], name: str) -> None:
    expected = any(fnmatch.fnmatchcase(name, p) for p in patterns)
    assert GlobSet.of(patterns).match(name) == expected


def test_common_shapes_need_no_regex() -> None:
    globs = GlobSet.of(["*.csv", "tmp*", "README", "*.csv"])
    assert globs.rest is None
    assert globs.match("a.csv") and globs.match("tmp1") and globs.match("README")
    assert not globs.match("a.csvx") and not globs.match("xtmp") and not globs.match("READ")


@pytest.mark.parametrize(("pattern", "name", "matches"), [
    # A pattern matches the whole base name: it is anchored at both ends.
    ("a", "a", True), ("a", "ab", False), ("a", "ba", False),
    ("*.csv", "x.csv", True), ("*.csv", "x.csv.bak", False), ("*.csv", "x.csv\n", False),
    ("tmp*", "tmp", True), ("tmp*", "atmp", False),
    # `*` and `?` take any character, a leading dot included (no shell's hidden-file rule).
    ("*", ".hidden", True), ("*", "", True), ("?", ".", True), ("?", "", False),
    ("?.txt", "a.txt", True), ("?.txt", "ab.txt", False),
    # `**` is two stars: on a base name, the same as one.
    ("**", "anything", True), ("**.log", "a.log", True), ("a**b", "axxb", True),
    # Sets, ranges and negation.
    ("[ab].c", "a.c", True), ("[ab].c", "c.c", False), ("[!ab].c", "c.c", True),
    ("[!ab].c", "a.c", False), ("f[0-9]", "f7", True), ("f[0-9]", "fx", False),
    # Case-sensitive, as file names are.
    ("*.CSV", "x.csv", False), ("README", "readme", False),
    # Special characters inside a literal part are taken literally by every shape.
    ("a.b", "axb", False), ("*+", "a+", True), ("(x)*", "(x)y", True), ("$", "$", True),
])
def test_fnmatch_semantics_on_base_names(pattern: str, name: str, matches: bool) -> None:
    assert GlobSet.of([pattern]).match(name) is matches
    assert fnmatch.fnmatchcase(name, pattern) is matches  # the rule we follow


@pytest.mark.parametrize(("patterns", "shape"), [
    (["README"], "exact"), (["*.csv"], "suffixes"), (["tmp*"], "prefixes"),
    (["a?c"], "rest"), (["*a*"], "rest"), (["[ab]*"], "rest"), (["*"], "suffixes"),
])
def test_each_pattern_is_sorted_by_shape(patterns: list[str], shape: str) -> None:
    globs = GlobSet.of(patterns)
    held = {"exact": bool(globs.exact), "suffixes": bool(globs.suffixes),
            "prefixes": bool(globs.prefixes), "rest": globs.rest is not None}
    assert [k for k, v in held.items() if v] == [shape]


def test_any_pattern_of_several_matches() -> None:
    globs = GlobSet.of(["*.csv", "tmp*", "README", "a?c"])
    assert [n for n in ["x.csv", "tmp1", "README", "abc", "abbc", "x.tsv"] if globs.match(n)] == [
        "x.csv", "tmp1", "README", "abc"]


def test_repeated_patterns_are_kept_once() -> None:
    globs = GlobSet.of(["*.csv", "*.csv", "a?c", "a?c", "x", "x"])
    assert globs.suffixes == (".csv",)
    assert globs.exact == frozenset({"x"})
    assert globs.rest is not None
    assert globs.rest.pattern.count("|") == 0  # one alternative


def test_equal_pattern_lists_give_equal_sets() -> None:
    # A frozen value: a subscription's filter may be compared and shared.
    assert GlobSet.of(["*.csv", "tmp*"]) == GlobSet.of(["*.csv", "tmp*", "*.csv"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        GlobSet.of(["a"]).exact = frozenset()  # type: ignore[misc]


def test_compile_globs() -> None:
    assert compile_globs([]) is None
    regex = compile_globs(["*.csv", "a?c"])
    assert regex is not None
    assert regex.match("x.csv") and regex.match("abc")
    assert not regex.match("x.csv.bak") and not regex.match("abcd")


def test_glob_predicate() -> None:
    assert glob_predicate([]) is None
    assert glob_predicate(iter([])) is None
    wanted = glob_predicate(iter(["*.csv", "tmp*"]))  # any iterable, read once
    assert wanted is not None
    assert wanted("a.csv") and wanted("tmpx") and not wanted("b.txt")


def test_a_name_that_is_not_utf8_is_matched_by_its_escaped_form() -> None:
    # Names reach the matcher decoded with os.fsdecode: undecodable bytes are surrogates.
    name = os.fsdecode(b"caf\xe9.csv")
    assert GlobSet.of(["*.csv"]).match(name)
    assert GlobSet.of(["caf?.csv"]).match(name)
    assert not GlobSet.of(["café.csv"]).match(name)
