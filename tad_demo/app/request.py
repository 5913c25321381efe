"""What the UI (and the ``/grid`` API) sends the grid service: :class:`GridRequest`, one field per widget.

This module is the contract between ``app/ui`` and ``app/service``; it imports nothing (the UI must stay free of
torch and of the library). :data:`REQUEST_FIELDS` — derived from the dataclass — is the one list of the request's
fields: the handlers' ``grid`` parameters, the Blocks wiring and the service all use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

TOY = "toyworld"  # the id of the app's own world (TAD_ASSETS) among the base models


@dataclass
class GridRequest:
    """The widget values of one grid run; field names are the ``grid`` API's parameter names.

    ``None`` means "the base model's default" (concepts: its first object/style concept; steps, guidance, size,
    prompt template: from world.json or the catalog). An empty string for a concept means "no such axis".
    """

    base: str = TOY
    object: str | None = None
    style: str | None = None
    controls: list[str] = field(default_factory=lambda: ["none"])
    condition_source: str = "example"
    example: str | None = None
    condition_image: str | None = None
    sketch: Any = None
    conditioning_scale: float = 1.0
    resize_mode: str = "resize"
    controlnet_version: str | None = None
    prompt_template: str | None = None
    seeds: str = "42"
    steps: int | float | None = None
    guidance: float | None = None
    height: int | float | None = None
    width: int | float | None = None
    object_lambdas: str | list[float] = "1, 0, -1"   # rows, top to bottom: λ>0 ablates, 0 is the base, λ<0 enhances
    style_lambdas: str | list[float] = "1, 0, -1"    # columns, left to right
    extra1: str | None = None
    extra1_lambda: float = 1.0
    extra2: str | None = None
    extra2_lambda: float = 1.0
    extra3: str | None = None
    extra3_lambda: float = 1.0
    merge_method: str = "linear"
    merge_params: dict[str, Any] | None = None
    clip_metrics: bool = True

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> GridRequest:
        """A request from values keyed by field name (other keys are ignored)."""
        return cls(**{k: v for k, v in values.items() if k in REQUEST_FIELDS})


REQUEST_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(GridRequest))
# Fields an example can set (files and drawings cannot be examples): what gr.Examples fills.
EXAMPLE_FIELDS: tuple[str, ...] = tuple(f for f in REQUEST_FIELDS
                                        if f not in ("condition_image", "sketch", "controlnet_version",
                                                     "merge_params"))

# Fields an uploaded recipe shows in the widgets (the Reproduce button runs the recipe itself).
RECIPE_FIELDS: tuple[str, ...] = ("controls", "seeds", "steps", "guidance", "height", "width", "prompt_template",
                                  "object_lambdas", "style_lambdas", "merge_method")


def request_defaults() -> dict[str, Any]:
    """Every field's default value."""
    return {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
            for f in fields(GridRequest)}


__all__ = ["EXAMPLE_FIELDS", "RECIPE_FIELDS", "REQUEST_FIELDS", "TOY", "GridRequest", "request_defaults"]
