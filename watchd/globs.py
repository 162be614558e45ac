"""fnmatch patterns on base names, compiled once; the common shapes tested without a regex."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_SPECIAL = frozenset("*?[")


def compile_globs(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One regex that matches a name when any pattern does (case-sensitive); None for none."""
    parts = [fnmatch.translate(p) for p in patterns]  # each self-contained: (?s:...)\Z
    return re.compile("|".join(parts)) if parts else None


def _literal(text: str) -> bool:
    return not _SPECIAL.intersection(text)


@dataclass(frozen=True, slots=True)
class GlobSet:
    """Patterns sorted by shape. A regex of alternatives tries each one in turn (a leading "*"
    scans the whole name per pattern); a name, "*.csv" or "tmp*" is a set lookup or one
    endswith/startswith over a tuple, in C. Only the other shapes go to the regex."""

    exact: frozenset[str]
    suffixes: tuple[str, ...]  # of the patterns "*literal"
    prefixes: tuple[str, ...]  # of the patterns "literal*"
    rest: re.Pattern[str] | None

    @classmethod
    def of(cls, patterns: Iterable[str]) -> GlobSet:
        exact: set[str] = set()
        suffixes: list[str] = []
        prefixes: list[str] = []
        rest: list[str] = []
        for p in dict.fromkeys(patterns):  # repeated patterns cost once
            if _literal(p):
                exact.add(p)
            elif p.startswith("*") and _literal(p[1:]):
                suffixes.append(p[1:])
            elif p.endswith("*") and _literal(p[:-1]):
                prefixes.append(p[:-1])
            else:
                rest.append(p)
        return cls(frozenset(exact), tuple(suffixes), tuple(prefixes), compile_globs(rest))

    def match(self, name: str) -> bool:
        """Whether any pattern matches the name."""
        return (
            name in self.exact
            or name.endswith(self.suffixes)
            or name.startswith(self.prefixes)
            or (self.rest is not None and self.rest.match(name) is not None)
        )


def glob_predicate(patterns: Iterable[str]) -> Callable[[str], bool] | None:
    """A predicate true for names any pattern matches; None when there are no patterns."""
    patterns = list(patterns)
    return GlobSet.of(patterns).match if patterns else None
