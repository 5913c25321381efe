"""Measure the toy world against the papers' claims and write the results into ``assets/toyworld/MODEL_CARD.md``.

Run: ``python -m tad_demo.toyworld.evaluate`` (about an hour on 2 cores) or ``--quick`` (a few images per
measurement: a smoke test of the whole evaluation, used by the tests). Every image comes from fixed prompts and
seeds that no training run used, so the numbers are reproducible; every mean comes with its standard error.

The metric is Kumari et al.'s ``evaluate.py``: CLIP score = 2.5·max(cos(image, text), 0) with the bare concept
string as text ("smiley", "circle"), accuracy = share of images scoring higher for the target than the anchor.
Control concepts (``control_concepts`` in world.json) are held out of every training objective; a control
image is "right" when the CLIP, zero-shot among the world's objects, names the control object.

What is measured, in the order of the model card's tables:
  a. the CLIP: zero-shot accuracy on held-out renders, and its score as a function of a target's strength
  b. base prompt following: objects/styles that are not targets, colour
  c. per target: base, ablated (λ=+1), enhanced (λ=−1) score and accuracy; hard negatives under the ablation;
     a random vector with τ's per-tensor norms
  d. held-out controls under each single vector (λ=+1)
  e. an object and a style vector together, ablated and enhanced
  f. multi-concept interference: control accuracy vs the number of vectors added; merge methods at N = all
  g. adaptive selection: ROC AUC at t_switch = T/2
  h. gradual ablation: target accuracy vs λ
  i. ControlNets: agreement of generated images with their condition, vs no control
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.diagnostics import random_like
from ..core.merge_methods import merge
from ..core.patching import WeightPatcher
from ..core.task_vector import TaskVector
from ..runtime.metrics import ClipScorer
from ..runtime.sampling import PromptCache, sample
from . import world
from .data import ASSETS

log = logging.getLogger("evaluate")

SEED = 10_000            # sampling seeds SEED, SEED+1, ...: no training run samples (they render), so disjoint
STEPS, GUIDANCE = 20, 5.0  # the app's defaults (Kumari: DDIM 50 steps, guidance 6 on SD)
LAMBDAS_GRADUAL = (0.0, 0.25, 0.5, 0.75, 1.0)
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
MULTI_ORDER = ("smiley", "striped", "die", "dotted", "warning", "checkered", "kite")  # objects and styles alternate
MERGES = {"ties": {"density": 0.2}, "dare": {"p": 0.9}, "median": {}, "topp": {"density": 0.2}}
ADAPTIVE_ALPHAS = (0.5, 1.0, 2.0)  # the paper's Table 3 range where the toy world's AUC is highest
ADAPTIVE_PROBE = (0.5, 2.0)        # the two-strength probe (research.adaptive.strongest); chosen on probe seeds 2-4
PAIR = ("smiley", "striped")


@dataclass
class Sizes:
    per_measure: int = 64    # images per (concept, weights) measurement (and per control concept)
    zero_shot: int = 600     # held-out renders for (a)
    strength: int = 64       # renders per strength level and kind for (a)
    follow: int = 256        # random prompts for prompt following (b)
    adaptive: int = 144      # labelled prompts for the ROC AUC (g): 48 gave ±0.04 between prompt draws
    calibration: int = 32    # neutral prompts (no target named) for the calibrated ranking of (g)
    control: int = 48        # images per ControlNet condition (i)


QUICK = Sizes(per_measure=6, zero_shot=40, strength=6, follow=12, adaptive=8, calibration=4, control=4)


@dataclass
class Stat:
    """A mean with its standard error over ``n`` samples (JSON-friendly)."""

    mean: float
    se: float
    n: int

    @classmethod
    def of(cls, xs) -> Stat:
        a = np.asarray(xs, dtype=np.float64)
        if not len(a):
            return cls(float("nan"), float("nan"), 0)
        se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")
        return cls(float(a.mean()), se, len(a))


def concept_prompts(concept: str, kind: str, n: int, tag: str = "eval") -> list[str]:
    """``n`` prompts naming ``concept`` in its slot, other attributes and templates random (seeded by name)."""
    rng = random.Random(f"{tag}-{concept}")
    templates = [t for t in world.PROMPT_TEMPLATES if "{" + kind + "}" in t]
    return [world.sample_scene(rng, **{kind: concept}).caption(rng.choice(templates)) for _ in range(n)]


@dataclass
class Evaluator:
    """Generates images under weight combinations and scores them; features are cached per (prompts, weights)."""

    root: Path
    sizes: Sizes
    meta: dict = field(init=False)
    pipe: object = field(init=False)
    clip: ClipScorer = field(init=False)
    vectors: dict[str, TaskVector] = field(init=False)
    kinds: dict[str, tuple[str, str]] = field(init=False)   # target -> (kind, anchor)
    _feats: dict = field(init=False, default_factory=dict)

    def __post_init__(self):
        from diffusers import StableDiffusionPipeline

        self.meta = json.loads((self.root / "world.json").read_text())
        self.pipe = StableDiffusionPipeline.from_pretrained(self.root / self.meta.get("base", "base"))
        self.pipe.set_progress_bar_config(disable=True)
        self.clip = ClipScorer.load(self.root / self.meta.get("clip", "clip"))
        self.patcher = WeightPatcher(self.pipe)
        self.cache = PromptCache(self.pipe)  # k/v edits do not touch the text encoder
        self.vectors = {c["name"]: TaskVector.from_pair(self.root / "base", self.root / c["checkpoint"])
                        for c in self.meta["concepts"]}
        self.kinds = {c["name"]: (c["kind"], c["anchor"]) for c in self.meta["concepts"]}
        # hard negatives need an anchor to be scored against: those that are concepts of this world
        self.hard_negatives = {c["name"]: [h for h in c.get("hard_negatives", []) if h in self.kinds]
                               for c in self.meta["concepts"]}
        self.controls = list(self.meta.get("control_concepts", []))

    # --- images and features ---------------------------------------------------------------------------
    def combo(self, weights: dict[str, float]) -> list[tuple[TaskVector, float]]:
        return [(self.vectors[n], lam) for n, lam in weights.items() if lam]

    def features(self, concept: str, kind: str, weights: dict[str, float] | str,
                 combo: list | None = None) -> torch.Tensor:
        """CLIP image features of ``per_measure`` images of prompts naming ``concept`` under ``weights``
        ({vector: λ}; or a label with an explicit ``combo``). Same prompts and seeds for every weighting."""
        label = weights if isinstance(weights, str) else tuple(sorted((k, v) for k, v in weights.items() if v))
        key = (concept, label)
        if key not in self._feats:
            n = self.sizes.per_measure
            prompts = concept_prompts(concept, kind, n)
            seeds = [SEED + i for i in range(n)]
            with self.patcher.patched(combo if combo is not None else self.combo(weights)):
                imgs = sample(self.pipe, prompts, seeds, steps=STEPS, guidance=GUIDANCE, prompt_cache=self.cache)
            self._feats[key] = self.clip.image_features(imgs)
        return self._feats[key]

    # --- per-image measures ------------------------------------------------------------------------------
    def target(self, name: str, weights, combo=None) -> dict[str, np.ndarray]:
        """Per image: the target's score and whether it beats the anchor."""
        kind, anchor = self.kinds[name]
        s = self.clip.scores(self.features(name, kind, weights, combo),
                             [self.clip.caption(name), self.clip.caption(anchor)]).numpy()
        return {"score": s[:, 0], "hit": (s[:, 0] > s[:, 1]).astype(float)}

    def recognised(self, name: str, kind: str, weights, combo=None) -> np.ndarray:
        """Per image: 1 if the CLIP, zero-shot among the world's words of this kind, names ``name``."""
        labels = list(self.meta["objects"] if kind == "object" else self.meta["styles"])
        pred = self.clip.classify(self.features(name, kind, weights, combo), labels)
        return np.array([p == name for p in pred], float)

    def controls_hit(self, weights, combo=None) -> np.ndarray:
        """Per image, over every control concept's images: recognised as its control object."""
        return np.concatenate([self.recognised(c, "object", weights, combo) for c in self.controls])


