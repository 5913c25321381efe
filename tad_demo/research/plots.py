"""Matplotlib helpers shared by the research views' PNGs.

Figures are built with ``matplotlib.figure.Figure`` and saved with the Agg canvas, never through ``pyplot``: no
global figure state, so plotting is safe from the app's worker threads and on machines without a display.

    fig, (a, b) = figure(1, 2)
    shade_lambda(a, [-2, -1, 0, 1])        # "enhance" left of λ = 0, "ablate" right of it
    heatmap(b, [[1, .1], [.1, 1]], ["smiley", "die"], title="cosine")
    save(fig, "out/plot.png")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Colours of the grid's labels (tad_demo/grid/render.py): ablate red, enhance green.
ABLATE_COLOR, ENHANCE_COLOR = "#b91c1c", "#15803d"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] | None = None) -> tuple[Any, Any]:
    """A Figure (Agg) and its axes (an Axes, or an array of them, as ``Figure.subplots`` returns)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size or (5.2 * ncols, 4.0 * nrows), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols)  # Axes; 1-D array for one row or column; else 2-D


def save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def shade_lambda(ax: Any, lambdas: Sequence[float]) -> None:
    """Tint λ < 0 ("enhance", green) and λ > 0 ("ablate", red) and mark the base at λ = 0."""
    lo, hi = min(min(lambdas), 0.0), max(max(lambdas), 0.0)
    pad = 0.05 * ((hi - lo) or 1.0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.axvline(0.0, color="grey", lw=0.8, ls=":")
    ax.set_xticks(sorted(set(lambdas) | {0.0}))
    if lo < 0:
        ax.axvspan(lo - pad, 0.0, color=ENHANCE_COLOR, alpha=0.07, lw=0)
        ax.text(0.0, 1.01, "← enhance (λ < 0)", transform=ax.transAxes, ha="left", va="bottom", fontsize=8,
                color=ENHANCE_COLOR)
    if hi > 0:
        ax.axvspan(0.0, hi + pad, color=ABLATE_COLOR, alpha=0.07, lw=0)
        ax.text(1.0, 1.01, "ablate (λ > 0) →", transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                color=ABLATE_COLOR)


def heatmap(ax: Any, matrix: Sequence[Sequence[float]], labels: Sequence[str], title: str = "",
            vmin: float = -1.0, vmax: float = 1.0, cmap: str = "RdBu_r", fmt: str = "{:.2f}",
            fontsize: float = 8, numbers: bool = True) -> Any:
    """A square labelled heatmap with the value written in each cell (``numbers``; NaN cells are blank). Returns
    the image (for a colorbar)."""
    import numpy as np

    m = np.array([[float("nan") if v is None else float(v) for v in row] for row in matrix], dtype=float)
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(len(labels)), labels, fontsize=fontsize)
    if title:
        ax.set_title(title, fontsize=fontsize + 2)
    span = (vmax - vmin) or 1.0
    if numbers and len(labels) <= 12:  # numbers stop being readable beyond that
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if math.isfinite(m[i, j]):
                    dark = abs(m[i, j] - (vmin + vmax) / 2) > 0.35 * span
                    ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=fontsize - 1,
                            color="white" if dark else "black")
    return im
