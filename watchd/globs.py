"""fnmatch patterns on base names, compiled once into one regular expression."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable


def compile_globs(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One regex that matches a name when any pattern does (case-sensitive); None for none."""
    parts = [fnmatch.translate(p) for p in patterns]  # each self-contained: (?s:...)\Z
    return re.compile("|".join(parts)) if parts else None


def glob_predicate(patterns: Iterable[str]) -> Callable[[str], bool] | None:
    """A predicate true for names any pattern matches; None when there are no patterns."""
    regex = compile_globs(patterns)
    if regex is None:
        return None
    match = regex.match
    return lambda name: match(name) is not None
