"""Multi-concept interference: ablate the first N concepts at once, N = 1 … all, with each merge method, and
measure what is erased and what is damaged ("Multi-Concept Editing using Task Arithmetic", §3–4).

    result = run_multi(lab, ["smiley", "die", "warning", "striped"], methods=("linear", "ties"), n_prompts=4)
    result.rows          # method, n, target_accuracy (low = erased), control_accuracy (high = unharmed), …
    result.save("out/")  # multi.csv, multi_detail.csv, multi_control_vs_n.png, multi_tradeoff.png

For each N and method the first N vectors are merged with ``merge_methods.merge`` (per-vector weights = λᵢ, the
method's parameters), applied with λ = 1, and the same prompts and seeds are generated:
* target accuracy: mean over the N ablated concepts of their CLIP accuracy against their anchors;
* control accuracy: mean over never-ablated control concepts (toy world: cross, heart) of their zero-shot
  accuracy (share of images classified as themselves among their kind's labels; see sweep.py).
Reference lines: the base model (N = 0, nothing applied), and Ilharco et al.'s random baseline: each τᵢ replaced
by a random vector with its per-tensor norms (``diagnostics.random_like``, seed ``random_seed + i``), added
linearly — damage a vector causes by its size alone, not by its direction.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .lab import Lab, LabError, check_lambdas
from .report import log_progress, text_table
from .sweep import DEFAULT_SEED, check_names, clip_guard, concept_metrics, seeds_for, world_lab

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("linear", "ties", "dare", "median", "topp")
CSV_COLUMNS = ("method", "n", "ablated", "target_accuracy", "control_accuracy", "target_score", "control_score",
               "merged_norm")
DETAIL_COLUMNS = ("method", "n", "concept", "role", "clip_score", "clip_accuracy", "images", "accuracy_definition")
BASE, RANDOM = "base", "random"  # the two reference "methods"

ProgressFn = Callable[[str, int, int], None]


def default_controls(lab: Lab, concepts: Sequence[str]) -> list[str]:
    """In a world: its never-ablated control concepts (toy world: cross, heart). Elsewhere: the anchors of the
    concepts (they are what the ablated concepts turn into, so they should survive)."""
    if lab.world is not None:
        return list(lab.world.control_concepts)
    return list(dict.fromkeys(a for c in concepts if (a := lab.anchor_of(c)) and a not in concepts))


@dataclass
class MultiResult:
    concepts: list[str]
    methods: list[str]
    controls: list[str]
    weights: list[float]
    params: dict[str, dict[str, Any]]
    seeds: list[int]
    steps: int
    rows: list[dict[str, Any]] = field(default_factory=list)    # one per (method, N), CSV_COLUMNS
    detail: list[dict[str, Any]] = field(default_factory=list)  # one per (method, N, concept), DETAIL_COLUMNS

    def _csv(self, rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in columns})
        return buf.getvalue()

    def to_csv(self) -> str:
        return self._csv(self.rows, CSV_COLUMNS)

    def detail_csv(self) -> str:
        return self._csv(self.detail, DETAIL_COLUMNS)

    def as_dict(self) -> dict[str, Any]:
        return {"concepts": self.concepts, "methods": self.methods, "controls": self.controls,
                "weights": self.weights, "params": self.params, "seeds": self.seeds, "steps": self.steps,
                "rows": self.rows, "detail": self.detail}

    def series(self, method: str, metric: str) -> tuple[list[int], list[float]]:
        rs = [r for r in self.rows if r["method"] == method]
        return [r["n"] for r in rs], [r[metric] for r in rs]

    def _subtitle(self) -> str:
        return (f"{len(self.seeds)} images per concept, {self.steps} steps; controls: {', '.join(self.controls)} "
                "(zero-shot accuracy)")

    def plot_control_vs_n(self, path: str | Path) -> Path:
        """Control accuracy (left) and mean target accuracy (right) vs N, per method, with the reference lines."""
        from . import plots

        fig, axes = plots.figure(1, 2, size=(11.0, 4.4))
        for ax, metric, label in ((axes[0], "control_accuracy", "control accuracy (higher = unharmed)"),
                                  (axes[1], "target_accuracy", "mean target accuracy (lower = erased)")):
            for i, m in enumerate(self.methods):
                ax.plot(*self.series(m, metric), marker="o", lw=1.8, color=plots.color(i), label=m)
            if any(r["method"] == RANDOM for r in self.rows):
                ax.plot(*self.series(RANDOM, metric), ls="--", marker="x", color="grey",
                        label="random (linear, same norms)")
            base = next((r[metric] for r in self.rows if r["method"] == BASE), None)
            if base is not None:
                ax.axhline(base, ls=":", color="black", lw=1, label="base model")
            ax.set_xlabel("N = number of concepts ablated at once")
            ax.set_ylabel(label)
            ax.set_xticks(range(1, len(self.concepts) + 1))
            ax.set_ylim(-0.05, 1.05)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8, loc="lower left")
        order = " → ".join(self.concepts)
        fig.suptitle(f"Multi-concept ablation: {order}\n{self._subtitle()}", fontsize=10)
        return plots.save(fig, path)

    def plot_tradeoff(self, path: str | Path) -> Path:
        """Control accuracy vs target accuracy; each method's points joined in order of N and labelled with N."""
        from . import plots

        fig, ax = plots.figure(1, 1, size=(6.4, 5.2))
        styles = [(m, dict(color=plots.color(i), marker="o", lw=1.5)) for i, m in enumerate(self.methods)]
        if any(r["method"] == RANDOM for r in self.rows):
            styles.append((RANDOM, dict(color="grey", marker="x", lw=1, ls="--")))
        for m, style in styles:
            rs = [r for r in self.rows if r["method"] == m]
            xs, ys = [r["target_accuracy"] for r in rs], [r["control_accuracy"] for r in rs]
            ax.plot(xs, ys, label=m, **style)
            for r, x, y in zip(rs, xs, ys):
                ax.annotate(str(r["n"]), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7,
                            color=style["color"])
        base = next((r for r in self.rows if r["method"] == BASE), None)
        if base is not None:
            ax.plot([base["target_accuracy"]], [base["control_accuracy"]], marker="*", ms=14, color="black",
                    ls="", label="base model (N = 0)")
        ax.set_xlabel("mean target accuracy (lower = erased)")
        ax.set_ylabel("control accuracy (higher = unharmed)")
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(f"Target vs control accuracy (labels: N)\n{self._subtitle()}", fontsize=9)
        return plots.save(fig, path)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "multi.csv").write_text(self.to_csv())
        (out / "multi_detail.csv").write_text(self.detail_csv())
        return {"csv": out / "multi.csv", "detail": out / "multi_detail.csv",
                "control_vs_n": self.plot_control_vs_n(out / "multi_control_vs_n.png"),
                "tradeoff": self.plot_tradeoff(out / "multi_tradeoff.png")}