# --- the measurements ---------------------------------------------------------------------------------------

def measure_clip(ev: Evaluator) -> dict:
    """(a) Zero-shot accuracy on held-out full-strength renders, and score/accuracy vs strength."""
    from .data import render_dataset

    scenes, ims = render_dataset(ev.sizes.zero_shot, seed=777, cache=False, strength=(1.0, 1.0))  # never trained on
    feats = ev.clip.image_features([Image.fromarray(i) for i in ims])
    out = {"zero_shot": {}}
    for attr, labels in (("object", world.OBJECTS), ("style", world.STYLES), ("color", list(world.COLORS))):
        pred = ev.clip.classify(feats, list(labels))
        out["zero_shot"][attr] = asdict(Stat.of([p == getattr(s, attr) for p, s in zip(pred, scenes)]))
    curve: dict[str, dict] = {}
    rng = random.Random("eval-strength")
    for kind, targets in world.TARGETS_OF.items():
        curve[kind] = {}
        for s in STRENGTHS:
            names, images = [], []
            for i in range(ev.sizes.strength):
                t = list(targets)[i % len(targets)]
                scene = world.sample_scene(rng, **{kind: t, "detail" if kind == "object" else "pattern": s})
                names.append(t)
                images.append(world.render(scene))
            f = ev.clip.image_features(images)
            sc = [ev.clip.scores(f[i:i + 1], [ev.clip.caption(t), ev.clip.caption(targets[t])])[0].tolist()
                  for i, t in enumerate(names)]
            curve[kind][str(s)] = {"score": asdict(Stat.of([a for a, _ in sc])),
                                   "accuracy": asdict(Stat.of([a > b for a, b in sc]))}
    out["strength"] = curve
    return out


