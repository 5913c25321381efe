"""Merge methods: combine several task vectors into one, chosen by name.

    from tad_demo import merge
    merged = merge([tv_a, tv_b], method="ties", weights=[1.0, 1.0], density=0.2)

    METHODS["ties"].params        # Param specs: name, default, valid range, description (widgets + validation)
    describe()                    # the whole registry as plain dicts/lists, for a UI
    get_method("ties")            # a MergeMethod (unknown names get a "did you mean" error)

Every method is a configuration of one generalised task-arithmetic pipeline (as in arcee-ai/mergekit's
``generalized_task_arithmetic`` and ljleb/sd-mecha), applied to each parameter tensor separately:

    1. stack      the vectors' tensors for this key; **a vector without the key contributes zeros**
    2. weight     τᵢ ← wᵢ·τᵢ
    3. sparsify   none | "magnitude" (keep each τᵢ's top `density` fraction by |value|)
                       | "dare" (drop each entry with probability p, rescale the rest by 1/(1−p))
    4. consensus  none | "ties" (elect a sign per entry; zero the entries that disagree with it)
    5. aggregate  "sum" | "disjoint_mean" (mean over the non-zero entries left) | "median"
    6. scale      × lambda_

    method        sparsify    consensus  aggregate      reference
    linear        -           -          sum            https://arxiv.org/abs/2212.04089
    ties          magnitude   ties       disjoint_mean  https://arxiv.org/abs/2306.01708
    dare_linear   dare        -          sum            https://arxiv.org/abs/2311.03099
    dare_ties     dare        ties       disjoint_mean  https://arxiv.org/abs/2311.03099
    dare          dare        `combine`  (either of the two above)
    median        -           -          median         "Multi-Concept Editing using Task Arithmetic" ("Median")
    topp          magnitude   -          sum            the same paper's "Sparse" (top-p percentile) combination

Missing keys are zero entries, which matters for the non-additive methods: ``median`` counts them as values
(the median of {3} and a missing entry is 1.5), ``ties``' disjoint mean does not count them (zeros never agree
with an elected sign: as in TIES, a trimmed entry is not a vote). For ``linear``/``topp`` they change nothing.
The result carries the union of the inputs' keys (in first-seen order). All math is fp32.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import MergeError
from .task_vector import TaskVector

log = logging.getLogger(__name__)

__all__ = ["METHODS", "MergeError", "MergeMethod", "Param", "describe", "get_method", "merge", "method_names",
           "register"]


# --- parameter specs -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One parameter of a merge method: enough to build a widget and to validate a value.

    ``low``/``high`` bound the valid range (None = unbounded; ``*_inclusive`` says whether the bound itself is
    allowed). ``slider`` is only a suggested UI range for unbounded parameters. ``choices`` makes it a dropdown.
    """

    name: str
    default: Any
    description: str
    kind: str = "float"                      # "float" | "int" | "choice"
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    choices: tuple[str, ...] = ()
    slider: tuple[float, float] | None = None

    def range_text(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        lo = "(-inf" if self.low is None else ("[" if self.low_inclusive else "(") + f"{self.low:g}"
        hi = "inf)" if self.high is None else f"{self.high:g}" + ("]" if self.high_inclusive else ")")
        return f"{lo}, {hi}"

    def check(self, method: str, value: Any) -> Any:
        """The value, coerced to the parameter's type, or a MergeError naming the parameter and the value."""
        bad = MergeError(f"{method}: parameter {self.name}={value!r} is invalid; must be {self.kind} in "
                         f"{self.range_text()}")
        if self.kind == "choice":
            if value not in self.choices:
                raise bad
            return value
        # bool is an int subclass; True as a density is surely a mistake.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        if self.kind == "int":
            if float(value) != int(value):  # UI number boxes send 3.0 for 3; accept that, not 3.5
                raise bad
            value = int(value)
        else:
            value = float(value)
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            raise bad
        if self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive)):
            raise bad
        return value

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "default": self.default, "description": self.description,
                "low": self.low, "high": self.high, "low_inclusive": self.low_inclusive,
                "high_inclusive": self.high_inclusive, "choices": list(self.choices),
                "slider": list(self.slider) if self.slider else None, "range": self.range_text()}


