"""The plan of a grid, from its spec alone: which cells share weights and which pipeline calls generate them.

    plan = GridPlan.of(spec, batch_size=16)
    plan.cells[(0, 2)]      # the cell's non-zero terms: object λ, style λ, then every extra vector
    plan.calls              # one pipeline call per (weights, controls that share a ControlNet and scale)
    plan.total_steps        # the denoising steps progress counts over the whole grid

Cells with the same weights (repeated λs, a missing axis) are generated once; all images that share weights come
from one pipeline call per pipeline (all seeds, all controls with the same ControlNet and conditioning scale).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.merge_methods import merge
from ..core.recipe import Recipe, VectorSpec
from ..runtime.models import source_key
from .spec import ControlSpec, GridSpec

TEXT_ENCODER = "text_encoder."
Position = tuple[int, int]                 # (row, col)
WeightKey = tuple[tuple[str, float], ...]  # the (name, λ) terms of a cell: equal keys ⇒ equal weights


@dataclass(frozen=True)
class Term:
    """One (vector, λ) of a cell; the vector itself is the one built for ``name``."""

    name: str
    source: str
    format: str
    lam: float


@dataclass(frozen=True)
class Call:
    """One pipeline call: the weights it runs under and the controls it generates (each with every seed)."""

    weights: WeightKey
    controls: tuple[ControlSpec, ...]
    steps: int  # denoising steps it reports: spec.steps × its batches


@dataclass
class GridPlan:
    spec: GridSpec
    cells: dict[Position, list[Term]]          # every cell, row-major
    groups: dict[WeightKey, list[Position]]    # cells that share weights, in order of first appearance
    calls: list[Call]

    @classmethod
    def of(cls, spec: GridSpec, batch_size: int) -> GridPlan:
        cells = {(r, c): cell_terms(spec, lo, ls)
                 for r, lo in enumerate(spec.row_lambdas) for c, ls in enumerate(spec.col_lambdas)}
        groups: dict[WeightKey, list[Position]] = {}
        for pos, terms in cells.items():
            groups.setdefault(weight_key(terms), []).append(pos)
        # Controls that share a pipeline and conditioning scale go into the same call.
        pipes: dict[tuple, list[ControlSpec]] = {}
        for ctl in spec.controls:
            k = ("none",) if ctl.kind == "none" else (source_key(str(ctl.model)), float(ctl.scale))
            pipes.setdefault(k, []).append(ctl)
        n_seeds = len(spec.seeds)
        calls = [Call(key, tuple(group), spec.steps * math.ceil(len(group) * n_seeds / batch_size))
                 for key in groups for group in pipes.values()]
        return cls(spec, cells, groups, calls)

    @property
    def total_steps(self) -> int:
        return sum(c.steps for c in self.calls)

    def terms(self, key: WeightKey) -> list[Term]:
        return self.cells[self.groups[key][0]]

    def combination(self, key: WeightKey, vectors: Mapping[str, Any]) -> list[tuple[str, Any, float]]:
        """What the patcher applies for these weights: Σ λ·τ directly for linear (exact arithmetic, λ=0 ⇒ base
        bytes), else the merged vector of the registry's method with the λs as weights."""
        terms, spec = self.terms(key), self.spec
        if not terms:
            return []
        if spec.merge == "linear" and not spec.merge_params:
            return [(t.name, vectors[t.name], t.lam) for t in terms]
        merged = merge([vectors[t.name] for t in terms], method=spec.merge, weights=[t.lam for t in terms],
                       **spec.merge_params)
        return [(f"{spec.merge}({'+'.join(t.name for t in terms)})", merged, 1.0)]

    def touches_text_encoder(self, key: WeightKey, vectors: Mapping[str, Any]) -> bool:
        """Whether these weights change the text encoder (then prompts are encoded again under the patch)."""
        return any(k.startswith(TEXT_ENCODER) for t in self.terms(key) for k in vectors[t.name].keys())

    def recipe(self, terms: list[Term]) -> Recipe:
        """The recipe of a cell's weights: its non-zero vectors (λ = 0 terms contribute nothing)."""
        spec = self.spec
        vectors = [VectorSpec(name=t.name, source=t.source, kind=t.format, lam=t.lam) for t in terms]
        inputs = [spec.base] + [t.source for t in terms]
        return Recipe(base=spec.base, vectors=vectors, method=spec.merge, params=dict(spec.merge_params),
                      scope=spec.scope, hashes={k: spec.hashes[k] for k in inputs if k in spec.hashes})


def cell_terms(spec: GridSpec, object_lambda: float | None, style_lambda: float | None) -> list[Term]:
    """The non-zero (vector, λ) terms of a cell: object λ, style λ, then every extra vector."""
    terms = [Term(c.name, c.source, c.format, lam) for c, lam in ((spec.object, object_lambda),
                                                                  (spec.style, style_lambda)) if c is not None and lam]
    return terms + [Term(e.name, e.source, e.format, float(e.lam)) for e in spec.extra if e.lam]


def weight_key(terms: list[Term]) -> WeightKey:
    """Cells with equal keys have equal weights (vectors are fixed per name within a run)."""
    return tuple((t.name, t.lam) for t in terms)
