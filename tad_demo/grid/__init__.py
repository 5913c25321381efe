"""The concept grid: rows edit the object, columns the style (λ > 0 ablates, 0 is the base, λ < 0 enhances), one
grid per ControlNet control, the same seeds in every cell, CLIP score / accuracy per image.

    spec.py    GridSpec (validated, YAML round-trip) and the default spec of a world folder (world_spec)
    plan.py    GridPlan: which cells share weights, which pipeline calls generate them
    run.py     run_grid: load → plan → denoise under hot-patched weights → metrics → results
    render.py  the labelled grid image of one control
    result.py  Cell, GridResult and the metrics.csv columns
    io.py      save: grid PNGs, metrics.csv, recipe.yaml, conditions/, images/ with their PNG text chunks

    spec = world_spec("assets/toyworld", controls=("none", "canny"))
    save(run_grid(spec), "out/")

Imports ``tad_demo.core`` and ``tad_demo.runtime`` only.
"""

from ..core.errors import Cancelled, GridError
from ..core.world import Concept
from .io import grid_info, png_info, save
from .plan import GridPlan
from .render import lambda_label, render_grid
from .result import METRIC_COLUMNS, REQUIRED_COLUMNS, Cell, GridResult
from .run import run_grid
from .spec import ControlSpec, ExtraVector, GridSpec, default_world, world_control, world_spec

__all__ = ["METRIC_COLUMNS", "REQUIRED_COLUMNS", "Cancelled", "Cell", "Concept", "ControlSpec", "ExtraVector",
           "GridError", "GridPlan", "GridResult", "GridSpec", "default_world", "grid_info", "lambda_label",
           "png_info", "render_grid", "run_grid", "save", "world_control", "world_spec"]