# Shared parameter specs (one definition each, so the same name means the same thing in every method).
DENSITY = Param("density", 0.2, "fraction of each vector's entries kept per tensor, by magnitude",
                low=0.0, high=1.0, low_inclusive=False)
DROP_P = Param("p", 0.5, "probability of dropping each entry (kept entries are rescaled by 1/(1-p))",
               low=0.0, high=1.0, high_inclusive=False)
SEED = Param("seed", 0, "random seed of the drop masks (same seed, same result)", kind="int", low=0)
LAMBDA = Param("lambda_", 1.0, "global scale of the merged vector", slider=(-3.0, 3.0))
COMBINE = Param("combine", "linear", "how the dropped-and-rescaled vectors are combined", kind="choice",
                choices=("linear", "ties"))


@dataclass(frozen=True)
class MergeMethod:
    """A named merge function with its reference and parameter specs.

    ``reference`` is the paper's URL, or "" when it has no public link; ``citation`` names the paper either way.
    """

    name: str
    description: str
    reference: str
    citation: str
    params: tuple[Param, ...]
    fn: Callable[..., TaskVector] = field(repr=False)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``params``, each checked; an unknown name is an error (not silently ignored)."""
        known = {p.name: p for p in self.params}
        for name in params:
            if name not in known:
                near = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise MergeError(f"method {self.name!r} has no parameter {name!r}; {hint}its parameters: "
                                 f"{', '.join(known) or '(none)'}")
        return {n: p.check(self.name, params[n]) if n in params else p.default for n, p in known.items()}

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "reference": self.reference,
                "citation": self.citation, "params": [p.as_dict() for p in self.params]}


METHODS: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    """Add (or replace) a method in the registry."""
    METHODS[method.name] = method
    return method


def method_names() -> list[str]:
    return list(METHODS)


def describe() -> list[dict[str, Any]]:
    """The registry as plain Python data (names, descriptions, URLs, parameter specs) for building widgets."""
    return [m.as_dict() for m in METHODS.values()]


def get_method(name: str) -> MergeMethod:
    key = str(name).strip().lower().replace("-", "_")
    if key in METHODS:
        return METHODS[key]
    near = difflib.get_close_matches(key, METHODS, n=1, cutoff=0.5)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise MergeError(f"unknown merge method {name!r}; {hint}known methods: {', '.join(METHODS)}")


# --- the generalised pipeline ----------------------------------------------------------------------------------
def _trim(x: torch.Tensor, density: float) -> torch.Tensor:
    """Keep each row's top ``k = int(density · numel)`` entries by magnitude, zero the rest.

    x: (n_vectors, numel). k rounds down as in PEFT (``magnitude_based_pruning``) and mergekit, so a tensor with
    density · numel < 1 is dropped whole. Entries tied with the threshold magnitude are all kept, so the result is
    deterministic (PEFT and mergekit keep an arbitrary k of them; with distinct magnitudes the results are equal).
    """
    numel = x.shape[1]
    k = int(density * numel)
    if k >= numel:
        return x
    if k == 0:
        return torch.zeros_like(x)
    mags = x.abs()
    threshold = mags.topk(k, dim=1).values[:, -1:]      # k-th largest |value| of each row
    return x * (mags >= threshold)


def _seed_for(seed: int, key: str, index: int) -> int:
    # A stable hash (Python's hash() is salted per process): the mask of a tensor depends only on the seed, the
    # key and the vector's position, not on dict order or on which other keys exist.
    digest = hashlib.sha256(f"{seed}\0{index}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _dare(x: torch.Tensor, p: float, seed: int, key: str) -> torch.Tensor:
    """Drop each entry with probability p and rescale the survivors by 1/(1−p), so the expectation is unchanged."""
    if p == 0:
        return x
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        gen = torch.Generator().manual_seed(_seed_for(seed, key, i))
        keep = torch.rand(x.shape[1], generator=gen) >= p
        out[i] = x[i] * keep / (1.0 - p)
    return out


def _ties_consensus(x: torch.Tensor) -> torch.Tensor:
    """TIES "elect": the sign of each entry's sum wins; entries of the other sign (and zeros) are dropped.

    An entry whose sum is exactly 0 elects no sign, so it merges to 0.
    """
    elected = torch.sign(x.sum(dim=0))
    return x * (torch.sign(x) == elected)


def _aggregate(x: torch.Tensor, how: str) -> torch.Tensor:
    if how == "sum":
        return x.sum(dim=0)
    if how == "disjoint_mean":
        # TIES "disjoint merge": average only over the vectors that kept this entry (non-zero after steps 3-4).
        count = (x != 0).sum(dim=0).clamp(min=1)
        return x.sum(dim=0) / count
    if how == "median":
        # The textbook median: the mean of the two middle values for an even count (torch.median returns the
        # lower one, which would bias two-vector merges towards the smaller value).
        s = x.sort(dim=0).values
        m = s.shape[0] // 2
        return s[m] if s.shape[0] % 2 else (s[m - 1] + s[m]) / 2
    raise AssertionError(how)


def _combine(vectors: Sequence[TaskVector], weights: Sequence[float], *, sparsify: str | None = None,
             density: float = 1.0, p: float = 0.0, seed: int = 0, consensus: str | None = None,
             aggregate: str = "sum", lambda_: float = 1.0) -> TaskVector:
    """Steps 1-6 of the module docstring, tensor by tensor."""
    keys = list(dict.fromkeys(k for tv in vectors for k in tv.deltas))
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        present = [tv.deltas[key] for tv in vectors if key in tv.deltas]
        shape = present[0].shape
        if any(t.shape != shape for t in present):
            shapes = sorted({tuple(t.shape) for t in present})
            raise MergeError(f"cannot merge: key {key!r} has different shapes across vectors {shapes}")
        zeros = torch.zeros(shape, dtype=torch.float32)
        x = torch.stack([tv.deltas.get(key, zeros).to(torch.float32).reshape(-1) for tv in vectors])
        x = x * torch.tensor(weights, dtype=torch.float32).unsqueeze(1)
        if sparsify == "magnitude":
            x = _trim(x, density)
        elif sparsify == "dare":
            x = _dare(x, p, seed, key)
        if consensus == "ties":
            x = _ties_consensus(x)
        merged = _aggregate(x, aggregate)
        out[key] = (merged * lambda_ if lambda_ != 1.0 else merged).reshape(shape)
    return TaskVector(out)


# --- the methods: configurations of _combine -------------------------------------------------------------------
def linear(vectors: Sequence[TaskVector], weights: Sequence[float]) -> TaskVector:
    """Σ wᵢ τᵢ — task arithmetic (Ilharco et al., https://arxiv.org/abs/2212.04089)."""
    return _combine(vectors, weights)


def ties(vectors: Sequence[TaskVector], weights: Sequence[float], *, density: float, lambda_: float) -> TaskVector:
    """TIES-merging (Yadav et al., https://arxiv.org/abs/2306.01708): trim, elect sign, disjoint mean, × λ.

    Weights scale each vector before trimming and election; the disjoint mean divides by the number of agreeing
    vectors (not by the sum of their weights, as mergekit's ``normalize`` does), so a single vector with weight w
    merges to w·trim(τ) and negative weights (enhancement) behave like they do in ``linear``.
    """
    return _combine(vectors, weights, sparsify="magnitude", density=density, consensus="ties",
                    aggregate="disjoint_mean", lambda_=lambda_)


def dare(vectors: Sequence[TaskVector], weights: Sequence[float], *, p: float, seed: int, combine: str,
         lambda_: float) -> TaskVector:
    """DARE (Yu et al., https://arxiv.org/abs/2311.03099): random drop + rescale, then ``linear`` or TIES-style
    sign election and disjoint mean (without magnitude trimming: DARE already sparsified)."""
    if combine == "ties":
        return _combine(vectors, weights, sparsify="dare", p=p, seed=seed, consensus="ties",
                        aggregate="disjoint_mean", lambda_=lambda_)
    return _combine(vectors, weights, sparsify="dare", p=p, seed=seed, lambda_=lambda_)


def median(vectors: Sequence[TaskVector], weights: Sequence[float], *, lambda_: float) -> TaskVector:
    """Element-wise median of the weighted vectors × λ ("Multi-Concept Editing using Task Arithmetic", "Median";
    λ is the paper's global magnitude factor)."""
    return _combine(vectors, weights, aggregate="median", lambda_=lambda_)


def topp(vectors: Sequence[TaskVector], weights: Sequence[float], *, density: float) -> TaskVector:
    """Keep each weighted vector's top ``density`` fraction by magnitude per tensor, then add (the paper's
    "Sparse" combination; the same trim as TIES without the sign election)."""
    return _combine(vectors, weights, sparsify="magnitude", density=density)


# The multi-concept paper is an anonymous submission under review: no public link to give.
_MULTI_CONCEPT = "Multi-Concept Editing using Task Arithmetic (anonymous submission, under review)"
_TA = ("https://arxiv.org/abs/2212.04089", "Ilharco et al., Editing Models with Task Arithmetic, ICLR 2023")
_TIES = ("https://arxiv.org/abs/2306.01708", "Yadav et al., TIES-Merging: Resolving Interference When Merging "
         "Models, NeurIPS 2023")
_DARE = ("https://arxiv.org/abs/2311.03099", "Yu et al., Language Models are Super Mario: Absorbing Abilities from "
         "Homologous Models as a Free Lunch (DARE), ICML 2024")

register(MergeMethod("linear", "weighted sum of the task vectors (task arithmetic)", *_TA, (), linear))
register(MergeMethod("ties", "trim to top-density magnitudes, elect a sign per entry, average the agreeing entries",
                     *_TIES, (DENSITY, LAMBDA), ties))
register(MergeMethod("dare", "randomly drop entries with probability p, rescale the rest, then combine",
                     *_DARE, (DROP_P, SEED, COMBINE, LAMBDA), dare))
register(MergeMethod("dare_linear", "DARE drop-and-rescale, then a weighted sum", *_DARE, (DROP_P, SEED, LAMBDA),
                     lambda v, w, **kw: dare(v, w, combine="linear", **kw)))
register(MergeMethod("dare_ties", "DARE drop-and-rescale, then TIES sign election and disjoint mean", *_DARE,
                     (DROP_P, SEED, LAMBDA), lambda v, w, **kw: dare(v, w, combine="ties", **kw)))
register(MergeMethod("median", "element-wise median of the weighted vectors (missing keys count as zeros)",
                     "", _MULTI_CONCEPT, (LAMBDA,), median))
register(MergeMethod("topp", "keep each vector's top-density magnitudes per tensor, then add",
                     "", _MULTI_CONCEPT, (DENSITY,), topp))


# --- entry point -------------------------------------------------------------------------------------------------
def _check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    weights = list(weights)
    if len(weights) != n:
        raise MergeError(f"got {len(weights)} weight(s) for {n} vector(s); pass one weight per vector "
                         "(or weights=None for all 1.0)")
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise MergeError(f"weights[{i}]={w!r} is not a finite number")
    return [float(w) for w in weights]


def merge(vectors: Sequence[TaskVector], method: str = "linear", weights: Sequence[float] | None = None,
          **params: Any) -> TaskVector:
    """Merge task vectors with a registered method (see the module docstring and ``describe()``).

    ``weights`` (default all 1.0) scale each vector first; a negative weight enhances instead of ablating.
    ``params`` are the method's parameters (e.g. ``density=0.2`` for ties); unknown or out-of-range values raise
    ``MergeError`` (a ``TaskVectorError``).
    """
    m = get_method(method)
    vectors = list(vectors)
    if not vectors:
        raise MergeError("no task vectors to merge; pass at least one TaskVector")
    for i, tv in enumerate(vectors):
        if not isinstance(tv, TaskVector):
            raise MergeError(f"vectors[{i}] is a {type(tv).__name__}, not a TaskVector "
                             "(build one with TaskVector.from_pair(base, finetuned))")
    w = _check_weights(weights, len(vectors))
    cfg = m.validate(params)
    log.debug("merging %d vector(s) with %s, weights=%s, params=%s", len(vectors), m.name, w, cfg)
    return m.fn(vectors, w, **cfg)
