"""Sweep: CLIP score and CLIP accuracy of a concept and of control concepts over a list of λ (TAD, Table 2).

    lab = Lab.from_world("assets/toyworld")
    result = run_sweep(lab, "smiley", [-2, -1, 0, 0.5, 1], n_prompts=8)
    result.rows          # one row per (λ, concept): lambda, concept, role, clip_score, clip_accuracy, n, …
    result.save("out/")  # out/sweep.csv, out/sweep.png

Every λ uses the same prompts and seeds, so a row differs from another only by the weights θ_base + λ·τ
(λ = +1 ablates, 0 is the base, −1 enhances). All images of one λ (target, anchor and controls) are generated
in one batch.

CLIP accuracy of a concept (the ``accuracy_definition`` column says which applies to a row):
* a concept with an anchor (the targets: smiley → circle, striped → plain): Kumari et al.'s accuracy, the share
  of images whose CLIP score for the concept beats the score for its anchor;
* a concept without one (anchors and never-ablated controls: circle, cross, heart, plain): zero-shot accuracy,
  the share of its images that CLIP classifies as that concept among all labels of its kind (the toy world's
  10 objects or 4 styles; on other models the concepts, anchors and controls of that kind).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ClipUnavailable
from .lab import Lab, LabError, check_lambdas
from .report import log_progress, text_table

log = logging.getLogger(__name__)

ROLES = ("target", "anchor", "control")
CSV_COLUMNS = ("lambda", "concept", "role", "clip_score", "clip_accuracy", "n", "accuracy_definition")
DEFAULT_SEED = 42  # Kumari's evaluation seed: image i uses seed 42 + i

ProgressFn = Callable[[str, int, int], None]


# --- measuring a concept (shared with multi.py) ------------------------------------------------------------
def labels_of(lab: Lab, kind: str, extra: Sequence[str] = ()) -> list[str]:
    """The zero-shot label set of a kind: the words of that kind in the lab's world, else the lab's concepts,
    anchors and ``extra`` names of that kind."""
    if lab.world is not None:
        return lab.world.words(kind)
    names = [n for c in lab.concepts.values() if c.kind == kind for n in (c.name, c.anchor)]
    names += [n for n in extra if lab.kind_of(n) == kind]
    return list(dict.fromkeys(names))


def accuracy_definition(lab: Lab, name: str, labels: Sequence[str]) -> str:
    anchor = lab.anchor_of(name)
    if anchor:
        return f"P(score '{name}' > score '{anchor}')"
    return f"zero-shot top-1 among {len(labels)} {lab.kind_of(name)} labels"


def concept_metrics(lab: Lab, feats: Any, name: str, extra: Sequence[str] = ()) -> dict[str, Any]:
    """CLIP score and accuracy of ``name`` on image features ``feats`` (definitions in the module docstring)."""
    kind, anchor = lab.kind_of(name), lab.anchor_of(name)
    labels = labels_of(lab, kind, [name, *extra])
    scorer = lab.scorer
    if anchor:
        acc = scorer.clip_accuracy(feats, name, anchor, kind)
    else:
        predicted = scorer.classify(feats, labels, kind)
        acc = sum(p == name for p in predicted) / len(predicted)
    return {"clip_score": scorer.clip_score(feats, name, kind), "clip_accuracy": float(acc), "n": int(len(feats)),
            "accuracy_definition": accuracy_definition(lab, name, labels)}


def seeds_for(n_prompts: int | None, seeds: Sequence[int] | None) -> list[int]:
    """Seeds of the images of each concept: ``seeds``, else 42, 43, … (``n_prompts`` of them)."""
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        if not seeds or (n_prompts is not None and n_prompts != len(seeds)):
            raise LabError(f"seeds: got {len(seeds)} seed(s) for n_prompts={n_prompts}; give one seed per prompt")
        return seeds
    if n_prompts is None or int(n_prompts) < 1:
        raise LabError(f"n_prompts={n_prompts!r}: need at least 1 prompt per concept")
    return [DEFAULT_SEED + i for i in range(int(n_prompts))]


def check_names(lab: Lab, names: Sequence[str], what: str) -> list[str]:
    """Known concepts or (toy world) world words, without duplicates; else a LabError naming the value."""
    out = []
    for n in names:
        if n not in lab.concepts:
            try:
                lab.prompts(n, 1)  # the toy world knows its own words; other labs take any name
            except LabError as e:
                raise LabError(f"{what}: {e}") from None
        out.append(n)
    return list(dict.fromkeys(out))


def default_controls(lab: Lab, concept: str) -> list[str]:
    """In a world: its never-ablated control concepts (toy world: cross, heart) and its first other style that is
    no anchor (a style some concept stands for); elsewhere up to three other concepts."""
    w = lab.world
    if w is not None:
        style = next((s for s in w.styles if s != concept and s not in w.anchors()), None)
        return [*w.control_concepts, *([style] if style else [])]
    return [n for n in lab.concepts if n != concept][:3]


# --- the sweep ---------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    concept: str
    lambdas: list[float]
    rows: list[dict[str, Any]]
    prompts: dict[str, list[str]]  # concept → its prompts (the same for every λ)
    seeds: list[int]
    steps: int
    roles: dict[str, str] = field(default_factory=dict)    # concept → target | anchor | control
    anchors: dict[str, str] = field(default_factory=dict)  # concept → anchor, for the concepts that have one

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: r[k] for k in CSV_COLUMNS})
        return buf.getvalue()

    def as_dict(self) -> dict[str, Any]:
        return {"concept": self.concept, "lambdas": self.lambdas, "roles": self.roles, "seeds": self.seeds,
                "steps": self.steps, "prompts": self.prompts, "anchors": self.anchors, "rows": self.rows}

    def table(self, metric: str) -> tuple[list[str], list[list[Any]]]:
        """Headers and rows of one metric: a row per λ, a column per concept (the target marked with *)."""
        names = list(self.roles)
        val = {(r["lambda"], r["concept"]): r[metric] for r in self.rows}
        headers = ["λ", *(n + ("*" if self.roles[n] == "target" else "") for n in names)]
        return headers, [[f"{lam:+g}" if lam else "0", *(val[lam, n] for n in names)] for lam in self.lambdas]

    def accuracy_note(self) -> str:
        """Which accuracy each concept has, in one line (for plots and printed tables)."""
        defs = {r["concept"]: r["accuracy_definition"] for r in self.rows}
        vs = [f"{n}→{a}" for n, a in self.anchors.items() if n in defs]
        zero = {d: [n for n, e in defs.items() if e == d] for n, d in defs.items() if n not in self.anchors}
        parts = [f"P(score concept > score anchor) for {', '.join(vs)}"] if vs else []
        parts += [f"{d} for {', '.join(ns)}" for d, ns in zero.items()]
        return "accuracy: " + "; ".join(parts)

    def plot(self, path: str | Path) -> Path:
        """Accuracy and score vs λ; the target bold; λ < 0 "enhance", λ > 0 "ablate"."""
        from . import plots

        fig, axes = plots.figure(1, 2, size=(11.0, 4.4))
        for ax, metric, label in ((axes[0], "clip_accuracy", "CLIP accuracy"), (axes[1], "clip_score",
                                                                                  "CLIP score")):
            plots.shade_lambda(ax, self.lambdas)
            for i, name in enumerate(self.roles):
                role = self.roles[name]
                ys = [next(r[metric] for r in self.rows if r["lambda"] == lam and r["concept"] == name)
                      for lam in self.lambdas]
                target = role == "target"
                ax.plot(self.lambdas, ys, marker="o", ms=6 if target else 4, lw=3.0 if target else 1.3,
                        color="black" if target else plots.color(i), zorder=3 if target else 2,
                        label=f"{name} ({role})")
            ax.set_xlabel("λ  (0 = base model)")
            ax.set_ylabel(label)
            if metric == "clip_accuracy":
                ax.set_ylim(-0.05, 1.05)
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=8, loc="best")
        fig.suptitle(f"Sweep of τ({self.concept}): {len(self.seeds)} images per concept and λ, {self.steps} steps",
                     fontsize=11)
        fig.text(0.5, 0.005, self.accuracy_note(), ha="center", va="bottom", fontsize=8, color="dimgrey")
        fig.get_layout_engine().set(rect=(0, 0.04, 1, 0.96))
        return plots.save(fig, path)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "sweep.csv").write_text(self.to_csv())
        return {"csv": out / "sweep.csv", "plot": self.plot(out / "sweep.png")}


@dataclass
class SweepPlan:
    """What a sweep generates for every λ: one batch with each role's prompts, all on the same seeds."""

    concept: str
    lambdas: list[float]
    roles: dict[str, str]           # concept → target | anchor | control, in batch order
    prompts: dict[str, list[str]]   # concept → its prompts
    seeds: list[int]                # the seeds of each concept's images
    vector: Any                     # τ(concept)

    @property
    def batch(self) -> tuple[list[str], list[int]]:
        """Prompts and seeds of one λ's batch: the roles one after the other."""
        return [p for n in self.roles for p in self.prompts[n]], self.seeds * len(self.roles)

    def combo(self, lam: float) -> list[tuple[Any, float]]:
        """The weights of λ: θ_base + λ·τ (λ = 0 is the unpatched base)."""
        return [(self.vector, lam)] if lam else []

    def measure(self, lab: Lab, lam: float, feats: Any) -> list[dict[str, Any]]:
        """One row per concept from the CLIP features of a λ's batch (in :attr:`batch` order)."""
        n = len(self.seeds)
        return [{"lambda": lam, "concept": name, "role": role,
                 **concept_metrics(lab, feats[j * n:(j + 1) * n], name, extra=list(self.roles))}
                for j, (name, role) in enumerate(self.roles.items())]