def measure_follow(ev: Evaluator) -> dict:
    """(b) Base prompt following: prompts naming object, style and colour; each classified zero-shot."""
    rng = random.Random("eval-follow")
    scenes = [world.sample_scene(rng) for _ in range(ev.sizes.follow)]
    prompts = [s.caption(world.PROMPT_TEMPLATES[3]) for s in scenes]
    imgs = sample(ev.pipe, prompts, [SEED + i for i in range(len(prompts))], steps=STEPS, guidance=GUIDANCE,
                  prompt_cache=ev.cache)
    feats = ev.clip.image_features(imgs)
    obj = ev.clip.classify(feats, list(world.OBJECTS))
    sty = ev.clip.classify(feats, list(world.STYLES))
    col = ev.clip.classify(feats, list(world.COLORS))
    targets = {**world.OBJECT_TARGETS, **world.STYLE_TARGETS}
    non_target_obj = [o == s.object for o, s in zip(obj, scenes) if s.object not in targets]
    non_target_sty = [t == s.style for t, s in zip(sty, scenes) if s.style not in targets]
    # a target rendered at middling strength may read as its anchor: count either as followed
    target_obj = [o in (s.object, targets[s.object]) for o, s in zip(obj, scenes) if s.object in targets]
    return {"objects (not targets)": asdict(Stat.of(non_target_obj)),
            "styles (not targets)": asdict(Stat.of(non_target_sty)),
            "colour": asdict(Stat.of([c == s.color for c, s in zip(col, scenes)])),
            "target objects (target or anchor)": asdict(Stat.of(target_obj))}


