"""A running grid as it fills in: the cells finished so far, placed where they will be in the grid, with their CLIP
metrics, for the UI to show while the rest is generated (the labelled grid and the files replace it at the end).

    view = PartialGrid(spec)
    view.add([("none", 0, 2, [image_seed_42], [metrics_seed_42])])     # what run_grid's on_cells reports
    view.mosaics()   # {"none": PIL image with the finished cells in place, grey where a cell is still running}
    view.table()     # the metrics table's rows of the finished cells
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from ...grid import GridSpec
from .outputs import summary_table

GAP = 4
MIN_TILE = 96          # small toy-world images are enlarged so a 3×3 mosaic is readable
PENDING = (222, 224, 228)


class PartialGrid:
    """The finished cells of one running grid (see the module docstring)."""

    def __init__(self, spec: GridSpec):
        self.spec = spec
        self.rows, self.cols = spec.row_lambdas, spec.col_lambdas
        self.kinds = [c.kind for c in spec.controls]
        self.cells: dict[tuple[str, int, int], list[Image.Image]] = {}
        self.metrics: dict[tuple[str, int, int], list[dict[str, Any]]] = {}

    @property
    def total(self) -> int:
        return len(self.rows) * len(self.cols) * len(self.kinds)

    def add(self, finished: list[tuple[str, int, int, list[Image.Image], list[dict[str, Any]]]]) -> None:
        for kind, r, c, images, metrics in finished:
            self.cells[(kind, r, c)] = list(images)
            self.metrics[(kind, r, c)] = list(metrics)

    def mosaics(self) -> dict[str, Image.Image]:
        """One image per control: the first seed of every finished cell at its place."""
        scale = max(1, -(-MIN_TILE // max(1, min(self.spec.width, self.spec.height))))
        w, h = self.spec.width * scale, self.spec.height * scale
        out = {}
        for kind in self.kinds:
            canvas = Image.new("RGB", (len(self.cols) * (w + GAP) + GAP, len(self.rows) * (h + GAP) + GAP), "white")
            for r in range(len(self.rows)):
                for c in range(len(self.cols)):
                    images = self.cells.get((kind, r, c))
                    tile = images[0].convert("RGB").resize((w, h), Image.Resampling.NEAREST) if images else \
                        Image.new("RGB", (w, h), PENDING)
                    canvas.paste(tile, (GAP + c * (w + GAP), GAP + r * (h + GAP)))
            out[kind] = canvas
        return out

    def table(self) -> dict[str, Any]:
        """The metrics table's rows of the finished cells, with their CLIP numbers (means over seeds)."""
        rows = [{"control": kind, "row": r, "col": c, "object_lambda": self.rows[r], "style_lambda": self.cols[c],
                 **m}
                for (kind, r, c) in sorted(self.cells, key=lambda k: (self.kinds.index(k[0]), k[1:]))
                for m in self.metrics[(kind, r, c)]]
        return summary_table(rows, {"object": {"name": self.spec.object.name} if self.spec.object else None,
                                    "style": {"name": self.spec.style.name} if self.spec.style else None})

    def status(self) -> str:
        return f"**{len(self.cells)} of {self.total} cells** finished…"


__all__ = ["PartialGrid"]
