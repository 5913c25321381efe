"""ControlNet conditions of a request: from an example scene of the world, a photo (annotator), a ready map or a
sketch, at the generation size; and the cheap previews the UI shows while the inputs change."""

from __future__ import annotations

from typing import Any

from PIL import Image

from ...core.world import World
from ...runtime.control import Condition, example_condition, make_condition, prepare
from ..errors import ServiceError, UserError
from ..request import GridRequest
from .guard import guard

CONDITION_SOURCES = {"example": "toy-world example (ready maps)", "image": "photo → annotator",
                     "map": "ready condition map", "sketch": "sketch"}
VERBS = {"resize": "resized", "crop": "cropped", "pad": "padded"}


class Conditions:
    def __init__(self, world: World | None):
        self.world = world

    def examples(self) -> list[str]:
        """The world's example scenes (the names of its ready condition maps)."""
        return self.world.example_names() if self.world else []

    def make(self, kind: str, req: GridRequest, width: int, height: int) -> Condition:
        """The condition of one control kind from the request's source (example, photo, map or sketch)."""
        src = req.condition_source
        with guard("condition"):
            if src == "example":
                names = self.examples()
                name = req.example or (names[0] if names else "smiley")
                if name not in names:
                    raise UserError(f"example: unknown example {name!r}")
                # The world's ready map of the scene, brought to the generation size like an uploaded map.
                image = example_condition(self.world, kind, name)
                return make_condition(kind, image, source="map", width=width, height=height, mode=req.resize_mode)
            if src in ("image", "map"):
                if not req.condition_image:
                    raise UserError(f"control {kind}: upload a {'photo' if src == 'image' else 'condition map'} first")
                return make_condition(kind, req.condition_image, source=src, width=width, height=height,
                                      mode=req.resize_mode)
            if src == "sketch":
                if not req.sketch:
                    raise UserError(f"control {kind}: draw a sketch first")
                return make_condition(kind, req.sketch, source="sketch", width=width, height=height,
                                      mode=req.resize_mode)
            raise UserError(f"condition source {src!r} is not one of {', '.join(CONDITION_SOURCES)}")

    @staticmethod
    def key(req: GridRequest, kinds: list[str]) -> Any:
        """What identifies the conditions in a cache key: an example's name; None (not cacheable) otherwise."""
        if kinds == ["none"]:
            return "none"
        return f"example:{req.example}" if req.condition_source == "example" else None

    def preview(self, req: GridRequest, kinds: list[str], width: int, height: int) -> tuple[list, str]:
        """Condition previews (one per control) and a line with the final size; annotators that need weights are
        not run here (they run with the grid), their input is shown instead. Never raises: problems are noted."""
        out: list[tuple[Image.Image, str]] = []
        notes = []
        for kind in kinds:
            try:
                if req.condition_source == "image" and kind != "canny":
                    img, _ = prepare(req.condition_image, width, height, req.resize_mode)
                    out.append((img, f"{kind}: the annotator runs with the grid"))
                    continue
                cond = self.make(kind, req, width, height)
                out.append((cond.image, cond.describe()))
            except ServiceError as e:
                notes.append(f"{kind}: {e}")
            except Exception as e:  # noqa: BLE001 - a preview must never break the page
                notes.append(f"{kind}: {type(e).__name__}: {e}")
        verb = VERBS.get(req.resize_mode, req.resize_mode)
        line = f"Conditions are {verb} to **{width}×{height}** px (the generation size)."
        return out, "  \n".join([line, *notes])