def measure_targets(ev: Evaluator) -> dict:
    """(c) Per target: base, λ=+1, λ=−1; the paired score difference; hard negatives; a random vector."""
    out = {}
    for t in ev.vectors:
        base, abl, enh = ev.target(t, {}), ev.target(t, {t: 1.0}), ev.target(t, {t: -1.0})
        rand = ev.target(t, f"random-{t}", [(random_like(ev.vectors[t], seed=0), 1.0)])
        hard = {}
        for h in ev.hard_negatives.get(t, []):
            hb, ha = ev.target(h, {}), ev.target(h, {t: 1.0})
            hard[h] = {"base": asdict(Stat.of(hb["hit"])), "ablated": asdict(Stat.of(ha["hit"])),
                       "change": asdict(Stat.of(ha["hit"] - hb["hit"]))}
        out[t] = {
            "kind": ev.kinds[t][0], "anchor": ev.kinds[t][1],
            "base": {k: asdict(Stat.of(v)) for k, v in base.items()},
            "ablated": {k: asdict(Stat.of(v)) for k, v in abl.items()},
            "enhanced": {k: asdict(Stat.of(v)) for k, v in enh.items()},
            "enhance_gain": asdict(Stat.of(enh["score"] - base["score"])),  # paired: same prompts and seeds
            "random": {k: asdict(Stat.of(v)) for k, v in rand.items()},
            "hard_negatives": hard,
        }
        log.info("c. %s: acc %.2f -> %.2f (λ=+1); score %.3f -> %.3f (λ=−1)", t, base["hit"].mean(),
                 abl["hit"].mean(), base["score"].mean(), enh["score"].mean())
    return out


def measure_controls(ev: Evaluator) -> dict:
    """(d) Held-out control concepts under each single vector at λ=+1 (paired with the base)."""
    base = ev.controls_hit({})
    per = {t: ev.controls_hit({t: 1.0}) for t in ev.vectors}
    return {"controls": ev.controls, "base": asdict(Stat.of(base)),
            "per_vector": {t: {"accuracy": asdict(Stat.of(v)), "change": asdict(Stat.of(v - base))}
                           for t, v in per.items()},
            "mean_change": float(np.mean([(v - base).mean() for v in per.values()]))}


def measure_pair(ev: Evaluator) -> dict:
    """(e) An object and a style vector together: ablated (λ=+1 each) and enhanced (λ=−1 each)."""
    o, s = PAIR
    out = {"pair": list(PAIR)}
    for name, lam in (("ablated", 1.0), ("enhanced", -1.0)):
        w = {o: lam, s: lam}
        out[name] = {t: {k: asdict(Stat.of(v)) for k, v in ev.target(t, w).items()} for t in PAIR}
    out["enhance_gain"] = {t: asdict(Stat.of(ev.target(t, {o: -1.0, s: -1.0})["score"] - ev.target(t, {})["score"]))
                           for t in PAIR}
    return out


def measure_multi(ev: Evaluator) -> dict:
    """(f) Control accuracy with the first N vectors added (λ=+1 each), N = 0 … all; merge methods at N = all."""
    order = [t for t in MULTI_ORDER if t in ev.vectors]
    curve = []
    for n in range(len(order) + 1):
        hits = ev.controls_hit({t: 1.0 for t in order[:n]})
        curve.append({"n": n, "control": asdict(Stat.of(hits))})
    xs = np.array([c["n"] for c in curve], float)
    ys = np.array([c["control"]["mean"] for c in curve])
    slope, icpt = np.polyfit(xs, ys, 1)
    var = ((ys - ys.mean()) ** 2).sum()
    r2 = 1 - ((ys - (slope * xs + icpt)) ** 2).sum() / var if var > 0 else float("nan")  # flat: no fit to judge
    everything = {t: 1.0 for t in order}

    def targets_acc(weights, combo=None) -> dict:
        return asdict(Stat.of(np.concatenate([ev.target(t, weights, combo)["hit"] for t in order])))

    methods = {"linear": {"control": curve[-1]["control"], "targets": targets_acc(everything)}}
    vecs = [ev.vectors[t] for t in order]
    for m, params in MERGES.items():
        merged = merge(vecs, method=m, weights=[1.0] * len(vecs), **params)
        combo = [(merged, 1.0)]
        methods[m] = {"params": params, "control": asdict(Stat.of(ev.controls_hit(f"merge-{m}", combo))),
                      "targets": targets_acc(f"merge-{m}", combo)}
    loss = curve[0]["control"]["mean"] - curve[-1]["control"]["mean"]
    for r in methods.values():
        r["recovered"] = (r["control"]["mean"] - curve[-1]["control"]["mean"]) / loss if loss > 0 else float("nan")
    return {"order": order, "curve": curve, "slope": float(slope), "r2": float(r2), "methods": methods}