def plan_sweep(lab: Lab, concept: str, lambdas: Sequence[float], controls: Sequence[str] | None = None,
               n_prompts: int | None = 8, seeds: Sequence[int] | None = None,
               prompt_seed: int = DEFAULT_SEED) -> SweepPlan:
    """Check a sweep request (before loading anything) and plan its batches; builds τ(concept) last."""
    lab.concept(concept)
    lambdas = check_lambdas(lambdas)
    seeds = seeds_for(n_prompts, seeds)
    anchor = lab.anchor_of(concept)
    controls = check_names(lab, default_controls(lab, concept) if controls is None else controls, "controls")
    roles = {concept: "target", **({anchor: "anchor"} if anchor else {})}
    roles.update({c: "control" for c in controls if c not in roles})
    prompts = {n: lab.prompts(n, len(seeds), prompt_seed) for n in roles}
    return SweepPlan(concept, lambdas, roles, prompts, seeds, lab.vector(concept))


def run_sweep(lab: Lab, concept: str, lambdas: Sequence[float], controls: Sequence[str] | None = None,
              n_prompts: int | None = 8, seeds: Sequence[int] | None = None, prompt_seed: int = DEFAULT_SEED,
              progress: ProgressFn | None = None) -> SweepResult:
    """Generate the same prompts and seeds under θ_base + λ·τ(concept) for each λ and measure every concept.

    ``controls`` default to :func:`default_controls`; the concept's anchor is always measured (role "anchor").
    """
    # 1. check the request before loading anything, then plan the batches
    plan = plan_sweep(lab, concept, lambdas, controls, n_prompts, seeds, prompt_seed)
    batch_prompts, batch_seeds = plan.batch

    # 2. one batch per λ (bench/bench_sweep.py measures it against one pipeline call per image)
    rows: list[dict[str, Any]] = []
    for i, lam in enumerate(plan.lambdas):
        if progress:
            progress(f"λ = {lam:g}", i, len(plan.lambdas))
        images = lab.generate(batch_prompts, batch_seeds, plan.combo(lam))
        # 3. slice the batch per concept and measure
        rows += plan.measure(lab, lam, lab.scorer.image_features(images))
        log.info("λ=%g: %s", lam, {r["concept"]: round(r["clip_accuracy"], 3) for r in rows[-len(plan.roles):]})
    if progress:
        progress("done", len(plan.lambdas), len(plan.lambdas))
    return SweepResult(concept=concept, lambdas=plan.lambdas, rows=rows, prompts=plan.prompts, seeds=plan.seeds,
                       steps=lab.steps, roles=plan.roles,
                       anchors={n: a for n in plan.roles if (a := lab.anchor_of(n))})


