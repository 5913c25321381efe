"""Checking values that come from people (widgets, the API, the command line): each helper returns the value
in its proper type or raises a one-line :class:`~tad_demo.app.errors.UserError` naming the field and the limit.

    parse_int("4", "steps", 1, settings.max_steps)          # 4
    parse_seeds("1, 2", max_seeds=4)                         # [1, 2]
    parse_number(1e9, "guidance", 0, 30)                     # UserError: guidance: 1e+09 is outside [0, 30]

The limits come from the caller (the app's settings, ``core.limits``); the grid service, the research service and
the command line use the same helpers, so the same input gets the same answer everywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ..core.limits import APP
from ..core.world import SLOTS, slots
from ..research.lab import LabError, check_lambdas
from .errors import UserError

MAX_SEED = int(APP["max_seed"].default)


def parse_number(v: Any, what: str, lo: float, hi: float, hint: str = "") -> float:
    """A finite number in [lo, hi] (numeric strings are accepted)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise UserError(f"{what}: {v!r} is not a number") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise UserError(f"{what}: {v:g} is outside [{lo:g}, {hi:g}]{hint}")
    return float(v)


def parse_int(v: Any, what: str, lo: int, hi: int) -> int:
    """A whole number in lo..hi (3.0 from a number box is 3; 3.5 is refused)."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise UserError(f"{what}: {v!r} is not a whole number in {lo}..{hi}")
    if not lo <= v <= hi:
        raise UserError(f"{what}: {v} is outside {lo}..{hi}")
    return v


def parse_side(v: Any, what: str, lo: int, hi: int, multiple: int = 8) -> int:
    """An image side in pixels: a multiple of ``multiple`` in lo..hi."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v % multiple or not lo <= v <= hi:
        raise UserError(f"{what}: {v!r} is not a multiple of {multiple} in {lo}..{hi} pixels (TAD_MAX_SIDE)")
    return v


def parse_lambda(v: Any, what: str, max_lambda: float) -> float:
    """A λ within ±max_lambda."""
    return parse_number(v, what, -max_lambda, max_lambda,
                        hint=" (λ>0 ablates, 0 is the base, λ<0 enhances; TAD_MAX_LAMBDA)")


def split_list(text: Any, separators: str = r"[,;\s]+") -> list[str]:
    """The items of a list typed as text ("1, 2 3"), or of a list given as such, without empty ones."""
    items = list(text) if isinstance(text, (list, tuple)) else re.split(separators, str(text or "").strip())
    return [str(x).strip() for x in items if str(x).strip()]


def parse_seeds(text: Any, max_seeds: int, max_seed: int = MAX_SEED) -> list[int]:
    """1 … max_seeds distinct whole numbers in 0..max_seed, from "1, 2 3" or a list."""
    items = split_list(text)
    if not 1 <= len(items) <= max_seeds:
        raise UserError(f"seeds: give 1 to {max_seeds} whole numbers separated by commas, got {len(items)} "
                        "(TAD_MAX_SEEDS)")
    out = []
    for x in items:
        if not re.fullmatch(r"\d{1,19}", x) or int(x) > max_seed:
            raise UserError(f"seeds: {x!r} is not a whole number in 0..{max_seed}")
        out.append(int(x))
    if len(set(out)) != len(out):
        raise UserError("seeds: each seed once, please")
    return out


def parse_axis(text: Any, what: str, max_count: int, max_lambda: float) -> tuple[float, ...]:
    """The λ values of one grid axis in the order given ("1, 0.5, 0, -0.5, -1" or a list): 1 … max_count distinct
    finite numbers within ±max_lambda (never clamped: a value out of range is refused, naming the axis)."""
    items = split_list(text)
    if not 1 <= len(items) <= max_count:
        raise UserError(f"{what}: give 1 to {max_count} values separated by commas, got {len(items)} "
                        "(λ>0 ablates, 0 is the base, λ<0 enhances)")
    values = tuple(parse_lambda(x, what, max_lambda) for x in items)
    if len(set(values)) != len(values):
        raise UserError(f"{what}: each value once, please")
    return values


def parse_lambda_list(text: Any, what: str, max_count: int, max_lambda: float) -> list[float]:
    """1 … max_count distinct finite λ within ±max_lambda, sorted (the values of a sweep)."""
    items = split_list(text)
    if not 1 <= len(items) <= max_count:
        raise UserError(f"{what}: give 1 to {max_count} values separated by commas, got {len(items)}")
    try:
        return sorted(check_lambdas(items, what, max_lambda, distinct=True,
                                    hint=" (λ>0 ablates, 0 is the base, λ<0 enhances; TAD_MAX_LAMBDA)"))
    except LabError as e:
        raise UserError(str(e)) from None


def parse_choice(value: Any, what: str, known: Sequence[str], noun: str = "value") -> str:
    """One of ``known``."""
    if not isinstance(value, str) or value.strip() not in known:
        raise UserError(f"{what}: unknown {noun} {value!r}; known: {', '.join(known)}")
    return value.strip()


def parse_choices(values: Any, what: str, known: Sequence[str], noun: str = "value", *,
                  unique: bool = True, empty: str = "tick at least one") -> list[str]:
    """At least one of ``known``, in the order given ("a, b" or a list); each once when ``unique``."""
    if isinstance(values, str):
        values = [v for v in re.split(r"[,\s]+", values) if v]
    if not isinstance(values, (list, tuple)) or not values:
        raise UserError(f"{what}: {empty}")
    out = [parse_choice(v, what, known, noun) for v in values]
    if unique and len(set(out)) != len(out):
        raise UserError(f"{what}: each {noun} once, please")
    return out


def parse_line(text: Any, what: str, max_len: int, *, required: str | None = None) -> str:
    """One line of at most ``max_len`` characters, stripped; ``required`` is the message when it is empty (else
    empty text is returned as "")."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise UserError(f"{what}: expected text, got {type(text).__name__}")
    if required is not None and not text.strip():
        raise UserError(f"{what}: {required}")
    if len(text) > max_len or "\n" in text.strip():
        raise UserError(f"{what}: one line of at most {max_len} characters")
    return text.strip()


def check_template(template: Any, max_len: int) -> str:
    """A prompt template whose slots are {object} and/or {style} (or none)."""
    if not isinstance(template, str) or not template.strip():
        raise UserError("prompt: write a prompt (the slots {object} and {style} are optional)")
    if len(template) > max_len:
        raise UserError(f"prompt: {len(template)} characters; keep it under {max_len}")
    bad = [x for x in slots(template) if x not in SLOTS]
    if bad:
        raise UserError(f"prompt: unknown slot {{{bad[0]}}}; the slots are {{object}} and {{style}} (write literal "
                        "braces as {{ and }})")
    return template


def ordered_subset(values: Any, what: str, known: Iterable[str], default: str) -> list[str]:
    """Known values, each once, in ``known``'s order (a stable order: none, canny, depth, scribble)."""
    known = list(known)
    if isinstance(values, str):
        values = [values]
    values = list(dict.fromkeys(values or [default]))
    bad = [v for v in values if v not in known]
    if bad:
        raise UserError(f"{what}: {bad[0]!r} is not one of {', '.join(known)}")
    return [k for k in known if k in values]


def check_budget(what: str, images: int, steps: int, budget: int, how: str) -> None:
    """Refuse a run of more than ``budget`` image-steps (images × denoising steps) before anything loads."""
    if images * steps > budget:
        raise UserError(f"{what}: {how} = {images} images at {steps} steps is over this app's budget of {budget} "
                        "image-steps; use fewer values, prompts or steps (or the command line)")
