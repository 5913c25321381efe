"""The concept grid: GridSpec → cells → batched generation under hot-patched weights → labelled grids + metrics.

    spec = toy_world_spec("assets/toyworld", object="smiley", style="striped", controls=("none", "canny"))
    result = run_grid(spec, models=Models(), progress=print_stage, cancel=event.is_set)
    save(result, "out/")   # grid.png, grid_<control>.png, metrics.csv, recipe.yaml, images/*.png, conditions/

Contract (issue 4, DESIGN ★2):
* rows = object axis, columns = style axis, one grid per control; λ > 0 ablates, 0 is the base, λ < 0 enhances;
* every cell uses the same seeds, hence the same initial latents (``sampling.initial_latents``), and the same
  prompt: the template filled with the *target* concept names (the weights change, the prompt doesn't);
* extra vectors (multi-concept addition) apply to every cell with their own λ;
* all images that share weights come from one pipeline call per pipeline (all seeds, all controls that share a
  ControlNet and scale); each prompt is encoded once (the text encoder is re-encoded under the patch only when
  a vector touches it); weights switch by exact hot patching (``WeightPatcher``), never by reloading;
* the ControlNet pipelines are built from the plain pipeline's components, so one patcher patches all of them;
* ``metrics.csv`` has one row per cell × seed × control with at least :data:`STAR2_COLUMNS`.

``progress(stage, i, n)`` is called with stages ``"loading"``, ``"building vectors"``,
``"denoising step s/N of cell j/M"`` (i/n counts denoising steps over the whole grid) and ``"scoring"``.
``cancel()`` is polled before each stage and after every denoising step; when it returns true, :class:`Cancelled`
is raised and the weights are back at the base (the patcher's context manager restores them).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import string
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from .control import CONTROL_KINDS, RESIZE_MODES, prepare
from .models import Models, _source_key
from .recipe import VECTOR_KINDS, Recipe, VectorSpec, metadata_for, sha256_path

log = logging.getLogger(__name__)

GRID_VERSION = 1
STAR2_COLUMNS = ("object_lambda", "style_lambda", "control", "seed", "prompt", "clip_score_object",
                 "clip_accuracy_object", "clip_score_style", "clip_accuracy_style")
METRIC_COLUMNS = (*STAR2_COLUMNS, "object", "object_anchor", "style", "style_anchor", "extra", "row", "col", "image")
SLOTS = ("object", "style")
MERGE_METHODS_LINEAR = "linear"

# Defensive bounds: the service clamps widget values further; these stop nonsense from any caller.
LAMBDA_MAX = 100.0
MAX_STEPS = 1000
MAX_SIDE = 2048
MAX_IMAGES = 1024  # cells × seeds × controls
MAX_AXIS = 9

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]


class GridError(ValueError):
    """A grid that cannot run as specified; the one-line message names the field and what to do."""


class Cancelled(RuntimeError):
    """The user cancelled the grid; the model's weights are back at the base."""


# --- the specification ----------------------------------------------------------------------------------

@dataclass
class ConceptSpec:
    """An axis concept: the target ``name`` (the prompt word), its ``anchor`` and the checkpoint that ablates it."""

    name: str
    anchor: str
    source: str
    kind: str = "ablation"  # recipe.VECTOR_KINDS: ablation/finetuned (weights file), vector (saved τ), lora


@dataclass
class ExtraVector:
    """A vector applied to every cell with its own λ (multi-concept addition)."""

    name: str
    source: str
    lam: float = 1.0
    kind: str = "ablation"


