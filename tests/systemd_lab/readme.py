"""The README's install commands, so that the tests run exactly what a reader would type."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
# The HTML comment (invisible on a rendered page) that marks the block the tests run.
MARKER = "<!-- install-units:"


def install_block(readme: Path = README) -> str:
    """The shell commands of the fenced block right after the install marker of the README."""
    lines = readme.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(MARKER)]
    if len(starts) != 1:
        raise ValueError(f"{readme}: expected one line starting {MARKER!r}, found {len(starts)}")
    start = starts[0] + 1
    if start >= len(lines) or lines[start] != "```sh":
        raise ValueError(f"{readme}:{start + 1}: a ```sh block must follow the install marker")
    try:
        end = lines.index("```", start + 1)
    except ValueError:
        raise ValueError(f"{readme}:{start + 1}: the install block is not closed") from None
    return "\n".join(lines[start + 1:end]) + "\n"
