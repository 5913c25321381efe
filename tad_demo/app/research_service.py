"""The research views' service: widget values → validated arguments → ``tad_demo.research`` → files for the UI/API.

    research = ResearchService(service)     # the grid service's settings, toy world and one Models cache
    out = research.sweep("smiley", "-2, -1, 0, 0.5, 1", n_prompts=4, steps=20, progress=print)
    out["table"], out["plot"], out["csv"], out["status"]

Rules, as in the grid service (an API client can bypass every widget):
* every value is checked with ``app/validation.py`` and refused with a one-line ``UserError`` naming the field and
  the limit (``core/limits.py``); the UI edge shows it as ``gr.Error``;
* a run's cost is bounded before anything loads: at most ``BUDGET`` image-steps (images × denoising steps);
* library errors (LabError, ExpressionError, ModelError, MergeError, ClipUnavailable, …) become ``UserError`` with
  the library's message; anything unexpected is logged and reported in one line;
* the research views run on a base the grid offers (``base``: the app's world, or a catalog model with its
  family's concepts and CLIP; ``_lab`` decides) and generate through the grid service's
  :class:`~tad_demo.runtime.models.Models`, so the base, CLIP and vectors load once for both;
* outputs go to bounded folders under ``<work dir>/research`` (TTL and count of the grid's run folders); the
  only per-user state is the grid service's cancel flag of a running request (checked between stages).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..core.errors import Cancelled, TadError
from ..core.limits import APP
from ..core.merge_methods import METHODS
from ..research.lab import Lab
from .errors import UserError
from .request import TOY
from .service import Service, new_run_dir
from .service.guard import guard
from .validation import (
    check_budget,
    parse_choice,
    parse_choices,
    parse_int,
    parse_lambda_list,
    parse_line,
    parse_number,
    parse_seeds,
    split_list,
)

log = logging.getLogger(__name__)

MAX_LAMBDAS = int(APP["max_lambdas"].default)        # λ values of one sweep
MAX_PROMPTS = int(APP["max_prompts"].default)        # prompts (images) per concept and λ / run
CPU_MAX_STEPS = int(APP["cpu_max_steps"].default)    # denoising steps on a CPU (max_steps applies on a GPU)
MAX_ALPHA = float(APP["max_alpha"].default)          # candidate strength of adaptive selection (the paper's largest α)
MAX_CALIBRATION = int(APP["max_calibration"].default)  # neutral prompts of adaptive selection's calibration
MAX_STRENGTHS = int(APP["max_strengths"].default)    # probe strengths α of one adaptive selection
MAX_EXPRESSION = int(APP["max_expression"].default)  # characters of an analogy expression
MAX_PROMPT = int(APP["max_prompt"].default)          # characters of the adaptive prompt
BUDGET = int(APP["budget"].default)  # image-steps per run: 640 toy-world images at 20 steps, ≈ 6 min on 2 CPU cores
MULTI_DEFAULT_METHODS = ("linear", "ties")
MULTI_HEADERS = ["method", "N", "ablated", "target acc ↓", "control acc ↑", "target score", "control score",
                 "‖merged τ‖"]
VECTOR_HEADERS = ["vector", "tensors", "params", "norm", "sparsity"]
PAIR_HEADERS = ["pair", "cosine", "angle °", "sign agreement"]  # + the layers over the run's angle threshold
ADAPTIVE_HEADERS = ["rank", "vector", "similarity (mean)", "chosen", "λ"]  # + relevance, one similarity per seed
# (with several α: one similarity column per α, no per-seed columns)
# The tables' columns before a first run (a run's table names its concepts, threshold and seeds).
EMPTY_TABLES = {"sweep": ["λ", "acc (target, anchor, controls)", "score (target, anchor, controls)"],
                "multi": MULTI_HEADERS, "vectors": VECTOR_HEADERS,
                "pairs": [*PAIR_HEADERS, "layers over the threshold"],
                "adaptive": ADAPTIVE_HEADERS}

ProgressFn = Callable[[str, int, int], None]
RESEARCH_ERRORS = (TadError, FileNotFoundError, ValueError)


def research_errors(what: str) -> contextlib.AbstractContextManager[None]:
    """The grid service's error mapping, with ValueError as a refusal too and the view named in the message."""
    return guard(what, name_it=True, refusals=RESEARCH_ERRORS)