def measure_adaptive(ev: Evaluator) -> dict:
    """(g) ROC AUC of adaptive selection (shared prefix, switch at T/2) over labelled toy prompts: ranked by
    similarity (the paper) and by calibrated relevance (each vector's usual movement measured on other, neutral
    prompts: probe seeds 20 000+, the evaluated ones 10 000+), at each α and with the two-strength probe (each
    vector's larger calibrated relevance of α 0.5 and 2), with bootstrap standard errors over prompts."""
    from ..research.adaptive import FULL, auc_table, calibrations, strengths
    from ..research.lab import Lab

    lab, k, pool = Lab.from_world(ev.root, steps=STEPS, guidance=GUIDANCE), STEPS // 2, list(ev.vectors)
    table = auc_table(lab, [k], list(ADAPTIVE_ALPHAS), pool=pool, n_prompts=ev.sizes.adaptive, seed=1, lookaheads=())
    cals = calibrations(lab, pool, t_switches=[k], alphas=list(ADAPTIVE_ALPHAS), n_prompts=ev.sizes.calibration,
                        seed=2)

    def stat(a: float | tuple[float, ...], calibrated: bool) -> dict:
        cal = [cals[(k, x, FULL)] for x in strengths(a)] if calibrated else None
        return {"mean": table.auc(k, a, calibration=cal), "se": table.auc_se(k, a, calibration=cal),
                "n": len(table.probes)}

    return {"t_switch": k, "steps": STEPS, "prompts": ev.sizes.adaptive, "calibration_prompts": ev.sizes.calibration,
            "auc": {str(a): stat(a, False) for a in ADAPTIVE_ALPHAS},
            "auc_calibrated": {str(a): stat(a, True) for a in ADAPTIVE_ALPHAS},
            "probe": {"alphas": list(ADAPTIVE_PROBE), **stat(ADAPTIVE_PROBE, True),
                      "per_vector": table.vector_aucs(k, ADAPTIVE_PROBE,
                                                      calibration=[cals[(k, x, FULL)] for x in ADAPTIVE_PROBE])},
            "scale": {str(a): dict(cals[(k, a, FULL)].scale) for a in ADAPTIVE_ALPHAS},
            "auc_per_vector": {str(a): table.vector_aucs(k, a) for a in ADAPTIVE_ALPHAS}}


def measure_gradual(ev: Evaluator) -> dict:
    """(h) Target accuracy vs λ for the pair's concepts (TAD Table 2)."""
    return {t: [asdict(Stat.of(ev.target(t, {t: lam})["hit"])) for lam in LAMBDAS_GRADUAL] for t in PAIR}


def foreground(img: Image.Image, threshold: float = 48.0) -> np.ndarray:
    """Pixels whose colour is far from the image's border colour (the scene's background), as a bool mask."""
    a = np.asarray(img.convert("RGB"), np.float32)
    border = np.concatenate([a[:2].reshape(-1, 3), a[-2:].reshape(-1, 3), a[:, :2].reshape(-1, 3),
                             a[:, -2:].reshape(-1, 3)])
    return np.linalg.norm(a - np.median(border, 0), axis=-1) > threshold


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def edge_f1(pred: np.ndarray, ref: np.ndarray, tolerance: int = 1) -> float:
    """F1 of edge pixels, a pixel counting as matched within ``tolerance`` px (the usual BSDS-style slack)."""
    import cv2

    k = np.ones((2 * tolerance + 1,) * 2, np.uint8)
    near_ref = cv2.dilate(ref.astype(np.uint8), k) > 0
    near_pred = cv2.dilate(pred.astype(np.uint8), k) > 0
    precision = (pred & near_ref).sum() / max(pred.sum(), 1)
    recall = (ref & near_pred).sum() / max(ref.sum(), 1)
    return float(2 * precision * recall / max(precision + recall, 1e-9))


