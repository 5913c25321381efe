"""Writing a grid run to a folder, and the PNG text chunks that make every file reproducible.

    files = save(result, "out/")

``out/`` gets ``grid.png`` (the first control's grid; plus ``grid_<control>.png`` each when there are several),
``metrics.csv`` (columns: ``result.METRIC_COLUMNS``), ``recipe.yaml`` (the GridSpec with hashes: ``GridSpec.load``
reads it back), ``conditions/<control>.png`` and ``images/*.png``. Every cell image carries its recipe, λs and
seed in PNG text chunks; every grid PNG carries the run's recipe YAML (``tad_grid``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL.PngImagePlugin import PngInfo

from ..core.recipe import metadata_for
from .result import Cell, GridResult
from .spec import GridSpec


def png_info(cell: Cell, seed: int, spec: GridSpec) -> PngInfo:
    """PNG text chunks: the cell's recipe (YAML), input hashes, and its λs/seed/control/prompt as JSON."""
    info = PngInfo()
    for k, v in metadata_for(cell.recipe).items():
        info.add_text(k, v)
    cell_meta = {"object": spec.object.name if spec.object else None, "object_lambda": cell.object_lambda,
                 "style": spec.style.name if spec.style else None, "style_lambda": cell.style_lambda,
                 "extra": {e.name: float(e.lam) for e in spec.extra}, "control": cell.control, "seed": seed,
                 "prompt": cell.prompt, "steps": spec.steps, "guidance": spec.guidance, "height": spec.height,
                 "width": spec.width}
    info.add_text("tad_cell", json.dumps(cell_meta, ensure_ascii=False))
    # A1111-style summary, which image viewers and web UIs already display.
    lams = ", ".join(f"{v.name} λ={v.lam:+g}" for v in cell.recipe.vectors) or "base"
    info.add_text("parameters", f"{cell.prompt}\nSteps: {spec.steps}, CFG scale: {spec.guidance:g}, Seed: {seed}, "
                                f"Size: {spec.width}x{spec.height}, Control: {cell.control}, TAD: {lams}")
    return info


def grid_info(recipe_yaml: str, extra: Mapping[str, str] | None = None) -> PngInfo:
    """PNG text chunks of a labelled grid: ``tad_grid`` = the run's GridSpec YAML (``GridSpec.from_yaml`` reads it
    back; condition paths are relative to the run folder), plus ``extra`` chunks (the app adds its request)."""
    info = PngInfo()
    info.add_text("tad_grid", recipe_yaml)
    for k, v in (extra or {}).items():
        info.add_text(k, v)
    return info


def save(result: GridResult, out_dir: str | Path, *, grid_text: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Write the run: ``grid.png`` (first control; plus ``grid_<control>.png`` each when there are several),
    ``metrics.csv``, ``recipe.yaml`` (GridSpec with hashes; reads back with ``GridSpec.load``),
    ``conditions/<control>.png`` and ``images/*.png`` (recipe + λs + seed in PNG text chunks). The grid PNGs carry
    the run's recipe YAML in a ``tad_grid`` text chunk, plus the ``grid_text`` chunks."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    spec = result.spec
    written: dict[str, Any] = {}
    # 1. conditions, referenced from the recipe
    paths = {}
    for kind, im in result.conditions.items():
        (out / "conditions").mkdir(exist_ok=True)
        im.save(out / "conditions" / f"{kind}.png")
        paths[kind] = f"conditions/{kind}.png"
    recipe = spec.to_yaml(image_paths=paths)
    # 2. grids, each carrying the whole run's recipe
    info = grid_info(recipe, grid_text)
    result.grid.save(out / "grid.png", pnginfo=info)
    written["grid"] = out / "grid.png"
    if len(result.grids) > 1:
        for kind, im in result.grids.items():
            im.save(out / f"grid_{kind}.png", pnginfo=info)
            written[f"grid_{kind}"] = out / f"grid_{kind}.png"
    # 3. cells with their recipes
    images = []
    for cell in result.cells:
        for seed, im in zip(cell.seeds, cell.images):
            p = out / "images" / cell.image_name(seed)
            im.save(p, pnginfo=png_info(cell, seed, spec))
            images.append(p)
    written["images"] = images
    # 4. metrics and the recipe of the whole run
    (out / "metrics.csv").write_text(result.csv_text())
    (out / "recipe.yaml").write_text(recipe)
    written["metrics"] = out / "metrics.csv"
    written["recipe"] = out / "recipe.yaml"
    return written