def run_multi(lab: Lab, concepts: Sequence[str], methods: Sequence[str] = DEFAULT_METHODS,
              weights: Sequence[float] | None = None, params: Mapping[str, Mapping[str, Any]] | None = None,
              n_prompts: int | None = 4, seeds: Sequence[int] | None = None, controls: Sequence[str] | None = None,
              random_baseline: bool = True, base_line: bool = True, random_seed: int = 0,
              ns: Sequence[int] | None = None, prompt_seed: int = DEFAULT_SEED,
              progress: ProgressFn | None = None) -> MultiResult:
    """Merge the first N concept vectors with each method (N in ``ns``, default 1 … len(concepts)), apply, and
    measure target and control accuracy (see the module docstring). ``weights``: λ per concept (default 1.0);
    ``params``: {method: {param: value}} for ``merge_methods.merge``."""
    from ..core.diagnostics import random_like
    from ..core.merge_methods import merge

    # 1. check everything before the first image
    concepts, methods, weights, params, ns = _check_request(lab, concepts, methods, weights, params, ns)
    seeds = seeds_for(n_prompts, seeds)
    controls = check_names(lab, default_controls(lab, concepts) if controls is None else controls, "controls")
    clash = [c for c in controls if c in concepts]
    if clash:
        raise LabError(f"controls {clash} are also ablated; a control must be a concept that is never ablated")
    if not controls:
        raise LabError("controls: give at least one never-ablated concept to measure damage on")
    prompts = {n: lab.prompts(n, len(seeds), prompt_seed) for n in [*concepts, *controls]}
    taus = [lab.vector(c) for c in concepts]
    randoms = [random_like(t, seed=random_seed + i) for i, t in enumerate(taus)] if random_baseline else []

    # 2. the runs: (method, N, merged vector or None for the base)
    runs: list[tuple[str, int, Callable[[], Any]]] = []
    if base_line:
        runs.append((BASE, 0, lambda: None))
    for m in methods:
        for n in ns:
            runs.append((m, n, lambda m=m, n=n: merge(taus[:n], method=m, weights=weights[:n], **params.get(m, {}))))
    if random_baseline:
        for n in ns:
            runs.append((RANDOM, n, lambda n=n: merge(randoms[:n], "linear", weights=weights[:n])))

    # 3. one batch per run: the ablated targets (all of them for the base line) and the controls
    result = MultiResult(concepts=concepts, methods=methods, controls=controls, weights=weights, params=params,
                         seeds=seeds, steps=lab.steps)
    for i, (method, n, build) in enumerate(runs):
        if progress:
            progress(f"{method} N={n}", i, len(runs))
        _measure(lab, result, method, n, build(), prompts)
    if progress:
        progress("done", len(runs), len(runs))
    return result