# --- command line --------------------------------------------------------------------------------------------
def world_lab(args: argparse.Namespace) -> Lab:
    """The lab of the world folder ``--assets`` with ``--steps`` (shared by the research commands)."""
    kw = {"steps": args.steps} if getattr(args, "steps", None) else {}
    return Lab.from_world(args.assets, **kw)


def clip_guard(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with a missing CLIP turned into a one-line LabError (the CLI prints it and exits 2)."""
    try:
        return fn()
    except ClipUnavailable as e:
        raise LabError(str(e)) from None


def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    lab = world_lab(args)
    result = clip_guard(lambda: run_sweep(lab, args.concept, args.lambdas, controls=args.controls,
                                          n_prompts=args.n_prompts, prompt_seed=args.seed,
                                          seeds=[args.seed + i for i in range(args.n_prompts)],
                                          progress=log_progress("sweep")))
    files = result.save(args.out)
    return {**result.as_dict(), "files": {k: str(v) for k, v in files.items()}}


def print_sweep(result: dict[str, Any]) -> None:
    res = SweepResult(**{k: result[k] for k in ("concept", "lambdas", "rows", "prompts", "seeds", "steps",
                                                 "roles", "anchors")})
    for metric, title in (("clip_accuracy", "CLIP accuracy"), ("clip_score", "CLIP score")):
        headers, rows = res.table(metric)
        print(f"{title} ({len(res.seeds)} images per cell, {res.steps} steps; * = target)")
        print(text_table(headers, rows), end="\n\n")
    for name in res.roles:
        d = next(r["accuracy_definition"] for r in res.rows if r["concept"] == name)
        print(f"  {name} ({res.roles[name]}): accuracy = {d}")
    print(f"\nwrote {result['files']['csv']} and {result['files']['plot']}")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sweep", help="CLIP score/accuracy of a concept and controls over λ (TAD Table 2)",
        description="Generate the same prompts and seeds under θ_base + λ·τ(concept) for each λ (λ>0 ablates, 0 is "
        "the base, λ<0 enhances) and measure CLIP score and accuracy of the target, its anchor and control concepts. "
        "Accuracy: target vs its anchor (Kumari); concepts without an anchor: zero-shot top-1 among their kind's "
        "labels. Writes DIR/sweep.csv and DIR/sweep.png.")
    p.add_argument("--concept", required=True, help="concept to sweep (a toy world target: smiley, striped, …)")
    p.add_argument("--lambdas", type=float, nargs="+", default=[-2.0, -1.0, 0.0, 0.5, 1.0],
                   help="λ values (default: -2 -1 0 0.5 1)")
    p.add_argument("--controls", nargs="*", help="control concepts (default: cross heart and another style)")
    p.add_argument("--n-prompts", type=int, default=8, help="images per concept and λ (default 8)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="first seed; image i uses seed+i (default 42)")
    p.add_argument("--steps", type=int, help="denoising steps (default: world.json)")
    p.add_argument("--assets", help="toy world folder (default assets/toyworld)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_sweep, human=print_sweep)
