"""Plain-text output of the command line: tables for people (machines use ``--json``) and progress lines.

    print(text_table(["λ", "accuracy"], [[-1.0, 0.75], [1.0, 0.125]]))
    run_sweep(..., progress=log_progress("sweep"))      # INFO lines "sweep λ = 1 (2/3)" with -v
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

log = logging.getLogger("tad_demo")


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: floats with 4 decimals, the first column left-aligned, the others right-aligned."""
    cells = [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def log_progress(what: str) -> Callable[[str, int, int], None]:
    """A ``progress(stage, i, n)`` callback that logs "<what> <stage> (i+1/n)" at INFO (shown with ``-v``)."""
    def progress(stage: str, i: int, n: int) -> None:
        log.info("%s %s (%d/%d)", what, stage, i + 1, n)

    return progress
