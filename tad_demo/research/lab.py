"""The research views' common ground: a base model, its concepts (each an ablation vector with an anchor), a CLIP
scorer, and one way to generate and score images under a weight combination.

    lab = Lab.toy_world()                       # or Lab(base=..., concepts=[Concept(...)], clip=...)
    combo = [(lab.vector("smiley"), 1.0)]       # λ = +1 ablates, 0 is the base, −1 enhances
    images = lab.generate(lab.prompts("smiley", 8), seeds=range(8), combo=combo)
    lab.metrics(images, "smiley")               # {"clip_score": …, "clip_accuracy": …}

Every view (sweep, multi, adaptive, eval) samples through :meth:`Lab.generate`, so an image depends only on its
prompt, seed and weights: the same (prompt, seed, λ) gives the same image in every view and in the grid.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models import ModelError, Models

log = logging.getLogger(__name__)

KINDS = ("object", "style")
# Prompt templates for real models (Kumari's evaluation prompts are captions of this shape); the toy world uses
# its own renderer's captions instead.
DEFAULT_TEMPLATES = {"object": ("a photo of {object}",), "style": ("a painting in {style} style",)}

Combo = Sequence[tuple[Any, float]]  # (TaskVector, λ) pairs applied together


class LabError(ValueError):
    """A research request that cannot run (unknown concept, bad λ list, ...); the message says which value."""


@dataclass(frozen=True)
class Concept:
    """A target concept: its ablation checkpoint (fine-tuned weights or a saved τ) and the anchor it maps to."""

    name: str
    anchor: str
    kind: str = "object"  # "object" | "style"
    source: str = ""  # checkpoint path
    vector_kind: str = "ablation"  # recipe.VECTOR_KINDS: ablation/finetuned, vector, lora


@dataclass
class Lab:
    """A base model and its concepts, with generation and CLIP scoring. Not thread-safe by itself: the models'
    lock is held while generating."""

    base: str
    concepts: dict[str, Concept]
    clip: str
    steps: int = 20
    guidance: float = 5.0
    height: int | None = None
    width: int | None = None
    templates: dict[str, Sequence[str]] = field(default_factory=lambda: dict(DEFAULT_TEMPLATES))
    toy: bool = False  # prompts come from the toy world's renderer captions
    models: Models = field(default_factory=Models)

    # --- construction ------------------------------------------------------------------------------------
    @classmethod
    def toy_world(cls, assets: str | Path | None = None, **kw: Any) -> Lab:
        """The embedded toy world (assets/toyworld): base, its 7 ablation checkpoints and the toy CLIP."""
        from ..grid import default_assets

        root = Path(assets) if assets else default_assets()
        meta_path = root / "world.json"
        if not meta_path.exists():
            raise LabError(f"{meta_path} not found; pass the toy world folder (assets/toyworld)")
        meta = json.loads(meta_path.read_text())
        concepts = {c["name"]: Concept(c["name"], c["anchor"], c["kind"], str(root / c["checkpoint"]))
                    for c in meta["concepts"]}
        d = meta.get("defaults", {})
        kw = {"steps": d.get("num_inference_steps", 20), "guidance": d.get("guidance_scale", 5.0),
              "height": d.get("height"), "width": d.get("width"), **kw}
        return cls(base=str(root / "base"), concepts=concepts, clip=str(root / "clip"), toy=True, **kw)

    def concept(self, name: str) -> Concept:
        try:
            return self.concepts[name]
        except KeyError:
            raise LabError(f"unknown concept {name!r}; known: {', '.join(self.concepts) or 'none'}") from None

    # --- ingredients -------------------------------------------------------------------------------------
    @property
    def pipe(self) -> Any:
        return self.models.load_base(self.base)

    def vector(self, name: str) -> Any:
        """τ of a concept's checkpoint against the base (cached; λ = +1 ablates)."""
        c = self.concept(name)
        self.pipe  # noqa: B018 - vectors are built against the loaded base
        return self.models.vector(c.source, kind=c.vector_kind)

    @property
    def scorer(self) -> Any:
        return self.models.clip(self.clip)

    def prompts(self, name: str, n: int, seed: int = 42) -> list[str]:
        """``n`` prompts naming concept ``name`` (or any world word for the toy world), seeded."""
        kind = self.kind_of(name)  # world words that are not concepts ("plain") keep their own kind
        rng = random.Random(f"{seed}-{name}")
        if self.toy:
            from ..toyworld import world

            if kind == "object" and name not in world.OBJECTS or kind == "style" and name not in world.STYLES:
                raise LabError(f"{name!r} is not a toy-world {kind}; objects: {', '.join(world.OBJECTS)}; "
                               f"styles: {', '.join(world.STYLES)}")
            templates = [t for t in world.PROMPT_TEMPLATES if "{" + kind + "}" in t]
            return [world.sample_scene(rng, **{kind: name}).caption(rng.choice(templates)) for _ in range(n)]
        templates = list(self.templates.get(kind) or DEFAULT_TEMPLATES[kind])
        return [rng.choice(templates).format(**{kind: name}) for _ in range(n)]

    def kind_of(self, name: str) -> str:
        """``object`` or ``style`` for a concept or (toy world) any world word."""
        if name in self.concepts:
            return self.concepts[name].kind
        if self.toy:
            from ..toyworld import world

            return "style" if name in world.STYLES else "object"
        return "object"

    def anchor_of(self, name: str) -> str | None:
        return self.concepts[name].anchor if name in self.concepts else None

    # --- generation and scoring --------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], seeds: Sequence[int], combo: Combo = (),
                 callback: Callable[[int, int, int], None] | None = None, **pipe_kwargs: Any) -> list[Any]:
        """Images for (prompt, seed) pairs under θ_base + Σ λ τ (weights restored bit-exactly afterwards)."""
        from ..sampling import sample

        pipe = self.pipe
        with self.models.computing():
            with self.models.patcher.patched(list(combo)):
                touches_text = any(k.startswith("text_encoder.") for tv, _ in combo for k in tv.keys())
                return sample(pipe, list(prompts), [int(s) for s in seeds], steps=self.steps, guidance=self.guidance,
                              height=self.height, width=self.width, callback=callback,
                              prompt_cache=None if touches_text else self.models.prompt_cache, **pipe_kwargs)

    def metrics(self, images: Sequence[Any], target: str, anchor: str | None = None) -> dict[str, float]:
        """CLIP score of ``target`` (Kumari: 2.5·max(cos, 0), mean) and CLIP accuracy against its anchor."""
        kind = self.kind_of(target)
        anchor = anchor or self.anchor_of(target)
        feats = self.scorer.image_features(list(images))
        out = {"clip_score": self.scorer.clip_score(feats, target, kind)}
        out["clip_accuracy"] = (self.scorer.clip_accuracy(feats, target, anchor, kind) if anchor
                                else float("nan"))
        return out


def check_lambdas(values: Sequence[Any], what: str = "lambdas", limit: float = 100.0, *, hint: str = "",
                  distinct: bool = False) -> list[float]:
    """Finite λ values within ±limit (each once if ``distinct``), else a LabError naming the value; ``hint`` is
    appended to the out-of-range message. The one λ-list check of the CLI, the library and the app."""
    out: list[float] = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise LabError(f"{what}: {v!r} is not a number") from None
        if not math.isfinite(f):
            raise LabError(f"{what}: {v!r} is not a finite number")
        if not -limit <= f <= limit:
            raise LabError(f"{what}: {f:g} is outside [{-limit:g}, {limit:g}]{hint}")
        if distinct and f in out:
            raise LabError(f"{what}: {f:g} is given twice")
        out.append(f)
    if not out:
        raise LabError(f"{what}: give at least one value")
    return out


__all__ = ["Concept", "Lab", "LabError", "ModelError", "check_lambdas", "KINDS"]
