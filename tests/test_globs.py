"""The glob matcher agrees with fnmatch, whatever shape the patterns have."""

from __future__ import annotations

import fnmatch

from hypothesis import given
from hypothesis import strategies as st

from watchd.globs import GlobSet

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
