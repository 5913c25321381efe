"""The app's caps on a grid: the one check every grid passes before it runs, whether it came from the form, the
``/grid`` API or an uploaded recipe (``/reproduce``) — so no limit lives only in a widget.

    check_caps(spec, settings, budget=settings.budget("cpu"))            # the form's grid
    check_caps(spec, settings, budget=..., prefix="recipe ")            # "recipe guidance: 45 is outside [0, 30]"

The numbers come from ``core/limits.py`` through the settings; the engine's own bounds (``GridSpec.validate``)
are wider and hold for every caller.
"""

from __future__ import annotations

from ...core.limits import HARD
from ...grid import GridSpec
from ..errors import UserError
from ..settings import Settings
from ..validation import check_template, parse_int, parse_lambda, parse_number, parse_side
from .sources import NAME

LAMBDA_HINT = "λ>0 ablates, 0 is the base, λ<0 enhances"


def megapixel_steps(spec: GridSpec) -> float:
    """What a grid costs: images × denoising steps × pixels / 10⁶."""
    return spec.n_images * spec.steps * spec.height * spec.width / 1e6


def check_caps(spec: GridSpec, s: Settings, *, budget: float, prefix: str = "", axis_max: int = HARD.axis) -> None:
    """Every value of ``spec`` within the app's caps (one-line :class:`UserError` naming the field, else None)."""
    p = prefix
    for axis, concept, lams in (("object", spec.object, spec.object_lambdas),
                                ("style", spec.style, spec.style_lambdas)):
        if concept is None:
            continue
        if not 1 <= len(lams) <= axis_max:
            raise UserError(f"{p}{axis} λ: give 1 to {axis_max} values, got {len(lams)}")
        for lam in lams:
            parse_lambda(lam, f"{p}{axis} λ", s.max_lambda)
        if len(set(lams)) != len(lams):
            raise UserError(f"{p}{axis} λ: each value once, please ({LAMBDA_HINT})")
    for c in (spec.object, spec.style):
        if c is not None:
            check_word(c.name, f"{p}{c.kind} concept name")
            check_word(c.anchor, f"{p}{c.kind} concept anchor")
    if len(spec.extra) > s.max_extra:
        raise UserError(f"{p}extra concepts: at most {s.max_extra} (TAD_MAX_EXTRA)")
    for i, e in enumerate(spec.extra, 1):
        check_word(e.name, f"{p}extra concept {i} name")
        parse_lambda(e.lam, f"{p}extra concept {i} λ", s.max_lambda)
    check_template(spec.prompt_template, s.max_template)
    if not 1 <= len(spec.seeds) <= s.max_seeds:
        raise UserError(f"{p}seeds: give 1 to {s.max_seeds} (TAD_MAX_SEEDS)")
    for seed in spec.seeds:
        parse_int(seed, f"{p}seeds", 0, s.max_seed)
    parse_int(spec.steps, f"{p}steps", 1, s.max_steps)
    parse_number(spec.guidance, f"{p}guidance", 0.0, s.max_guidance)
    parse_side(spec.height, f"{p}height", s.min_side, s.max_side)
    parse_side(spec.width, f"{p}width", s.min_side, s.max_side)
    for c in spec.controls:
        if c.kind != "none":
            parse_number(c.scale, f"{p}{c.kind} conditioning scale", 0.0, s.max_scale)
    if spec.n_images > s.max_images:
        raise UserError(f"{p}the grid asks for {spec.n_images} images (cells × seeds × controls); the limit here is "
                        f"{s.max_images} (TAD_MAX_IMAGES): use fewer λ values, seeds or controls")
    cost = megapixel_steps(spec)
    if cost > budget:
        raise UserError(
            f"{p}the grid is {spec.n_images} images × {spec.steps} steps × {spec.width}×{spec.height} px = "
            f"{cost:.3g} megapixel-steps, over this app's budget of {budget:g} on this device "
            f"(TAD_GRID_BUDGET / TAD_CPU_GRID_BUDGET): lower the steps, the size, the seeds, the λ values or the "
            "controls")


def check_word(word: object, what: str) -> str:
    """A concept word (it goes into prompts and CLIP captions): 1–60 letters, digits, spaces, ' . -."""
    if not isinstance(word, str) or not NAME.fullmatch(word):
        shown = word if not isinstance(word, str) or len(word) <= 40 else word[:40] + "…"
        raise UserError(f"{what}: {shown!r} must be 1–60 letters/digits/spaces, starting with a letter")
    return word


__all__ = ["check_caps", "check_word", "megapixel_steps"]