def _check_request(lab: Lab, concepts: Sequence[str], methods: Sequence[str], weights: Sequence[float] | None,
                   params: Mapping[str, Mapping[str, Any]] | None, ns: Sequence[int] | None) -> tuple:
    """The request's concepts, methods, weights, parameters and N values, checked (LabError / MergeError)."""
    from ..core.merge_methods import get_method

    concepts = list(concepts)
    if not concepts:
        raise LabError("concepts: give at least one concept to ablate")
    if len(set(concepts)) != len(concepts):
        raise LabError(f"concepts: {concepts} lists a concept twice")
    for c in concepts:
        lab.concept(c)
    weights = check_lambdas(weights if weights is not None else [1.0] * len(concepts), "weights")
    if len(weights) != len(concepts):
        raise LabError(f"weights: got {len(weights)} for {len(concepts)} concepts; give one λ per concept")
    methods = list(dict.fromkeys(methods))
    params = {m: dict(p) for m, p in (params or {}).items()}
    for m in params:
        if m not in methods:
            raise LabError(f"params given for method {m!r}, which is not in methods {methods}")
    for m in methods:
        get_method(m).validate(params.get(m, {}))  # unknown method/parameter: MergeError now
    ns = sorted(set(range(1, len(concepts) + 1) if ns is None else (int(n) for n in ns)))
    if not ns or ns[0] < 1 or ns[-1] > len(concepts):
        raise LabError(f"ns={ns}: each N must be in 1 … {len(concepts)}")
    return concepts, methods, weights, params, ns


def _measure(lab: Lab, result: MultiResult, method: str, n: int, merged: Any, prompts: Mapping[str, list[str]]
             ) -> None:
    """Generate one run's batch under θ_base + merged and add its rows (per concept and the means) to ``result``."""
    seeds, controls = result.seeds, result.controls
    targets = result.concepts if method == BASE else result.concepts[:n]
    names = [*targets, *controls]
    images = lab.generate([p for c in names for p in prompts[c]], seeds * len(names),
                          [(merged, 1.0)] if merged is not None else [])
    feats = lab.scorer.image_features(images)
    per = {}
    for j, name in enumerate(names):
        per[name] = concept_metrics(lab, feats[j * len(seeds):(j + 1) * len(seeds)], name, extra=controls)
        result.detail.append({"method": method, "n": n, "concept": name,
                              "role": "target" if name in targets else "control", "images": per[name]["n"],
                              **{k: per[name][k] for k in ("clip_score", "clip_accuracy", "accuracy_definition")}})

    def mean(group: Sequence[str], k: str) -> float:
        return sum(per[c][k] for c in group) / len(group)

    result.rows.append({"method": method, "n": n, "ablated": "+".join(result.concepts[:n]),
                        "target_accuracy": mean(targets, "clip_accuracy"),
                        "control_accuracy": mean(controls, "clip_accuracy"),
                        "target_score": mean(targets, "clip_score"), "control_score": mean(controls, "clip_score"),
                        "merged_norm": merged.norm() if merged is not None else 0.0})
    log.info("%s N=%d: target %.3f control %.3f", method, n, result.rows[-1]["target_accuracy"],
             result.rows[-1]["control_accuracy"])