@dataclass
class ControlSpec:
    """One control layer: ``kind`` in CONTROL_KINDS, a ready condition ``image`` (PIL) and the ControlNet ``model``."""

    kind: str = "none"
    image: Image.Image | None = None
    model: str | None = None
    scale: float = 1.0
    image_path: str | None = None  # where the condition came from (YAML round-trip, provenance)

    @property
    def name(self) -> str:
        return self.kind


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class GridSpec:
    """Everything that determines a grid's images and metrics (YAML round-trip: ``to_yaml``/``from_yaml``)."""

    base: str
    object: ConceptSpec | None = None
    style: ConceptSpec | None = None
    object_lambdas: tuple[float, ...] = (1.0, 0.0, -1.0)
    style_lambdas: tuple[float, ...] = (1.0, 0.0, -1.0)
    extra: list[ExtraVector] = field(default_factory=list)
    merge: str = "linear"
    merge_params: dict[str, Any] = field(default_factory=dict)
    scope: str | None = None
    controls: list[ControlSpec] = field(default_factory=lambda: [ControlSpec("none")])
    control_resize: str = "resize"
    prompt_template: str = "a {object} in {style} style"
    seeds: list[int] = field(default_factory=lambda: [42])
    steps: int = 20
    guidance: float = 5.0
    height: int = 64
    width: int = 64
    clip: str | None = None
    hashes: dict[str, str] = field(default_factory=dict)

    # --- derived ---------------------------------------------------------------------------------------
    @property
    def row_lambdas(self) -> list[float | None]:
        return [float(x) for x in self.object_lambdas] if self.object else [None]

    @property
    def col_lambdas(self) -> list[float | None]:
        return [float(x) for x in self.style_lambdas] if self.style else [None]

    @property
    def prompt(self) -> str:
        """The template filled with the target names: one prompt for every cell."""
        fill = {"object": self.object.name if self.object else "", "style": self.style.name if self.style else ""}
        return self.prompt_template.format(**fill).strip()

    @property
    def n_images(self) -> int:
        return len(self.row_lambdas) * len(self.col_lambdas) * len(self.seeds) * len(self.controls)

    def vector_names(self) -> list[str]:
        return ([self.object.name] if self.object else []) + ([self.style.name] if self.style else []) + \
            [e.name for e in self.extra]

    # --- validation ------------------------------------------------------------------------------------
    def validate(self) -> GridSpec:
        """Raise GridError on the first problem; returns self so calls chain."""
        from .merge_methods import get_method

        if not self.base or not isinstance(self.base, str):
            raise GridError("base: a diffusers folder, a .safetensors file or a Hub id is required")
        for axis, concept, lams in (("object", self.object, self.object_lambdas),
                                    ("style", self.style, self.style_lambdas)):
            if concept is None:
                continue
            if not isinstance(concept, ConceptSpec):
                raise GridError(f"{axis}: expected a ConceptSpec(name, anchor, source), got {type(concept).__name__}")
            for f in ("name", "anchor", "source"):
                if not isinstance(getattr(concept, f), str) or not getattr(concept, f).strip():
                    raise GridError(f"{axis}.{f} is empty; every axis concept needs a name, an anchor and a "
                                    "checkpoint source")
            if concept.kind not in VECTOR_KINDS:
                raise GridError(f"{axis}.kind {concept.kind!r} is not one of {', '.join(VECTOR_KINDS)}")
            if not lams or len(lams) > MAX_AXIS:
                raise GridError(f"{axis}_lambdas: give 1 to {MAX_AXIS} values, got {len(lams or ())}")
            for lam in lams:
                if not _finite(lam) or abs(lam) > LAMBDA_MAX:
                    raise GridError(f"{axis}_lambdas: {lam!r} is not a number in [-{LAMBDA_MAX:g}, {LAMBDA_MAX:g}] "
                                    "(λ>0 ablates, 0 is the base, λ<0 enhances)")
        for i, e in enumerate(self.extra):
            if not isinstance(e, ExtraVector) or not e.name or not e.source:
                raise GridError(f"extra[{i}]: needs a name and a source")
            if e.kind not in VECTOR_KINDS:
                raise GridError(f"extra[{i}] ({e.name}).kind {e.kind!r} is not one of {', '.join(VECTOR_KINDS)}")
            if not _finite(e.lam) or abs(e.lam) > LAMBDA_MAX:
                raise GridError(f"extra[{i}] ({e.name}): λ {e.lam!r} is not a number in "
                                f"[-{LAMBDA_MAX:g}, {LAMBDA_MAX:g}]")
        names = self.vector_names()
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise GridError(f"concept/vector name(s) {dup} used twice; give every vector its own name")
        try:
            get_method(self.merge).validate(dict(self.merge_params))
        except ValueError as e:
            raise GridError(f"merge: {e}") from None
        self._validate_template()
        self._validate_controls()
        if not self.seeds:
            raise GridError("seeds: give at least one seed")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63:
                raise GridError(f"seeds: {s!r} is not an integer in [0, 2^63)")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise GridError(f"steps: {self.steps!r} is not an integer in 1..{MAX_STEPS}")
        if not _finite(self.guidance) or not 0 <= self.guidance <= 50:
            raise GridError(f"guidance: {self.guidance!r} is not a number in [0, 50]")
        for f in ("height", "width"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or not 8 <= v <= MAX_SIDE or v % 8:
                raise GridError(f"{f}: {v!r} is not a multiple of 8 in 8..{MAX_SIDE}")
        if self.n_images > MAX_IMAGES:
            raise GridError(f"the grid asks for {self.n_images} images (cells × seeds × controls); the limit is "
                            f"{MAX_IMAGES}: use fewer seeds, λ values or controls")
        if self.clip is not None and (not isinstance(self.clip, str) or not self.clip):
            raise GridError("clip: a CLIP model spec (folder, NAME/PRETRAINED or NAME:FILE) or None for no metrics")
        return self

    def _validate_template(self) -> None:
        if not isinstance(self.prompt_template, str) or not self.prompt_template.strip():
            raise GridError("prompt_template is empty; write a prompt (slots {object} and {style} are optional)")
        try:
            fields = [f for _, f, spec, conv in string.Formatter().parse(self.prompt_template) if f is not None]
        except ValueError as e:
            raise GridError(f"prompt_template: {e} (write literal braces as {{{{ and }}}})") from None
        for f in fields:
            if f not in SLOTS:
                raise GridError(f"prompt_template: unknown slot {{{f}}}; the slots are {{object}} and {{style}}")
            if getattr(self, f) is None:
                raise GridError(f"prompt_template uses {{{f}}} but no {f} concept is selected; pick one or write "
                                f"the {f} into the prompt")

    def _validate_controls(self) -> None:
        if not self.controls:
            raise GridError("controls: give at least one (\"none\" for no control)")
        if self.control_resize not in RESIZE_MODES:
            raise GridError(f"control_resize {self.control_resize!r} is not one of {', '.join(RESIZE_MODES)}")
        kinds = [c.kind for c in self.controls]
        for c in self.controls:
            if c.kind not in CONTROL_KINDS:
                raise GridError(f"control {c.kind!r} is not one of {', '.join(CONTROL_KINDS)}")
            if kinds.count(c.kind) > 1:
                raise GridError(f"control {c.kind!r} is listed twice; one grid per control")
            if c.kind == "none":
                continue
            if c.image is None:
                raise GridError(f"control {c.kind!r} needs a condition image: upload one, pick an example or draw "
                                "a sketch")
            if not isinstance(c.image, Image.Image):
                raise GridError(f"control {c.kind!r}: the condition must be a PIL image, got "
                                f"{type(c.image).__name__}")
            if not c.model:
                raise GridError(f"control {c.kind!r} needs a ControlNet model (folder or Hub id)")
            if not _finite(c.scale) or not 0 <= c.scale <= 5:
                raise GridError(f"control {c.kind!r}: conditioning scale {c.scale!r} is not a number in [0, 5]")

    # --- YAML ------------------------------------------------------------------------------------------
    def to_dict(self, image_paths: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A plain dict; condition images are referenced by path (``image_paths[kind]`` or ``image_path``)."""
        def concept(c: ConceptSpec | None):
            return None if c is None else {"name": c.name, "anchor": c.anchor, "source": c.source, "kind": c.kind}

        controls = []
        for c in self.controls:
            d: dict[str, Any] = {"kind": c.kind}
            if c.kind != "none":
                d.update(model=c.model, scale=float(c.scale),
                         image=(image_paths or {}).get(c.kind, c.image_path))
            controls.append(d)
        return {
            "tad_grid": GRID_VERSION,
            "base": self.base,
            "object": concept(self.object),
            "style": concept(self.style),
            "object_lambdas": [float(x) for x in self.object_lambdas],
            "style_lambdas": [float(x) for x in self.style_lambdas],
            "extra": [{"name": e.name, "source": e.source, "kind": e.kind, "lambda": float(e.lam)} for e in self.extra],
            "merge": {"method": self.merge, "params": dict(self.merge_params)},
            "scope": self.scope,
            "controls": controls,
            "control_resize": self.control_resize,
            "prompt_template": self.prompt_template,
            "seeds": [int(s) for s in self.seeds],
            "steps": int(self.steps),
            "guidance": float(self.guidance),
            "height": int(self.height),
            "width": int(self.width),
            "clip": self.clip,
            "hashes": dict(self.hashes),
        }

    def to_yaml(self, image_paths: Mapping[str, str] | None = None) -> str:
        return yaml.safe_dump(self.to_dict(image_paths), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: str | Path | None = None, origin: str = "grid") -> GridSpec:
        """Read a dict written by ``to_dict``; relative condition image paths are resolved against ``base_dir``."""
        if not isinstance(d, Mapping):
            raise GridError(f"{origin}: expected a mapping at the top level, got {type(d).__name__}")
        if d.get("tad_grid") != GRID_VERSION:
            raise GridError(f"{origin}: missing or unsupported 'tad_grid: {GRID_VERSION}' version header "
                            f"(found {d.get('tad_grid')!r})")
        known = set(cls(base="x").to_dict())
        unknown = set(d) - known
        if unknown:
            raise GridError(f"{origin}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")

        def concept(key: str) -> ConceptSpec | None:
            c = d.get(key)
            if c is None:
                return None
            if not isinstance(c, Mapping) or not {"name", "anchor", "source"} <= set(c):
                raise GridError(f"{origin}: {key} needs name, anchor and source")
            return ConceptSpec(str(c["name"]), str(c["anchor"]), str(c["source"]), str(c.get("kind", "ablation")))

        controls = []
        for i, c in enumerate(d.get("controls") or [{"kind": "none"}]):
            if not isinstance(c, Mapping) or "kind" not in c:
                raise GridError(f"{origin}: controls[{i}] needs a kind")
            img, path = None, c.get("image")
            if path:
                p = Path(path) if Path(path).is_absolute() or base_dir is None else Path(base_dir) / path
                if not p.is_file():
                    raise GridError(f"{origin}: controls[{i}] condition image {str(p)!r} not found")
                with Image.open(p) as im:
                    img = im.convert("RGB")
            controls.append(ControlSpec(kind=str(c["kind"]), image=img, model=c.get("model"),
                                        scale=c.get("scale", 1.0), image_path=path))
        merge = d.get("merge") or {}
        extra = [ExtraVector(str(e.get("name") or Path(str(e["source"])).stem), str(e["source"]),
                             e.get("lambda", 1.0), str(e.get("kind", "ablation"))) for e in d.get("extra") or []]
        defaults = cls(base="x")
        spec = cls(
            base=str(d.get("base") or ""), object=concept("object"), style=concept("style"),
            object_lambdas=tuple(d.get("object_lambdas") or defaults.object_lambdas),
            style_lambdas=tuple(d.get("style_lambdas") or defaults.style_lambdas),
            extra=extra, merge=str(merge.get("method", "linear")), merge_params=dict(merge.get("params") or {}),
            scope=d.get("scope"), controls=controls, control_resize=d.get("control_resize", "resize"),
            prompt_template=d.get("prompt_template", defaults.prompt_template),
            seeds=list(d.get("seeds") or defaults.seeds), steps=d.get("steps", defaults.steps),
            guidance=d.get("guidance", defaults.guidance), height=d.get("height", defaults.height),
            width=d.get("width", defaults.width), clip=d.get("clip"), hashes=dict(d.get("hashes") or {}))
        return spec.validate()

    @classmethod
    def from_yaml(cls, text: str, base_dir: str | Path | None = None, origin: str = "grid") -> GridSpec:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise GridError(f"{origin}: not valid YAML ({str(e).splitlines()[0]})") from None
        return cls.from_dict(data, base_dir, origin)

    @classmethod
    def load(cls, path: str | Path) -> GridSpec:
        p = Path(path)
        if not p.is_file():
            raise GridError(f"grid config {str(p)!r} not found")
        return cls.from_yaml(p.read_text(), base_dir=p.parent, origin=str(p))

    # --- provenance ------------------------------------------------------------------------------------
    def inputs(self) -> list[str]:
        """Every file/folder/Hub id the grid reads."""
        out = [self.base] + [c.source for c in (self.object, self.style) if c] + [e.source for e in self.extra]
        out += [c.model for c in self.controls if c.model]
        if self.clip:
            out.append(self.clip.removeprefix("local-dir:"))
        return list(dict.fromkeys(out))

    def with_hashes(self) -> GridSpec:
        """A copy with the sha256 of every local input and of each condition image's pixels."""
        import hashlib

        hashes = {}
        for src in self.inputs():
            p = Path(src)
            hashes[src] = sha256_path(p) if p.exists() else "not-a-local-path"
        for c in self.controls:
            if c.image is not None:
                im = c.image.convert("RGB")
                h = hashlib.sha256(f"{im.size[0]}x{im.size[1]}".encode() + im.tobytes()).hexdigest()
                hashes[f"condition:{c.kind}"] = h
        return replace(self, hashes=hashes)


# --- the model cache ---------------------------------------------------------------------------------------

# --- results ---------------------------------------------------------------------------------------------

@dataclass
class Cell:
    """One cell of one control's grid: its λs, prompt, images (one per seed) and the recipe of its weights."""

    control: str
    row: int
    col: int
    object_lambda: float | None
    style_lambda: float | None
    prompt: str
    seeds: list[int]
    images: list[Image.Image]
    recipe: Recipe

    def image_name(self, seed: int) -> str:
        """File name under ``images/``: control, position, λs and seed (unique within a grid)."""
        return (f"{self.control}_r{self.row}c{self.col}_obj{_lam_tag(self.object_lambda)}"
                f"_sty{_lam_tag(self.style_lambda)}_seed{seed}.png")


def _lam_tag(lam: float | None) -> str:
    return "none" if lam is None else "0" if lam == 0 else f"{lam:+g}"


@dataclass
class GridResult:
    spec: GridSpec
    cells: list[Cell]
    grids: dict[str, Image.Image]        # control → labelled grid
    rows: list[dict[str, Any]]           # metrics, one per cell × seed × control (METRIC_COLUMNS)
    conditions: dict[str, Image.Image]   # control → the condition as fed to the ControlNet
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def grid(self) -> Image.Image:
        """The first control's grid."""
        return next(iter(self.grids.values()))

    def cell(self, control: str, row: int, col: int) -> Cell:
        for c in self.cells:
            if (c.control, c.row, c.col) == (control, row, col):
                return c
        raise KeyError((control, row, col))

    def summary(self) -> list[dict[str, Any]]:
        """Metrics per cell (mean over seeds): what the app's table shows."""
        groups: dict[tuple, list[dict]] = OrderedDict()
        for r in self.rows:
            groups.setdefault((r["control"], r["row"], r["col"]), []).append(r)
        out = []
        for rs in groups.values():
            d = {k: rs[0][k] for k in ("control", "object_lambda", "style_lambda", "prompt")}
            d["seeds"] = len(rs)
            for m in STAR2_COLUMNS[5:]:
                vals = [r[m] for r in rs if r[m] is not None]
                d[m] = sum(vals) / len(vals) if vals else None
            out.append(d)
        return out

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in METRIC_COLUMNS})
        return buf.getvalue()


