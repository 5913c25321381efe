"""What a grid run gives: its cells (images + the recipe of their weights), metrics rows and labelled grids.

``metrics.csv`` has one row per cell × seed × control; its first columns are :data:`REQUIRED_COLUMNS`, in that
order (a stable format: other tools read it), then the rest of :data:`METRIC_COLUMNS`.
"""

from __future__ import annotations

import csv
import io
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..core.recipe import Recipe
from .spec import GridSpec

REQUIRED_COLUMNS = ("object_lambda", "style_lambda", "control", "seed", "prompt", "clip_score_object",
                    "clip_accuracy_object", "clip_score_style", "clip_accuracy_style")
METRIC_COLUMNS = (*REQUIRED_COLUMNS, "object", "object_anchor", "style", "style_anchor", "extra", "row", "col",
                  "image")
SCORE_COLUMNS = REQUIRED_COLUMNS[5:]  # the four CLIP columns


@dataclass
class Cell:
    """One cell of one control's grid: its λs, prompt, images (one per seed) and the recipe of its weights."""

    control: str
    row: int
    col: int
    object_lambda: float | None
    style_lambda: float | None
    prompt: str
    seeds: list[int]
    images: list[Image.Image]
    recipe: Recipe

    def image_name(self, seed: int) -> str:
        """File name under ``images/``: control, position, λs and seed (unique within a grid)."""
        return (f"{self.control}_r{self.row}c{self.col}_obj{_lam_tag(self.object_lambda)}"
                f"_sty{_lam_tag(self.style_lambda)}_seed{seed}.png")


def _lam_tag(lam: float | None) -> str:
    return "none" if lam is None else "0" if lam == 0 else f"{lam:+g}"


@dataclass
class GridResult:
    spec: GridSpec
    cells: list[Cell]
    grids: dict[str, Image.Image]        # control → labelled grid
    rows: list[dict[str, Any]]           # metrics, one per cell × seed × control (METRIC_COLUMNS)
    conditions: dict[str, Image.Image]   # control → the condition as fed to the ControlNet
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def grid(self) -> Image.Image:
        """The first control's grid."""
        return next(iter(self.grids.values()))

    def cell(self, control: str, row: int, col: int) -> Cell:
        for c in self.cells:
            if (c.control, c.row, c.col) == (control, row, col):
                return c
        raise KeyError((control, row, col))

    def summary(self) -> list[dict[str, Any]]:
        """Metrics per cell (mean over seeds): what the app's table shows."""
        groups: dict[tuple, list[dict]] = OrderedDict()
        for r in self.rows:
            groups.setdefault((r["control"], r["row"], r["col"]), []).append(r)
        out = []
        for rs in groups.values():
            d = {k: rs[0][k] for k in ("control", "object_lambda", "style_lambda", "prompt")}
            d["seeds"] = len(rs)
            for m in SCORE_COLUMNS:
                vals = [r[m] for r in rs if r[m] is not None]
                d[m] = sum(vals) / len(vals) if vals else None
            out.append(d)
        return out

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in METRIC_COLUMNS})
        return buf.getvalue()
