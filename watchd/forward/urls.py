"""A server's URL as it may be shown: in `status`, the log and the configuration's errors."""

from __future__ import annotations


def shown(url: str, mark: str = "") -> str:
    """The URL without its user and password (everything before the host's '@'), or with
    `mark` in their place.

    Read as text, not parsed: it serves URLs the configuration refuses too. The last '@'
    ends the user information, whatever the password holds ('/', '#', '@' unescaped).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" not in rest:
        return url
    return scheme + sep + mark + rest.rpartition("@")[2]
