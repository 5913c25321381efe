"""The research views' common ground: a base model, its concepts (each an ablation vector with an anchor), a CLIP
scorer, and one way to generate and score images under a weight combination.

    lab = Lab.from_world("assets/toyworld")     # or Lab(base=..., concepts={name: Concept(...)}, clip=...)
    combo = [(lab.vector("smiley"), 1.0)]       # λ = +1 ablates, 0 is the base, −1 enhances
    images = lab.generate(lab.prompts("smiley", 8), seeds=range(8), combo=combo)
    lab.metrics(images, "smiley")               # {"clip_score": …, "clip_accuracy": …}

Every view (sweep, multi, adaptive, eval) samples through :meth:`Lab.generate`, so an image depends only on its
prompt, seed and weights: the same (prompt, seed, λ) gives the same image in every view and in the grid.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import LabError, ModelError, WorldError
from ..core.limits import HARD
from ..core.world import KINDS, Concept, World, default_world

if TYPE_CHECKING:
    from ..runtime.models import Models

log = logging.getLogger(__name__)

# Prompt templates for models without a world (Kumari's evaluation prompts are captions of this shape); a world
# draws its prompts from its own vocabulary and templates instead.
DEFAULT_TEMPLATES = {"object": ("a photo of {object}",), "style": ("a painting in {style} style",)}

Combo = Sequence[tuple[Any, float]]  # (TaskVector, λ) pairs applied together


def _models() -> Models:
    # runtime (torch, diffusers) is imported when a Lab is made, not when the research commands are registered
    from ..runtime.models import Models

    return Models()


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
    world: World | None = None  # prompts come from the world's vocabulary and templates
    models: Models = field(default_factory=_models)

    # --- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_world(cls, folder: str | Path | World | None = None, **kw: Any) -> Lab:
        """The lab of a world folder (default: the shipped toy world): its base, concepts, CLIP and defaults."""
        try:
            world = folder if isinstance(folder, World) else World.load(folder or default_world())
        except WorldError as e:
            raise LabError(str(e)) from None
        kw = {"steps": world.steps, "guidance": world.guidance, "height": world.height, "width": world.width, **kw}
        return cls(base=str(world.base_path), concepts={c.name: c for c in world.concepts},
                   clip=str(world.root / world.clip), world=world, **kw)

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
        return self.models.vector(c.source, kind=c.format)

    @property
    def scorer(self) -> Any:
        return self.models.clip(self.clip)

    def prompts(self, name: str, n: int, seed: int = 42) -> list[str]:
        """``n`` prompts naming concept ``name`` (or any word of the lab's world), seeded."""
        kind = self.kind_of(name)  # world words that are not concepts ("plain") keep their own kind
        rng = random.Random(f"{seed}-{name}")
        w = self.world
        if w is not None:
            if name not in w.words(kind):
                raise LabError(f"{name!r} is not a toy-world {kind}; objects: {', '.join(w.objects)}; "
                               f"styles: {', '.join(w.styles)}")
            templates = w.templates_with(kind)
            prompts = []
            for _ in range(n):
                words = w.sample_words(rng, **{kind: name})  # the words first, then the template (seeded order)
                prompts.append(rng.choice(templates).format(**words))
            return prompts
        templates = list(self.templates.get(kind) or DEFAULT_TEMPLATES[kind])
        return [rng.choice(templates).format(**{kind: name}) for _ in range(n)]

    def kind_of(self, name: str) -> str:
        """``object`` or ``style`` for a concept or any word of the lab's world."""
        if name in self.concepts:
            return self.concepts[name].kind
        return self.world.kind_of(name) if self.world is not None else "object"

    def anchor_of(self, name: str) -> str | None:
        return self.concepts[name].anchor if name in self.concepts else None

    # --- generation and scoring --------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], seeds: Sequence[int], combo: Combo = (),
                 callback: Callable[[int, int, int], None] | None = None, **pipe_kwargs: Any) -> list[Any]:
        """Images for (prompt, seed) pairs under θ_base + Σ λ τ (weights restored bit-exactly afterwards)."""
        from ..runtime.sampling import sample

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


def check_lambdas(values: Sequence[Any], what: str = "lambdas", limit: float = HARD.lambda_, *, hint: str = "",
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


__all__ = ["KINDS", "Concept", "Lab", "LabError", "ModelError", "check_lambdas"]