# --- command line --------------------------------------------------------------------------------------------
def parse_params(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``["ties.density=0.3", "dare.p=0.7"]`` → {"ties": {"density": 0.3}, "dare": {"p": 0.7}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not (eq and dot and method and name and value):
            raise LabError(f"--param {item!r}: write METHOD.NAME=VALUE, e.g. ties.density=0.3")
        try:
            v: Any = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            v = value  # a choice, e.g. dare.combine=ties
        out.setdefault(method, {})[name] = v
    return out


def cmd_multi(args: argparse.Namespace) -> dict[str, Any]:
    lab = world_lab(args)
    weights = args.weights
    if weights and len(weights) == 1:
        weights = weights * len(args.concepts)  # one λ for all
    if args.n_prompts < 1:
        raise LabError(f"--n-prompts {args.n_prompts}: need at least 1")
    result = clip_guard(lambda: run_multi(
        lab, args.concepts, methods=args.methods, weights=weights, params=parse_params(args.param),
        n_prompts=args.n_prompts, seeds=[args.seed + i for i in range(args.n_prompts)], controls=args.controls,
        random_baseline=not args.no_random, random_seed=args.random_seed, ns=args.ns, prompt_seed=args.seed,
        progress=log_progress("multi")))
    files = result.save(args.out)
    return {**result.as_dict(), "files": {k: str(v) for k, v in files.items()}}


def print_multi(result: dict[str, Any]) -> None:
    rows = [[r["method"], r["n"], r["target_accuracy"], r["control_accuracy"], r["target_score"],
             r["control_score"], r["merged_norm"]] for r in result["rows"]]
    print(f"ablation order: {' → '.join(result['concepts'])}; controls: {', '.join(result['controls'])}; "
          f"{len(result['seeds'])} images per concept, {result['steps']} steps")
    print(text_table(["method", "N", "target acc", "control acc", "target score", "control score", "‖merged‖"], rows))
    print("\ntarget acc: mean over the N ablated concepts of P(score concept > score anchor); control acc: mean "
          "zero-shot accuracy of the controls")
    print(f"wrote {', '.join(result['files'].values())}")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "multi", help="ablate N = 1 … all concepts at once per merge method; control damage vs N",
        description="For N = 1 … len(concepts), merge the first N ablation vectors with each method, apply them and "
        "measure the mean target accuracy (vs anchors; low = erased) and the control concepts' zero-shot accuracy "
        "(high = unharmed), with the base model and a random-vector baseline (same per-tensor norms, added "
        "linearly) as references. Writes DIR/multi.csv, DIR/multi_detail.csv, DIR/multi_control_vs_n.png and "
        "DIR/multi_tradeoff.png.")
    p.add_argument("--concepts", nargs="+", required=True, help="concepts in the order they are added")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   help=f"merge methods (default: {' '.join(DEFAULT_METHODS)})")
    p.add_argument("--weights", type=float, nargs="+", help="λ per concept (one value: the same for all; default 1)")
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE",
                   help="a merge parameter, e.g. ties.density=0.3 (repeatable)")
    p.add_argument("--controls", nargs="+", help="never-ablated control concepts (default: cross heart)")
    p.add_argument("--ns", type=int, nargs="+", help="the N values to run (default: 1 … len(concepts))")
    p.add_argument("--n-prompts", type=int, default=4, help="images per concept and run (default 4)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="first seed; image i uses seed+i (default 42)")
    p.add_argument("--no-random", action="store_true", help="skip the random-vector baseline")
    p.add_argument("--random-seed", type=int, default=0, help="seed of the random vectors (vector i: seed+i)")
    p.add_argument("--steps", type=int, help="denoising steps (default: world.json)")
    p.add_argument("--assets", help="toy world folder (default assets/toyworld)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_multi, human=print_multi)
