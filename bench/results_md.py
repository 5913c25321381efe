"""bench/RESULTS.md holds one section per bench; each bench rewrites only its own."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("bench")


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace (or append) the section that starts at ``heading``, leaving other benches' sections alone."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"{heading}\n\n{body.strip()}\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[nxt:] if nxt >= 0 else "")
    path.write_text(text)


def publish(path: Path, heading: str, body: str, *, write: bool = True) -> None:
    """Print a bench's report and, unless it is a dry run, put it in its section of ``path``."""
    print("\n" + body + "\n")
    if write:
        write_section(path, heading, body)
        log.info("wrote %s", path)
