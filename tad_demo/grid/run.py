"""Running a grid: a GridSpec → batched generation under hot-patched weights → scored cells → labelled grids.

    spec = world_spec("assets/toyworld", object="smiley", style="striped", controls=("none", "canny"))
    result = run_grid(spec, models=Models(), progress=print_stage, cancel=event.is_set)
    save(result, "out/")   # grid/io.py

``progress(stage, i, n)`` is called with stages ``"loading"``, ``"building vectors"``,
``"denoising step s/N of cell j/M"`` (i/n counts denoising steps over the whole grid) and ``"scoring"`` (i/n counts
pipeline calls: each is scored as soon as it ends).
``cancel()`` is polled before each stage and after every denoising step; when it returns true, :class:`Cancelled`
is raised and the weights are back at the base (the patcher's context manager restores them).

Each prompt is encoded once (the text encoder is re-encoded under the patch only when a vector touches it);
weights switch by exact hot patching (``WeightPatcher``), never by reloading; the ControlNet pipelines are built
from the plain pipeline's components, so one patcher patches all of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from PIL import Image

from ..core.errors import Cancelled, GridError
from ..runtime.control import prepare
from ..runtime.models import Models
from ..runtime.sampling import PromptCache, sample
from .plan import GridPlan, weight_key
from .render import render_grid
from .result import SCORE_COLUMNS, Cell, GridResult
from .spec import GridSpec

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]
Images = dict[tuple[tuple, str], list[Image.Image]]  # (weight key, control kind) → one image per seed
Metrics = dict[tuple[tuple, str], list[dict[str, Any]]]  # the same keys → one {score column: value} per seed
# Finished cells, as soon as their pipeline call ends and is scored:
# (control kind, row, col, one image per seed, one {score column: value} per seed) each.
FinishedFn = Callable[[list[tuple[str, int, int, list[Image.Image], list[dict[str, Any]]]]], None]


class Reporter:
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


def run_grid(spec: GridSpec, *, models: Models | None = None, progress: ProgressFn | None = None,
             cancel: CancelFn | None = None, batch_size: int = 16, hashes: bool = True,
             on_cells: FinishedFn | None = None) -> GridResult:
    """Generate and score the grid of ``spec`` (the spec is validated before anything loads).

    1. load: the base pipeline, ControlNet pipelines built on its components, CLIP; then τ of each checkpoint
       against the live base (cached in ``models``) and the inputs' hashes;
    2. plan: which cells share weights, which pipeline calls generate them (``GridPlan``);
    3. denoise: for each call, patch its weights (restored after each, also on errors/cancel) and sample;
       score its images at once (CLIP score / accuracy per image, target vs anchor);
    4. cells and metrics rows, one per cell × seed, with their recipes;
    5. results: labelled grid images.

    ``on_cells`` (optional) gets the cells of each pipeline call, with their metrics, as soon as the call ends (to
    show them while the rest of the grid is generated); it is called from this thread, under the model lock, so it
    must be quick.
    """
    spec.validate()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise GridError(f"batch_size must be a positive integer, got {batch_size!r}")
    models = models or Models()
    report = Reporter(progress, cancel)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    with models.lock, ExitStack() as stack:
        # 1. load
        with _timed(timings, "loading"):
            pipes, scorer = _load_models(spec, models, report)
        stack.enter_context(models.computing())  # TAD_TORCH_THREADS, if set
        with _timed(timings, "vectors"):
            vectors = _build_vectors(spec, models, report)
            spec = _hashed(spec) if hashes else spec
        # 2. plan
        plan = GridPlan.of(spec, batch_size)
        conditions = {c.kind: prepare(c.image, spec.width, spec.height, spec.control_resize)[0]
                      for c in spec.controls if c.kind != "none"}
        log.info("grid: %d cells × %d control(s) × %d seed(s) → %d pipeline call(s), %d denoising steps",
                 len(plan.cells), len(spec.controls), len(spec.seeds), len(plan.calls), plan.total_steps)
        # 3. denoise and score
        with _timed(timings, "denoising"):
            images, metrics = _denoise(plan, vectors, pipes, conditions, models, report, batch_size, scorer,
                                       on_cells)
        # 4. cells and metrics rows
        cells, cell_metrics = _cells(plan, images, metrics)
        rows = metric_rows(spec, cells, cell_metrics)
        # 5. results
        with _timed(timings, "render"):
            grids = {ctl.kind: render_grid(spec, [c for c in cells if c.control == ctl.kind],
                                           [r for r in rows if r["control"] == ctl.kind],
                                           condition=conditions.get(ctl.kind), scale=ctl.scale)
                     for ctl in spec.controls}
    timings["total"] = time.perf_counter() - t_all
    return GridResult(spec=spec, cells=cells, grids=grids, rows=rows, conditions=conditions, timings=timings)


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0


def _load_models(spec: GridSpec, models: Models, report: Reporter) -> tuple[dict[str, Any], Any]:
    """The base pipeline, a ControlNet pipeline per control (sharing the base's modules) and the CLIP scorer."""
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
    return pipes, scorer


def _build_vectors(spec: GridSpec, models: Models, report: Reporter) -> dict[str, Any]:
    """τ of every axis concept and extra vector against the live base, by name."""
    sources = [(c.name, c.source, c.format) for c in (spec.object, spec.style) if c] + \
        [(e.name, e.source, e.format) for e in spec.extra]
    built: dict[str, Any] = {}
    report("building vectors", 0, len(sources))
    for i, (name, source, fmt) in enumerate(sources):
        built[name] = models.vector(source, fmt, spec.scope)
        report("building vectors", i + 1, len(sources))
    return built


def _hashed(spec: GridSpec) -> GridSpec:
    """The spec with the sha256 of its inputs; warns when they differ from the hashes it was written with."""
    recorded, spec = spec.hashes, spec.with_hashes()
    changed = [k for k, v in recorded.items() if spec.hashes.get(k, v) != v]
    if changed:
        log.warning("inputs differ from the recipe's hashes (results will not match it): %s", ", ".join(changed))
    return spec


def _denoise(plan: GridPlan, vectors: Mapping[str, Any], pipes: Mapping[str, Any], conditions: Mapping[str, Any],
             models: Models, report: Reporter, batch_size: int, scorer: Any = None,
             on_cells: FinishedFn | None = None) -> tuple[Images, Metrics]:
    """Every pipeline call of the plan under its weights: all its controls × all seeds in one sample() call,
    scored as soon as it ends (after the weights are restored)."""
    spec, n_seeds, total = plan.spec, len(plan.spec.seeds), plan.total_steps
    images: Images = {}
    metrics: Metrics = {}
    done = 0
    for j, call in enumerate(plan.calls):
        report.check()
        kind = call.controls[0].kind
        kwargs: dict[str, Any] = {}
        if kind != "none":
            kwargs = {"image": [conditions[ctl.kind] for ctl in call.controls for _ in spec.seeds],
                      "controlnet_conditioning_scale": float(call.controls[0].scale)}

        def on_step(_b: int, step: int, n_steps: int, j: int = j) -> None:
            nonlocal done
            done += 1
            report(f"denoising step {step}/{n_steps} of cell {j + 1}/{len(plan.calls)}", done, total)

        # inference_mode (not just no_grad): no autograd bookkeeping at all, ~3% less CPU per UNet pass on the
        # toy world (bench/bench_grid.py); weights are switched outside it, images are bit-identical.
        with models.patcher.patched(plan.combination(call.weights, vectors)), torch.inference_mode():
            # The text encoder only changes when a vector touches it: then encode under the patch.
            cache = PromptCache(pipes["none"]) if plan.touches_text_encoder(call.weights, vectors) else \
                models.prompt_cache
            out = sample(pipes[kind], [spec.prompt] * (len(call.controls) * n_seeds),
                         list(spec.seeds) * len(call.controls), steps=spec.steps, guidance=spec.guidance,
                         height=spec.height, width=spec.width, batch_size=batch_size, prompt_cache=cache,
                         callback=on_step, **kwargs)
        report("scoring", j, len(plan.calls))
        scored = image_metrics(spec, scorer, out)
        for g, ctl in enumerate(call.controls):
            images[(call.weights, ctl.kind)] = out[g * n_seeds:(g + 1) * n_seeds]
            metrics[(call.weights, ctl.kind)] = scored[g * n_seeds:(g + 1) * n_seeds]
        report("scoring", j + 1, len(plan.calls))
        if on_cells is not None:
            on_cells([(ctl.kind, r, c, images[(call.weights, ctl.kind)], metrics[(call.weights, ctl.kind)])
                      for ctl in call.controls for r, c in plan.groups[call.weights]])
    return images, metrics


def _cells(plan: GridPlan, images: Images, metrics: Metrics) -> tuple[list[Cell], list[list[dict[str, Any]]]]:
    """One Cell per control and grid position (controls first, then row-major), with its images and recipe; and
    each cell's per-seed metrics, in the same order."""
    spec = plan.spec
    rows, cols = spec.row_lambdas, spec.col_lambdas
    order = [(ctl.kind, r, c, terms) for ctl in spec.controls for (r, c), terms in plan.cells.items()]
    cells = [Cell(control=kind, row=r, col=c, object_lambda=rows[r], style_lambda=cols[c], prompt=spec.prompt,
                  seeds=list(spec.seeds), images=images[(weight_key(terms), kind)], recipe=plan.recipe(terms))
             for kind, r, c, terms in order]
    return cells, [metrics[(weight_key(terms), kind)] for kind, _, _, terms in order]


def image_metrics(spec: GridSpec, scorer: Any, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
    """Per image, for each axis with a concept: the CLIP score of the target caption and whether it beats the
    anchor's (``None`` without a CLIP model or without that axis). Each image is encoded once for both axes."""
    out: list[dict[str, Any]] = [dict.fromkeys(SCORE_COLUMNS) for _ in images]
    if scorer is None or not images:
        return out
    feats = scorer.image_features(list(images))
    for axis, concept in (("object", spec.object), ("style", spec.style)):
        if concept:
            for m, (score, hit) in zip(out, scorer.per_image(feats, concept.name, concept.anchor, axis)):
                m[f"clip_score_{axis}"], m[f"clip_accuracy_{axis}"] = score, float(hit)
    return out


def metric_rows(spec: GridSpec, cells: Sequence[Cell], cell_metrics: Sequence[Sequence[dict[str, Any]]]
                ) -> list[dict[str, Any]]:
    """Metrics rows, one per cell × seed (the columns of metrics.csv); ``cell_metrics`` is aligned with ``cells``."""
    extra = ";".join(f"{e.name}={float(e.lam):g}" for e in spec.extra)
    rows = []
    for cell, per_seed in zip(cells, cell_metrics):
        for seed, m in zip(cell.seeds, per_seed):
            rows.append({
                "object_lambda": cell.object_lambda, "style_lambda": cell.style_lambda, "control": cell.control,
                "seed": seed, "prompt": cell.prompt, **m,
                "object": spec.object.name if spec.object else None,
                "object_anchor": spec.object.anchor if spec.object else None,
                "style": spec.style.name if spec.style else None,
                "style_anchor": spec.style.anchor if spec.style else None,
                "extra": extra, "row": cell.row, "col": cell.col, "image": f"images/{cell.image_name(seed)}",
            })
    return rows