def measure_controlnets(ev: Evaluator) -> dict:
    """(i) Condition re-extracted from generated images vs the input condition, with and without the ControlNet.
    Plain-style scenes: a whole-image pattern would blur what "foreground" means."""
    import cv2
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    rng = random.Random("eval-control")
    scenes = [world.sample_scene(rng, style="plain") for _ in range(ev.sizes.control)]
    prompts = [s.caption(world.PROMPT_TEMPLATES[3]) for s in scenes]
    seeds = [SEED + i for i in range(len(scenes))]
    plain = sample(ev.pipe, prompts, seeds, steps=STEPS, guidance=GUIDANCE, prompt_cache=ev.cache)
    side = plain[0].width
    masks = [np.asarray(world.shape_mask(s, side)) > 127 for s in scenes]
    out: dict[str, dict] = {}
    for kind, rel in ev.meta.get("controlnets", {}).items():
        folder = ev.root / rel
        if not folder.exists():
            log.warning("i. no ControlNet at %s; skipped", folder)
            continue
        net = ControlNetModel.from_pretrained(folder, torch_dtype=torch.float32)
        cn = StableDiffusionControlNetPipeline(**ev.pipe.components, controlnet=net, requires_safety_checker=False)
        cn.set_progress_bar_config(disable=True)
        conds = [world.condition(kind, s, side) for s in scenes]
        ims = sample(cn, prompts, seeds, steps=STEPS, guidance=GUIDANCE, prompt_cache=ev.cache, image=conds)
        out[kind] = {"measure": "silhouette IoU",
                     "with": asdict(Stat.of([iou(foreground(i), m) for i, m in zip(ims, masks)])),
                     "without": asdict(Stat.of([iou(foreground(i), m) for i, m in zip(plain, masks)]))}
        if kind == "canny":
            def f1(img: Image.Image, cond: Image.Image) -> float:
                pred = cv2.Canny(np.asarray(img.convert("L")), 50, 120) > 0
                return edge_f1(pred, np.asarray(cond.convert("L")) > 127)

            out["canny edges"] = {"measure": "edge F1 (1 px)",
                                  "with": asdict(Stat.of([f1(i, c) for i, c in zip(ims, conds)])),
                                  "without": asdict(Stat.of([f1(i, c) for i, c in zip(plain, conds)]))}
    return out


SECTIONS = {"clip": measure_clip, "follow": measure_follow, "targets": measure_targets, "controls": measure_controls,
            "pair": measure_pair, "multi": measure_multi, "adaptive": measure_adaptive, "gradual": measure_gradual,
            "controlnets": measure_controlnets}


def run(assets: str | Path, sizes: Sizes, sections: list[str] | None = None) -> dict:
    ev = Evaluator(Path(assets), sizes)
    res: dict = {"sizes": asdict(sizes), "steps": STEPS, "guidance": GUIDANCE, "seed": SEED,
                 "clip_text": "bare concept string" + (f" with prefix {ev.clip.prefix!r}" if ev.clip.prefix else "")}
    t0 = time.time()
    for name in sections or list(SECTIONS):
        log.info("%s ... (%.0fs)", name, time.time() - t0)
        res[name] = SECTIONS[name](ev)
    res["seconds"] = time.time() - t0
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", default=str(ASSETS))
    ap.add_argument("--quick", action="store_true", help="few images: a smoke test of the whole evaluation")
    ap.add_argument("--sections", nargs="*", choices=list(SECTIONS), help="only these measurements (no card)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--no-card", action="store_true", help="do not rewrite MODEL_CARD.md")
    args = ap.parse_args(argv)
    res = run(args.assets, QUICK if args.quick else Sizes(), args.sections)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    if not args.no_card and not args.sections:
        from .model_card import write_results

        write_results(Path(args.assets) / "MODEL_CARD.md", res, command="python -m tad_demo.toyworld.evaluate"
                      + (" --quick" if args.quick else ""))
    print(json.dumps({k: v for k, v in res.items() if k in ("seconds", "sizes")}, indent=2))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