def _r(x: Any, nd: int = 3) -> Any:
    """A number rounded for a table cell ('–' for NaN/None)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return round(float(x), nd) if isinstance(x, float) else x


class ResearchService:
    """Sweep, multi-concept, analysis and adaptive selection for the app. One instance per process."""

    def __init__(self, service: Service):
        self.service = service
        self.settings = service.settings
        self.world = service.world
        self.models = service.models
        self.out_root = self.settings.work_dir / "research"
        self.choices = service.choices  # the bases the grid offers, their concepts, defaults and CLIP
        self.cpu = str(getattr(self.models, "device", "cpu")).startswith("cpu")
        # adaptive selection's calibrations, by (base, pool, steps, t_switch, α, prompts): measured once per process
        self.calibrations: dict[tuple, Any] = {}
        self.max_steps = min(self.settings.max_steps, CPU_MAX_STEPS) if self.cpu else self.settings.max_steps
        try:  # Hugging Face ZeroGPU: a GPU for the duration of each heavy call (see Service.__init__)
            import spaces

            for name in ("sweep", "multi", "analysis", "adaptive"):
                setattr(self, name, spaces.GPU(duration=300)(getattr(self, name)))
        except ImportError:
            pass

    # --- what the UI offers ------------------------------------------------------------------------------
    def concept_names(self, base: str) -> list[str]:
        return [c.name for c in self.choices.concepts_for(base)]

    def ui_config(self) -> dict[str, Any]:
        """Choices, defaults and limits of the research widgets, as plain data (the UI imports no library)."""
        bases = self.choices.base_choices()  # the grid's list
        if not any(self.concept_names(b) for _, b in bases):
            return {"available": False, "note": f"The research views need a base model with concept checkpoints: "
                    f"the toy world (none is installed at {self.settings.assets}; set TAD_ASSETS) or a catalog "
                    "model whose concept-ablation checkpoints are listed in the catalog (TAD_CATALOG)."}
        base = self.choices.default_base()
        return {
            "available": True, "base": base, "base_choices": bases, "tables": EMPTY_TABLES,
            "methods": [(m.name, m.name) for m in METHODS.values()],
            "limits": {"max_lambdas": MAX_LAMBDAS, "max_lambda": self.settings.max_lambda, "max_prompts": MAX_PROMPTS,
                       "max_steps": self.max_steps, "cpu": self.max_steps < self.settings.max_steps,
                       "max_alpha": MAX_ALPHA, "max_calibration": MAX_CALIBRATION, "max_strengths": MAX_STRENGTHS,
                       "max_seeds": self.settings.max_seeds, "budget": BUDGET},
            **self.base_config(base),
        }

    def base_config(self, base: Any) -> dict[str, Any]:
        """What follows the base: its concepts (the pickers' choices), the defaults that name them, and a note when
        this device cannot run the base's views."""
        base = self._base_id(base)
        cs = self.choices.concepts_for(base)
        names = [c.name for c in cs]
        objs = [c.name for c in cs if c.kind == "object"]
        stys = [c.name for c in cs if c.kind == "style"]
        d = self.choices.defaults_for(base)
        neutral = self.choices.neutral_words(self.choices.family_of(base))
        steps = min(d["steps"], self.max_steps)
        return {
            "concepts": [(f"{c.name} → {c.anchor} ({c.kind})", c.name) for c in cs],
            "note": self._device_refusal(base) or "",
            "defaults": {"concept": (objs or names or [None])[0], "lambdas": "-2, -1, 0, 0.5, 1",
                         "sweep_prompts": 4, "steps": steps, "multi_concepts": [*objs[:2], *stys[:1]],
                         "methods": list(MULTI_DEFAULT_METHODS), "multi_prompts": 2, "analysis_concepts": names,
                         "expression": _default_expression(objs, stys),
                         "prompt": d["template"].format(object=d["object"] or neutral["object"],
                                                        style=d["style"] or neutral["style"]),
                         # α: the paper's best on SD is 2 (its Table 3); on the toy world the two-strength probe
                         # 0.5 and 2, calibrated, ranks best (model card, table g); calibration needs a world
                         "pool": names, "t_switch": steps // 2, "alpha": "0.5, 2" if base == TOY else "2",
                         "top_k": min(2, max(1, len(cs))),
                         "seeds": "0", "calibration": 16 if base == TOY else 0},
        }

    # --- the cancel flag of a session (the grid service's: one Cancel stops whatever the session runs) -------
    def begin(self, session: str) -> Any:
        return self.service.begin(session)

    def end(self, session: str, flag: Any) -> None:
        self.service.end(session, flag)

    def cancel(self, session: str) -> bool:
        return self.service.cancel(session)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Run a view on the process's one compute thread (see Service.submit); a Future."""
        return self.service.submit(fn, *args, **kwargs)

    # --- the views -----------------------------------------------------------------------------------------
    def sweep(self, concept: Any, lambdas: Any, n_prompts: Any = 4, steps: Any = None, base: Any = None, *,
              progress: ProgressFn | None = None, cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
        """CLIP score/accuracy of a concept, its anchor and controls over a λ list (research/sweep.py)."""
        from ..research.sweep import default_controls, run_sweep

        t0 = time.time()
        base = self._base(base)
        concept = self._concept(concept, "concept", base)
        lams = self._lambda_list(lambdas)
        n = parse_int(n_prompts, "prompts", 1, MAX_PROMPTS)
        lab = self._lab(steps, base)
        with research_errors("sweep"):
            anchor = lab.anchor_of(concept)
            roles = list(dict.fromkeys([concept, *([anchor] if anchor else []), *default_controls(lab, concept)]))
            self._budget("sweep", len(lams) * len(roles) * n, lab.steps,
                         f"{len(lams)} λ × {len(roles)} concepts × {n} prompts")
            report = self._reporter(progress, cancel, "loading the model")
            result = run_sweep(lab, concept, lams, n_prompts=n, progress=report)
            report("saving", 0, 1)
            files = result.save(self._new_dir("sweep"))
        acc_h, acc = result.table("clip_accuracy")
        _, score = result.table("clip_score")
        headers = ["λ", *(f"acc {h}" for h in acc_h[1:]), *(f"score {h}" for h in acc_h[1:])]
        data = [[a[0], *(_r(x) for x in a[1:]), *(_r(x) for x in s[1:])] for a, s in zip(acc, score)]
        status = (f"**Sweep of τ({concept})**: {len(lams)} λ × {len(roles)} concepts × {n} prompts = "
                  f"{len(lams) * len(roles) * n} images, {lab.steps} steps, in {time.time() - t0:.1f} s. "
                  f"λ>0 ablates, 0 is the base, λ<0 enhances; * = target.  \n{result.accuracy_note()}")
        return {"table": {"headers": headers, "data": data}, "plot": str(files["plot"]), "csv": str(files["csv"]),
                "status": status}

    def multi(self, concepts: Any, methods: Any = MULTI_DEFAULT_METHODS, n_prompts: Any = 2, steps: Any = None,
              base: Any = None, *, progress: ProgressFn | None = None,
              cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Ablate the first N concepts at once (N = 1 … all) per merge method; target vs control accuracy."""
        from ..research.multi import default_controls, run_multi

        t0 = time.time()
        base = self._base(base)
        names = self._concepts(concepts, "concepts", base)
        methods = self._methods(methods)
        n = parse_int(n_prompts, "prompts", 1, MAX_PROMPTS)
        lab = self._lab(steps, base)
        with research_errors("multi-concept"):
            k, c = len(names), len(default_controls(lab, names))
            # base (all targets + controls), each method and the random baseline at N = 1 … K
            images = n * ((k + c) + (len(methods) + 1) * sum(m + c for m in range(1, k + 1)))
            self._budget("multi-concept", images, lab.steps,
                         f"{k} concepts × {len(methods)} methods (+ base and random) × {n} prompts")
            report = self._reporter(progress, cancel, "loading the model")
            result = run_multi(lab, names, methods=methods, n_prompts=n, progress=report)
            report("saving", 0, 1)
            files = result.save(self._new_dir("multi"))
        headers = list(MULTI_HEADERS)
        data = [[r["method"], r["n"], r["ablated"] or "(none)", _r(r["target_accuracy"]),
                 _r(r["control_accuracy"]), _r(r["target_score"]), _r(r["control_score"]),
                 _r(r["merged_norm"], 4)] for r in result.rows]
        status = (f"**Multi-concept ablation** {' → '.join(names)}: {len(result.rows)} runs, {images} images, "
                  f"{lab.steps} steps, in {time.time() - t0:.1f} s. Controls (never ablated): "
                  f"{', '.join(result.controls)}.  \ntarget acc: mean over the ablated concepts of P(score concept > "
                  "score anchor), lower = erased; control acc: zero-shot accuracy of the controls, higher = unharmed; "
                  "random: random vectors with the same per-tensor norms, added linearly.")
        return {"table": {"headers": headers, "data": data}, "control_vs_n": str(files["control_vs_n"]),
                "tradeoff": str(files["tradeoff"]), "csv": str(files["csv"]), "detail": str(files["detail"]),
                "status": status}

    def analysis(self, concepts: Any, expression: Any = "", base: Any = None, *, progress: ProgressFn | None = None,
                 cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Cosine heatmaps (global, per UNet block), norms, sparsity, sign agreement, angles > 75°; an analogy."""
        from ..research.analyze import analyze, evaluate_expression, parse_expression

        t0 = time.time()
        base = self._base(base, generates=False)
        names = self._concepts(concepts, "concepts", base)
        text = self._expression(expression)
        terms: list[tuple[str, float]] = []
        if text:
            with research_errors("expression"):  # before loading anything: a typo fails fast
                terms = parse_expression(text, self.concept_names(base))
            self._on_disk([t for t, _ in terms], "expression", base)
        lab = self._lab(None, base)
        with research_errors("analysis"):
            report = self._reporter(progress, cancel, "loading the model")
            need = list(dict.fromkeys([*names, *(t for t, _ in terms)]))
            vectors = {}
            for i, name in enumerate(need):
                report(f"task vector {name}", i, len(need))
                vectors[name] = lab.vector(name)
            report("measuring", 0, 1)
            result = analyze({n: vectors[n] for n in names})
            expr_row, note = None, ""
            if text:
                from ..core.diagnostics import sparsity

                tv = evaluate_expression(text, {t: vectors[t] for t, _ in terms})
                cos = {n: tv.cosine(vectors[n]) for n in names}
                result.expression = {"text": text, "terms": terms, "norm": tv.norm(), "tensors": len(tv),
                                     "cosine": cos, "sparsity": sparsity(tv)}
                expr_row = [f"= {text}", len(tv), tv.numel(), _r(tv.norm(), 4), _r(sparsity(tv))]
                shown = " ".join(f"{c:+g}·{t}" for t, c in terms)
                note = (f"  \n**{text}** = {shown}: norm {tv.norm():.4f}; cosine with " +
                        ", ".join(f"{n} {c:+.3f}" for n, c in cos.items()))
            report("plotting", 0, 1)
            files = result.save(self._new_dir("analysis"))
        vec_rows = [[r["vector"], r["tensors"], r["params"], _r(r["norm"], 4), _r(r["sparsity"])]
                    for r in result.vectors_rows()]
        if expr_row:
            vec_rows.append(expr_row)
        t = result.threshold_deg
        pair_rows = [[f"{p['a']} · {p['b']}", _r(p["cosine"]), _r(p["angle_deg"], 1), _r(p["sign_agreement"]),
                      f"{p[f'layers_over_{t:g}deg']} / {p['shared_layers']}"] for p in result.pairs()]
        status = (f"**Analysis** of {len(names)} task vector(s), {len(result.blocks)} UNet blocks, in "
                  f"{time.time() - t0:.1f} s. Angles > {t:g}°: layers (of those both vectors change) where the two "
                  f"vectors are nearly orthogonal or opposed; fewer ↔ more related concepts." + note)
        return {"cosine": str(files["cosine"]), "blocks": str(files["blocks"]) if "blocks" in files else None,
                "vectors": {"headers": list(VECTOR_HEADERS), "data": vec_rows},
                "pairs": {"headers": [*PAIR_HEADERS, f"layers > {t:g}°"],
                          "data": pair_rows},
                "csv": str(files["pairs"]), "vectors_csv": str(files["vectors"]), "status": status}

    def adaptive(self, prompt: Any, pool: Any, t_switch: Any = None, alpha: Any = 2.0, top_k: Any = 2,
                 seeds: Any = "0", steps: Any = None, base: Any = None, calibration: Any = 0, *,
                 progress: ProgressFn | None = None, cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Rank a pool of vectors for a prompt by how far each moves the image from a shared prefix; apply the
        top k (research/adaptive.py, multi-concept paper §5). ``alpha``: one strength or several ("0.5, 2": each
        vector is probed at each, ranked by its larger calibrated relevance). ``calibration`` > 0: rank by each
        vector's movement over its usual one, measured on that many toy-world prompts that name none of the pool
        (kept per process and α)."""
        from ..research.adaptive import Counter, calibrations, save_selection, select

        t0 = time.time()
        prompt = self._prompt(prompt)
        base = self._base(base)
        names = self._concepts(pool, "pool", base)
        lab = self._lab(steps, base)
        t_switch = parse_int(lab.steps // 2 if t_switch is None else t_switch, "t_switch", 0, lab.steps)
        alphas = _parse_strengths(alpha)
        top_k = parse_int(top_k, "top-k", 1, len(names))
        seed_list = parse_seeds(seeds, self.settings.max_seeds, self.settings.max_seed)
        n_cal = parse_int(calibration, "calibration prompts", 0, MAX_CALIBRATION)
        if n_cal and lab.world is None:
            raise UserError(f"calibration prompts: {n_cal}, but base {base!r} has no toy world to draw prompts that "
                            "name none of the pool from (use 0)")
        if len(alphas) > 1 and not n_cal:
            raise UserError(f"α: {', '.join(f'{a:g}' for a in alphas)} are several strengths, which compare only "
                            "calibrated: set calibration prompts > 0, or give one α")
        T, s, p = lab.steps, len(seed_list), len(names)
        keys = {a: (base, tuple(names), T, t_switch, a, n_cal) for a in alphas}
        todo = [a for a in alphas if n_cal and keys[a] not in self.calibrations]
        cal_steps = n_cal * (T + p * len(todo) * (T - t_switch)) if todo else 0
        self._budget("adaptive", s * (T + p * len(alphas) * (T - t_switch) + T) + cal_steps, 1,
                     f"{s} seed(s) × (base + {p} candidates × {len(alphas)} α from step {t_switch} + final)"
                     + (f" + calibration on {n_cal} prompts" if cal_steps else ""))
        with research_errors("adaptive"):
            report = self._reporter(progress, cancel, "loading the model")
            lab.pipe  # noqa: B018 - load before the long step so the progress bar says which stage runs
            if todo:
                cals = calibrations(lab, names, t_switches=[t_switch], alphas=todo, n_prompts=n_cal,
                                    counter=Counter(on_call=lambda c: report(
                                        f"calibration: {n_cal} prompts that name none of the pool, UNet call "
                                        f"{c.calls}", c.image_steps, cal_steps)))
                self.calibrations.update({keys[c.alpha]: c for c in cals.values()})  # all or nothing (Cancel)
            sel = select(lab, prompt, names, t_switch=t_switch, alpha=alphas, seeds=seed_list, top_k=top_k,
                         calibration=[self.calibrations[keys[a]] for a in alphas] if n_cal else None,
                         on_step=lambda i, n: report(f"base + {p} candidates from step {t_switch}, then the final "
                                                     f"images: denoising step {i}/{n}", i, n))
            report("saving", 1, 1)
            files = save_selection(sel, self._new_dir("adaptive"))
        headers, data = _ranking_table(sel.rows(), sel.alphas, sel.seeds)
        several = len(alphas) > 1
        how = (f"Ranked by relevance: each vector's movement (1 − similarity) over its usual one on {n_cal} prompts "
               "that name none of the pool" + (", the larger of its α." if several else ".") if n_cal else
               "Lower similarity to the base image = the vector matters more for this prompt.")
        strength = ", ".join(f"{a:g}" for a in alphas)
        status = (f"**Adaptive selection** for “{prompt}”: chose {', '.join(sel.chosen) or 'none'} (top {top_k}); "
                  f"t_switch {t_switch}/{T}, α {strength}, {s} seed(s), {sel.counts['unet_calls']} UNet calls, "
                  f"{time.time() - t0:.1f} s.  \n{how} Strip: base | each candidate θ + α·τ (ranked"
                  + (", each α" if several else "") + ") | final with the chosen vectors (λ = 1).")
        return {"table": {"headers": headers, "data": data}, "strip": files["strip"], "csv": files["ranking"],
                "status": status}

    # --- validation ----------------------------------------------------------------------------------------
    def _base_id(self, value: Any) -> str:
        """A base the grid offers, by id (empty: the grid's default base)."""
        value = self.choices.default_base() if value is None or value == "" else value
        return parse_choice(value, "base", [b.id for b in self.choices.bases()], "base model")

    def _device_refusal(self, base: str) -> str | None:
        """Why this app's device cannot generate images for the views of ``base`` (None when it can): a catalog
        model marked ``gpu: true`` (the grid's "GPU recommended") is refused on a CPU, where a run of the views that
        generate (hundreds of images) takes hours. The analysis generates nothing and runs anywhere."""
        entry = self.choices.base_entry(base)
        if entry is not None and entry.gpu and self.cpu:
            return (f"base {base!r}: {entry.name} needs a GPU for the sweep, multi-concept and adaptive views (this "
                    f"app runs on a CPU; the analysis runs); pick {TOY} or use a GPU")
        return None

    def _base(self, value: Any, *, generates: bool = True) -> str:
        """A base whose views this app can run: offered by the grid, with concepts, and (for a view that generates
        images) not GPU-only on a CPU."""
        base = self._base_id(value)
        refusal = self._device_refusal(base) if generates else None
        if refusal:
            raise UserError(refusal)
        if not self.concept_names(base):
            where = (f"the toy world at {self.settings.assets} has no ablation checkpoints" if base == TOY else
                     f"the catalog lists no concept checkpoints for the {self.choices.family_of(base)} family")
            raise UserError(f"base {base!r}: the research views need its concepts; {where}")
        return base

    def _concept(self, value: Any, what: str, base: str) -> str:
        return self._concepts([value], what, base)[0]

    def _concepts(self, values: Any, what: str, base: str) -> list[str]:
        """Concepts of ``base``, each once, in the order given (checkbox order = the order they were ticked)."""
        names = parse_choices(values, what, self.concept_names(base), "concept", empty="tick at least one concept")
        self._on_disk(names, what, base)
        return names

    def _on_disk(self, names: Sequence[str], what: str, base: str) -> None:
        """Each concept's checkpoint is on this machine (and no pickle on a hosted app): the grid's check."""
        for name in dict.fromkeys(names):
            self.service.builder.concept(name, what, base, any_kind=True)

    @staticmethod
    def _methods(values: Any) -> list[str]:
        names = parse_choices(values, "methods", list(METHODS), "merge method", unique=False,
                              empty="tick at least one merge method")
        return list(dict.fromkeys(names))

    def _lambda_list(self, text: Any) -> list[float]:
        """1 … MAX_LAMBDAS distinct finite λ within ±max_lambda, sorted (a line plot over λ)."""
        return parse_lambda_list(text, "λ list", MAX_LAMBDAS, self.settings.max_lambda)

    def _steps(self, steps: Any) -> int | None:
        if steps is None or steps == "":
            return None
        cpu = " on a CPU" if self.max_steps < self.settings.max_steps else ""
        try:
            return parse_int(steps, "steps", 1, self.max_steps)
        except UserError as e:
            raise UserError(f"{e}{cpu}") from None

    @staticmethod
    def _expression(text: Any) -> str:
        return parse_line(text, "expression", MAX_EXPRESSION)

    @staticmethod
    def _prompt(text: Any) -> str:
        return parse_line(text, "prompt", MAX_PROMPT, required="write a prompt, e.g. 'a smiley in striped style'")

    @staticmethod
    def _budget(what: str, images: int, steps: int, how: str) -> None:
        check_budget(what, images, steps, BUDGET, how)

    # --- helpers -------------------------------------------------------------------------------------------
    def _lab(self, steps: Any, base: str) -> Lab:
        """The Lab of a validated base on the shared Models cache (a cheap object: built per request, never kept):
        the app's world for the toy base; a catalog model with its family's concepts and CLIP, the base's sampling
        defaults and ``DEFAULT_TEMPLATES`` prompts otherwise."""
        steps = self._steps(steps)
        d = self.choices.defaults_for(base)
        steps = min(d["steps"], self.max_steps) if steps is None else steps
        with research_errors(f"base {base}"):
            if base == TOY:
                return Lab.from_world(self.world, models=self.models, steps=steps)
            family = self.choices.family_of(base)
            clip = self.choices.clip_for(family)
            if clip is None:
                raise UserError(f"base {base!r}: the catalog names no CLIP for the {family} family (the views' "
                                "metrics need one)")
            return Lab(base=self.choices.base_entry(base).source,
                       concepts={c.name: c for c in self.choices.concepts_for(base)}, clip=clip, steps=steps,
                       guidance=d["guidance"], height=d["height"], width=d["width"], models=self.models)

    @staticmethod
    def _reporter(progress: ProgressFn | None, cancel: Callable[[], bool] | None, first: str) -> ProgressFn:
        """Progress callback that also stops the run (between stages) when the session's Cancel was pressed."""
        def report(stage: str, i: int, n: int) -> None:
            if cancel is not None and cancel():
                raise Cancelled("cancelled by the user; the model's weights are restored")
            if progress is not None:
                progress(stage, i, n)
        report(first, 0, 1)
        return report

    def _new_dir(self, view: str) -> Path:
        """A fresh output folder; old ones go as the grid's run folders do (TTL, then the oldest beyond max_runs)."""
        return new_run_dir(self.out_root, self.settings, prefix=f"{view}-")


def _default_expression(objs: Sequence[str], stys: Sequence[str]) -> str:
    """'kite + striped - smiley' on the toy world: an object, plus a style, minus another object."""
    if len(objs) >= 2 and stys:
        return f"{objs[-1]} + {stys[0]} - {objs[0]}"
    names = [*objs, *stys]
    return " - ".join(names[:2]) if names else ""


def _parse_strengths(value: Any) -> tuple[float, ...]:
    """1 … MAX_STRENGTHS distinct probe strengths α in (0, MAX_ALPHA], from "0.5, 2", a number or a list."""
    items = split_list(value) if isinstance(value, (str, list, tuple)) else [value]
    if not 1 <= len(items) <= MAX_STRENGTHS:
        raise UserError(f"α: give 1 to {MAX_STRENGTHS} strengths separated by commas, got {len(items)}")
    out: list[float] = []
    for x in items:
        a = parse_number(x, "α", 0.0, MAX_ALPHA, hint=" (α > 0 ablates; the paper uses 0.5 … 5)")
        if a <= 0:
            raise UserError(f"α: {a:g} must be > 0 (θ + α·τ ablates the candidate's concept)")
        if a in out:
            raise UserError(f"α: {a:g} is given twice")
        out.append(a)
    return tuple(out)


def _ranking_table(rows: list[dict[str, Any]], alphas: Sequence[float],
                   seeds: Sequence[int]) -> tuple[list[str], list[list[Any]]]:
    """The app's ranking table from Selection.rows(): one α shows its similarity per seed; several show the mean
    similarity at each α (the CSV keeps every seed)."""
    rel = ["relevance (× usual)"] if "relevance" in rows[0] else []
    if len(alphas) == 1:
        sims, seed_cols = ["similarity"], [f"similarity_seed{x}" for x in seeds]
        headers = [*ADAPTIVE_HEADERS, *rel, *(f"similarity seed {x}" for x in seeds)]
    else:
        sims, seed_cols = [f"similarity_alpha{a:g}" for a in alphas], []
        headers = ["rank", "vector", *(f"similarity α {a:g}" for a in alphas), "chosen", "λ", *rel]
    data = [[r["rank"], r["vector"], *(_r(r[c]) for c in sims), "✓" if r["chosen"] else "",
             _r(r["lambda"], 2) if r["chosen"] else "–", *([_r(r["relevance"], 2)] if rel else []),
             *(_r(r[c]) for c in seed_cols)] for r in rows]
    return headers, data