# --- running -----------------------------------------------------------------------------------------------

class _Reporter:
    """Progress and cancellation in one place (each stage reports, every step polls cancel)."""

    def __init__(self, progress: ProgressFn | None, cancel: CancelFn | None):
        self.progress, self.cancel = progress, cancel

    def __call__(self, stage: str, i: int, n: int) -> None:
        self.check()
        if self.progress is not None:
            self.progress(stage, i, n)

    def check(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled by the user; the model's weights are restored")


@dataclass
class _Term:
    name: str
    source: str
    kind: str
    lam: float
    vector: Any


def run_grid(spec: GridSpec, *, models: Models | None = None, progress: ProgressFn | None = None,
             cancel: CancelFn | None = None, batch_size: int = 16, hashes: bool = True) -> GridResult:
    """Generate and score the grid of ``spec`` (see the module docstring for the contract).

    1. validate the spec (before loading anything);
    2. loading: base pipeline, ControlNet pipelines built on its components, CLIP;
    3. building vectors: τ of each checkpoint against the live base (cached in ``models``);
    4. plan: cells → distinct weight combinations → one pipeline call per combination and pipeline;
    5. denoise each call under exact hot patching (weights restored after each, also on errors/cancel);
    6. scoring: CLIP score / accuracy per image, target vs anchor;
    7. labelled grid images, per-cell recipes.
    """
    import torch

    from .sampling import PromptCache, sample

    spec.validate()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise GridError(f"batch_size must be a positive integer, got {batch_size!r}")
    models = models or Models()
    report = _Reporter(progress, cancel)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    with models.lock, ExitStack() as stack:
        # 2. loading
        t0 = time.perf_counter()
        nets = [c for c in spec.controls if c.kind != "none"]
        n_load = 1 + len(nets) + (1 if spec.clip else 0)
        report("loading", 0, n_load)
        pipe = models.load_base(spec.base)
        report("loading", 1, n_load)
        pipes: dict[str, Any] = {"none": pipe}
        for i, c in enumerate(nets):
            pipes[c.kind] = models.controlnet_pipe(c.model)
            report("loading", 2 + i, n_load)
        scorer = models.clip(spec.clip) if spec.clip else None
        report("loading", n_load, n_load)
        f = pipe.vae_scale_factor
        if spec.height % f or spec.width % f:
            raise GridError(f"height/width must be multiples of {f} for this model, got {spec.height}×{spec.width}")
        timings["loading"] = time.perf_counter() - t0
        stack.enter_context(models.computing())  # TAD_TORCH_THREADS, if set

        # 3. building vectors
        t0 = time.perf_counter()
        sources = [(c.name, c.source, c.kind) for c in (spec.object, spec.style) if c] + \
            [(e.name, e.source, e.kind) for e in spec.extra]
        built: dict[str, Any] = {}
        report("building vectors", 0, len(sources))
        for i, (name, source, kind) in enumerate(sources):
            built[name] = models.vector(source, kind, spec.scope)
            report("building vectors", i + 1, len(sources))
        if hashes:
            recorded, spec = spec.hashes, spec.with_hashes()
            changed = [k for k, v in recorded.items() if spec.hashes.get(k, v) != v]
            if changed:
                log.warning("inputs differ from the recipe's hashes (results will not match it): %s",
                            ", ".join(changed))
        timings["vectors"] = time.perf_counter() - t0

        # 4. plan
        prompt = spec.prompt
        conditions = {c.kind: prepare(c.image, spec.width, spec.height, spec.control_resize)[0] for c in nets}
        rows, cols = spec.row_lambdas, spec.col_lambdas
        cell_terms = _cell_terms(spec, built)
        # Cells with the same weights (e.g. repeated λs, a missing axis) are generated once.
        weight_groups: OrderedDict[tuple, list[tuple[int, int]]] = OrderedDict()
        for pos, terms in cell_terms.items():
            weight_groups.setdefault(_weight_key(terms), []).append(pos)
        # Controls that share a pipeline and conditioning scale go into the same batch.
        pipe_groups: OrderedDict[tuple, list[ControlSpec]] = OrderedDict()
        for ctl in spec.controls:
            k = ("none",) if ctl.kind == "none" else (_source_key(str(ctl.model)), float(ctl.scale))
            pipe_groups.setdefault(k, []).append(ctl)
        n_seeds = len(spec.seeds)
        calls = [(wk, group) for wk in weight_groups for group in pipe_groups.values()]
        steps_per_call = [spec.steps * math.ceil(len(g) * n_seeds / batch_size) for _, g in calls]
        total_steps = sum(steps_per_call)
        log.info("grid: %d cells × %d control(s) × %d seed(s) → %d pipeline call(s), %d denoising steps",
                 len(cell_terms), len(spec.controls), n_seeds, len(calls), total_steps)

        # 5. denoise
        t0 = time.perf_counter()
        te_prefix = "text_encoder."
        images: dict[tuple[tuple, str], list[Image.Image]] = {}
        done = 0
        for j, (wk, group) in enumerate(calls):
            report.check()
            terms = cell_terms[weight_groups[wk][0]]
            combination = _combination(terms, spec)
            touches_te = any(k.startswith(te_prefix) for t in terms for k in t.vector.keys())
            ctl_pipe = pipes[group[0].kind]
            kwargs: dict[str, Any] = {}
            if group[0].kind != "none":
                kwargs = {"image": [conditions[ctl.kind] for ctl in group for _ in spec.seeds],
                          "controlnet_conditioning_scale": float(group[0].scale)}

            def on_step(_b: int, step: int, n_steps: int, j: int = j) -> None:
                nonlocal done
                done += 1
                report(f"denoising step {step}/{n_steps} of cell {j + 1}/{len(calls)}", done, total_steps)

            # inference_mode (not just no_grad): no autograd bookkeeping at all, ~3% less CPU per UNet pass on the
            # toy world (bench/bench_grid.py); weights are switched outside it, images are bit-identical.
            with models.patcher.patched(combination), torch.inference_mode():
                # The text encoder only changes when a vector touches it: then encode under the patch.
                cache = PromptCache(pipe) if touches_te else models.prompt_cache
                out = sample(ctl_pipe, [prompt] * (len(group) * n_seeds), list(spec.seeds) * len(group),
                             steps=spec.steps, guidance=spec.guidance, height=spec.height, width=spec.width,
                             batch_size=batch_size, prompt_cache=cache, callback=on_step, **kwargs)
            for g, ctl in enumerate(group):
                images[(wk, ctl.kind)] = out[g * n_seeds:(g + 1) * n_seeds]
        timings["denoising"] = time.perf_counter() - t0

        # 6. scoring
        t0 = time.perf_counter()
        cells: list[Cell] = []
        for ctl in spec.controls:
            for (r, c), terms in cell_terms.items():
                cells.append(Cell(control=ctl.kind, row=r, col=c, object_lambda=rows[r], style_lambda=cols[c],
                                  prompt=prompt, seeds=list(spec.seeds), images=images[(_weight_key(terms), ctl.kind)],
                                  recipe=_cell_recipe(spec, terms)))
        metric_rows = _score(spec, cells, scorer, report)
        timings["scoring"] = time.perf_counter() - t0

        # 7. labelled grids
        t0 = time.perf_counter()
        grids = {ctl.kind: render_grid(spec, [c for c in cells if c.control == ctl.kind],
                                       [r for r in metric_rows if r["control"] == ctl.kind],
                                       condition=conditions.get(ctl.kind), scale=ctl.scale)
                 for ctl in spec.controls}
        timings["render"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    return GridResult(spec=spec, cells=cells, grids=grids, rows=metric_rows, conditions=conditions, timings=timings)


def _weight_key(terms: Sequence[_Term]) -> tuple:
    """Cells with equal keys have equal weights (vectors are fixed per name within a run)."""
    return tuple((t.name, t.lam) for t in terms)


def _cell_terms(spec: GridSpec, built: Mapping[str, Any]) -> dict[tuple[int, int], list[_Term]]:
    """(row, col) → the non-zero (vector, λ) terms of that cell: object λ, style λ, then every extra vector."""
    out: dict[tuple[int, int], list[_Term]] = {}
    for r, lo in enumerate(spec.row_lambdas):
        for c, ls in enumerate(spec.col_lambdas):
            terms = []
            for concept, lam in ((spec.object, lo), (spec.style, ls)):
                if concept is not None and lam:
                    terms.append(_Term(concept.name, concept.source, concept.kind, lam, built[concept.name]))
            terms += [_Term(e.name, e.source, e.kind, float(e.lam), built[e.name]) for e in spec.extra if e.lam]
            out[(r, c)] = terms
    return out


def _score(spec: GridSpec, cells: Sequence[Cell], scorer: Any, report: _Reporter) -> list[dict[str, Any]]:
    """Metrics rows, one per cell × seed: CLIP score of the target caption and whether it beats the anchor's."""
    flat = [(cell, s, im) for cell in cells for s, im in zip(cell.seeds, cell.images)]
    obj = sty = None
    if scorer is not None:
        report("scoring", 0, 1)
        feats = scorer.image_features([im for *_, im in flat])  # each image encoded once for both axes
        if spec.object:
            obj = scorer.per_image(feats, spec.object.name, spec.object.anchor, "object")
        if spec.style:
            sty = scorer.per_image(feats, spec.style.name, spec.style.anchor, "style")
        report("scoring", 1, 1)
    extra = ";".join(f"{e.name}={float(e.lam):g}" for e in spec.extra)
    rows = []
    for i, (cell, seed, _) in enumerate(flat):
        rows.append({
            "object_lambda": cell.object_lambda, "style_lambda": cell.style_lambda, "control": cell.control,
            "seed": seed, "prompt": cell.prompt,
            "clip_score_object": obj[i][0] if obj else None,
            "clip_accuracy_object": float(obj[i][1]) if obj else None,
            "clip_score_style": sty[i][0] if sty else None,
            "clip_accuracy_style": float(sty[i][1]) if sty else None,
            "object": spec.object.name if spec.object else None,
            "object_anchor": spec.object.anchor if spec.object else None,
            "style": spec.style.name if spec.style else None,
            "style_anchor": spec.style.anchor if spec.style else None,
            "extra": extra, "row": cell.row, "col": cell.col, "image": f"images/{cell.image_name(seed)}",
        })
    return rows


def _combination(terms: list[_Term], spec: GridSpec) -> list[tuple[str, Any, float]]:
    """What the patcher applies: Σ λ·τ directly for linear (exact arithmetic, λ=0 ⇒ base bytes), else the
    merged vector of the registry's method with the λs as weights."""
    if not terms:
        return []
    if spec.merge == MERGE_METHODS_LINEAR and not spec.merge_params:
        return [(t.name, t.vector, t.lam) for t in terms]
    from .merge_methods import merge

    merged = merge([t.vector for t in terms], method=spec.merge, weights=[t.lam for t in terms],
                   **spec.merge_params)
    return [(f"{spec.merge}({'+'.join(t.name for t in terms)})", merged, 1.0)]


def _cell_recipe(spec: GridSpec, terms: list[_Term]) -> Recipe:
    """The recipe of a cell's weights: its non-zero vectors (λ = 0 terms contribute nothing)."""
    vectors = [VectorSpec(name=t.name, source=t.source, kind=t.kind, lam=t.lam) for t in terms]
    inputs = [spec.base] + [t.source for t in terms]
    return Recipe(base=spec.base, vectors=vectors, method=spec.merge, params=dict(spec.merge_params),
                  scope=spec.scope, hashes={k: spec.hashes[k] for k in inputs if k in spec.hashes})


# --- the labelled grid image ----------------------------------------------------------------------------------

ABLATE_RGB, DEFAULT_RGB, ENHANCE_RGB = (185, 28, 28), (70, 70, 70), (21, 128, 61)


@lru_cache(maxsize=16)
def _font(size: int, bold: bool = False) -> tuple[Any, bool]:
    """(font, unicode) — DejaVu when installed (has λ, −, ✓), else Pillow's built-in font (ASCII labels)."""
    names = ["DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"]
    try:
        import matplotlib

        names.append(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / names[0]))
    except ImportError:
        pass
    for name in names:
        try:
            return ImageFont.truetype(name, size), True
        except OSError:
            continue
    return ImageFont.load_default(size=size), False


def lambda_label(lam: float | None, unicode: bool = True) -> tuple[str, str, tuple[int, int, int]]:
    """(word, "λ=+1", colour): ablate for λ>0, default for 0, enhance for λ<0."""
    if lam is None:
        return "", "", DEFAULT_RGB
    word, rgb = ("ablate", ABLATE_RGB) if lam > 0 else ("enhance", ENHANCE_RGB) if lam < 0 else ("default",
                                                                                                DEFAULT_RGB)
    num = "0" if lam == 0 else f"{lam:+g}"
    if unicode:
        return word, f"λ={num.replace('-', '−')}", rgb
    return word, f"lambda={num}", rgb


def _upscale(im: Image.Image, target: int) -> Image.Image:
    """Tiny cells up to ~``target`` px: integer factors with NEAREST (crisp, faithful), else LANCZOS."""
    side = max(im.size)
    if side >= target:
        return im
    k = target / side
    if abs(k - round(k)) < 1e-6 or k >= 2:
        k = max(1, round(k))
        return im.resize((im.width * k, im.height * k), Image.Resampling.NEAREST)
    return im.resize((round(im.width * k), round(im.height * k)), Image.Resampling.LANCZOS)


def _text_w(draw: ImageDraw.ImageDraw, text: str, font: Any) -> int:
    if not text:
        return 0
    x0, _, x1, _ = draw.textbbox((0, 0), text, font=font)
    return x1 - x0


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.split(" "):
        trial = f"{cur} {word}".strip()
        if cur and _text_w(draw, trial, font) > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    return lines + ([cur] if cur else [])


def render_grid(spec: GridSpec, cells: Sequence[Cell], rows: Sequence[Mapping[str, Any]], *,
                condition: Image.Image | None = None, scale: float = 1.0, cell_px: int = 256) -> Image.Image:
    """One control's labelled grid: title, axis names, λ labels (ablate/default/enhance), cells, CLIP notes."""
    n_r, n_c = len(spec.row_lambdas), len(spec.col_lambdas)
    n_s = len(spec.seeds)
    by_pos = {(c.row, c.col): c for c in cells}
    target = cell_px if n_s == 1 else cell_px * 3 // 4 if n_s == 2 else cell_px // 2
    thumbs = {pos: [_upscale(im, target) for im in c.images] for pos, c in by_pos.items()}
    sw, sh = next(iter(thumbs.values()))[0].size
    gap_img, gap, pad = 4, 14, 18
    cell_w, cell_h = n_s * sw + (n_s - 1) * gap_img, sh
    fs = max(18, min(40, round(max(cell_w, 200) / 9)))
    f_title, uni = _font(fs + 2, bold=True)
    f_axis, _ = _font(fs, bold=True)
    f_label, _ = _font(fs - 2)
    f_note, _ = _font(max(14, fs - 8))
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lh = lambda f: scratch.textbbox((0, 0), "Ag", font=f)[3] + 6  # noqa: E731 - line height
    # Metrics notes per cell (means over seeds) when scored.
    notes: dict[tuple[int, int], list[str]] = {}
    ok, bad = ("✓", "✗") if uni else ("yes", "no")
    for pos in by_pos:
        rs = [r for r in rows if (r["row"], r["col"]) == pos]
        parts = []
        for axis, short in (("object", "obj"), ("style", "sty")):
            vals = [r[f"clip_score_{axis}"] for r in rs if r[f"clip_score_{axis}"] is not None]
            if not vals:
                continue
            acc = [r[f"clip_accuracy_{axis}"] for r in rs]
            mark = (ok if acc[0] else bad) if len(acc) == 1 else f"({round(sum(acc))}/{len(acc)})"
            parts.append(f"{short} {sum(vals) / len(vals):.2f} {mark}")
        if parts:
            notes[pos] = parts
    # One line per cell when it fits under the cell, else one line per axis.
    one_line = all(_text_w(scratch, "   ".join(p), f_note) <= cell_w for p in notes.values())
    note_lines = {pos: ["   ".join(p)] if one_line else p for pos, p in notes.items()}
    note_h = max((len(v) for v in note_lines.values()), default=0) * lh(f_note)
    # Left column: row labels; header: column labels.
    row_labels = [lambda_label(lam, uni) for lam in spec.row_lambdas]
    col_labels = [lambda_label(lam, uni) for lam in spec.col_lambdas]
    arrow_down, arrow_right = ("↓", "→") if uni else ("(rows)", "(columns)")
    corner = [f"object: {spec.object.name} {arrow_down}"] if spec.object else []
    label_w = max([_text_w(scratch, t, f) for w, n, _ in row_labels for t, f in ((w, f_axis), (n, f_label))] +
                  [_text_w(scratch, t, f_axis) for t in corner] + [60]) + 2 * pad
    grid_w = n_c * cell_w + (n_c - 1) * gap
    width = pad + label_w + grid_w + pad
    # Title block: what was run, readable from the back of the room.
    ctl = cells[0].control if cells else "none"
    head = f"control: {ctl}" + (f" (scale {scale:g})" if ctl != "none" else "")
    seeds = ", ".join(str(s) for s in spec.seeds)
    sub = (f"prompt: “{spec.prompt}” · seed{'s' if n_s > 1 else ''} {seeds} · {spec.steps} steps · "
           f"guidance {spec.guidance:g}")
    if spec.extra:
        sub += " · every cell + " + ", ".join(f"{e.name} λ={float(e.lam):+g}" for e in spec.extra)
    if spec.merge != "linear":
        sub += f" · merge {spec.merge}"
    thumb = _upscale(condition, 96).resize((96, 96)) if condition is not None else None
    thumb_w = max(96, _text_w(scratch, "condition", f_note)) if thumb else 0
    text_w = width - 2 * pad - (thumb_w + pad if thumb else 0)
    title_lines = _wrap(scratch, head, f_title, text_w)
    sub_lines = _wrap(scratch, sub, f_label, text_w)
    title_h = max(len(title_lines) * lh(f_title) + len(sub_lines) * lh(f_label), 96 + lh(f_note) if thumb else 0)
    col_title = f"style: {spec.style.name} {arrow_right}" if spec.style else ""
    # Header: one line of axis names (object in the corner, style over the columns), then the column labels.
    header_h = (lh(f_axis) if col_title or corner else 0) + (2 * lh(f_label) if spec.style else 0)
    top = pad + title_h + pad + header_h
    height = top + n_r * (cell_h + note_h) + (n_r - 1) * gap + pad
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    # 1. title
    y = pad
    for t in title_lines:
        d.text((pad, y), t, font=f_title, fill="black")
        y += lh(f_title)
    for t in sub_lines:
        d.text((pad, y), t, font=f_label, fill=(60, 60, 60))
        y += lh(f_label)
    if thumb is not None:
        tx = width - pad - thumb_w + (thumb_w - 96) // 2
        img.paste(thumb, (tx, pad))
        d.rectangle([tx - 1, pad - 1, tx + 96, pad + 96], outline=(150, 150, 150))
        d.text((tx + 48, pad + 96 + 2), "condition", font=f_note, fill=(90, 90, 90), anchor="ma")
    # 2. column header: axis name, then word + λ per column
    x0 = pad + label_w
    y = pad + title_h + pad
    if col_title:
        d.text((x0 + grid_w // 2, y), col_title, font=f_axis, fill="black", anchor="ma")
        y += lh(f_axis)
    if spec.style:
        for c, (word, num, rgb) in enumerate(col_labels):
            cx = x0 + c * (cell_w + gap) + cell_w // 2
            d.text((cx, y), word, font=f_axis, fill=rgb, anchor="ma")
            d.text((cx, y + lh(f_label)), num, font=f_label, fill=rgb, anchor="ma")
    for t in corner:
        d.text((pad, pad + title_h + pad), t, font=f_axis, fill="black")
    # 3. rows: label, cells, notes
    for r in range(n_r):
        y = top + r * (cell_h + note_h + gap)
        word, num, rgb = row_labels[r]
        cy = y + cell_h // 2
        d.text((pad, cy - lh(f_axis) // 2 - 4), word, font=f_axis, fill=rgb, anchor="lm")
        d.text((pad, cy + lh(f_label) // 2), num, font=f_label, fill=rgb, anchor="lm")
        for c in range(n_c):
            x = x0 + c * (cell_w + gap)
            for k, im in enumerate(thumbs.get((r, c), [])):
                img.paste(im, (x + k * (sw + gap_img), y))
            lam_r, lam_c = spec.row_lambdas[r], spec.col_lambdas[c]
            if not lam_r and not lam_c:  # the base model's cell: outline it as the reference
                d.rectangle([x - 3, y - 3, x + cell_w + 2, y + cell_h + 2], outline=(40, 40, 40), width=3)
            for k, line in enumerate(note_lines.get((r, c), [])):
                d.text((x + cell_w // 2, y + cell_h + 3 + k * lh(f_note)), line, font=f_note, fill=(50, 50, 50),
                       anchor="ma")
    return img


# --- saving -------------------------------------------------------------------------------------------------

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


# --- the toy world ----------------------------------------------------------------------------------------

def default_assets() -> Path:
    """``assets/toyworld`` of the working directory when present, else the one next to the package."""
    from .toyworld.data import ASSETS

    local = Path("assets/toyworld")
    return local if (local / "world.json").is_file() else ASSETS


def toy_control(kind: str, assets_dir: str | Path | None = None, *, example: str = "smiley", size: int = 64,
                scale: float = 1.0) -> ControlSpec:
    """A control layer of the toy world: its ControlNet and the renderer-made condition of an example scene."""
    from .toyworld import world as toy
    from .toyworld.examples import example_condition

    if kind == "none":
        return ControlSpec("none")
    if kind not in CONTROL_KINDS:
        raise GridError(f"control {kind!r} is not one of {', '.join(CONTROL_KINDS)}")
    root = Path(assets_dir) if assets_dir is not None else default_assets()
    wj = root / "world.json"
    nets = json.loads(wj.read_text()).get("controlnets", {}) if wj.is_file() else {}
    model = root / nets.get(kind, f"controlnet/{kind}")
    if not (model / "config.json").is_file():
        raise GridError(f"toy world has no {kind} ControlNet at {model}: train it with "
                        f"`python -m tad_demo.toyworld.train_controlnet --kinds {kind}`")
    example = example if example in toy.OBJECTS else "smiley"
    return ControlSpec(kind, image=example_condition(kind, example, size), model=str(model), scale=scale)


def toy_world_spec(assets_dir: str | Path | None = None, object: str | None = "smiley", style: str | None = "striped",
                   controls: Sequence[str] = ("none",), *, seeds: Sequence[int] = (42,),
                   lambdas: Sequence[float] = (1.0, 0.0, -1.0), steps: int | None = None,
                   conditioning_scale: float = 1.0) -> GridSpec:
    """The toy world's default 3×3 example (defaults from world.json; seed 42; example conditions)."""
    root = Path(assets_dir) if assets_dir is not None else default_assets()
    wj = root / "world.json"
    if not wj.is_file():
        raise GridError(f"toy world assets not found ({wj} missing): train them (see assets/toyworld/MODEL_CARD.md) "
                        "or pass another assets folder / a grid config")
    world = json.loads(wj.read_text())
    concepts = {c["name"]: c for c in world.get("concepts", [])}

    def concept(name: str | None, kind: str) -> ConceptSpec | None:
        if name is None:
            return None
        c = concepts.get(name)
        if c is None or c.get("kind") != kind:
            known = ", ".join(n for n, x in concepts.items() if x.get("kind") == kind) or "none"
            raise GridError(f"toy world has no {kind} concept {name!r}; available: {known}")
        return ConceptSpec(name=name, anchor=c["anchor"], source=str(root / c["checkpoint"]))

    defaults = world.get("defaults", {})
    size = int(defaults.get("height", 64)), int(defaults.get("width", 64))
    ctl_specs = [toy_control(k, root, example=object or "circle", size=size[1], scale=conditioning_scale)
                 for k in controls]
    templates = world.get("prompt_templates") or ["a {object} in {style} style"]
    template = templates[0]
    if object is None or style is None:
        # A one-axis grid: the missing slot gets a neutral word, the anchor of the world's first concepts.
        template = template.replace("{object}", "circle" if object is None else "{object}")
        template = template.replace("{style}", "plain" if style is None else "{style}")
    clip_dir = root / world.get("clip", "clip")
    return GridSpec(
        base=str(root / world.get("base", "base")), object=concept(object, "object"), style=concept(style, "style"),
        object_lambdas=tuple(lambdas), style_lambdas=tuple(lambdas), controls=ctl_specs,
        prompt_template=template, seeds=[int(s) for s in seeds],
        steps=int(steps if steps is not None else defaults.get("num_inference_steps", 20)),
        guidance=float(defaults.get("guidance_scale", 5.0)), height=size[0], width=size[1],
        clip=str(clip_dir) if (clip_dir / "open_clip_config.json").is_file() else None,
    ).validate()
