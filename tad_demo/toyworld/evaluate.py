"""Measure the toy world's models and write the results into ``assets/toyworld/MODEL_CARD.md``.

Run: ``python -m tad_demo.toyworld.evaluate`` (about half an hour on 2 cores) or ``--quick`` (minutes; few
images, used by the tests). Every image comes from fixed seeds, so the numbers are reproducible.

What is measured (issue bars in brackets):
  a. toy CLIP zero-shot accuracy on held-out renders                              [object, style ≥ 0.95]
  b. base: CLIP accuracy target-vs-anchor per target concept                      [≥ 0.85]
     base: prompt following (object, style, colour classified right)              [≥ 0.8]
  c. ablated (λ = +1): target accuracy [≤ 0.15]; other concepts' accuracy change  [≤ 0.10]
  d. enhanced (λ = −1, −2): target CLIP score above the base's
  e. one object + one style ablation added: both targets [≤ 0.2]; others' change  [≤ 0.15]
  f. random vector with τ's per-tensor norms: target accuracy change              [≤ 0.10]
  g. gradual ablation λ ∈ {0, .1, .3, .5, .7, .9, 1}: accuracy non-increasing     [within 0.05]
  h. ControlNets: condition re-extracted from generated images vs the input condition, vs no control
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.diagnostics import random_like
from ..core.patching import WeightPatcher
from ..core.task_vector import TaskVector
from ..core.world import World
from ..runtime.metrics import ClipScorer
from ..runtime.sampling import PromptCache, sample
from . import world
from .data import ASSETS

log = logging.getLogger("evaluate")

SEED = 42                # Kumari's evaluation seed
STEPS, GUIDANCE = 20, 5.0  # the app's defaults (Kumari: DDIM 50 steps, guidance 6 on SD)
LAMBDAS_GRADUAL = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
TARGETS = {**{k: ("object", v) for k, v in world.OBJECT_TARGETS.items()},
           **{k: ("style", v) for k, v in world.STYLE_TARGETS.items()}}


@dataclass
class Sizes:
    zero_shot: int = 600     # held-out renders for (a)
    per_target: int = 100    # images per target concept and model (b, c, d, f, g)
    follow: int = 200        # random prompts for prompt following (b)
    probe: int = 16          # images per other concept to measure collateral damage (c, e)
    control: int = 48        # images per ControlNet condition (h)


QUICK = Sizes(zero_shot=60, per_target=12, follow=24, probe=4, control=6)


def concept_prompts(concept: str, kind: str, n: int, seed: int) -> list[str]:
    """``n`` prompts naming ``concept`` in its slot, other attributes and templates random (seeded)."""
    rng = random.Random(f"{seed}-{concept}")
    templates = [t for t in world.PROMPT_TEMPLATES if "{" + kind + "}" in t]
    return [world.sample_scene(rng, **{kind: concept}).caption(rng.choice(templates)) for _ in range(n)]


@dataclass
class Evaluator:
    pipe: object
    clip: ClipScorer
    sizes: Sizes
    patcher: WeightPatcher = field(init=False)
    cache: PromptCache = field(init=False)

    def __post_init__(self):
        self.patcher = WeightPatcher(self.pipe)
        self.cache = PromptCache(self.pipe)  # k/v edits do not touch the text encoder

    def images(self, prompts: list[str], combo: list[tuple[TaskVector, float]]) -> torch.Tensor:
        """CLIP image features of images generated under a weight combination (seeds SEED, SEED+1, ...)."""
        seeds = [SEED + i for i in range(len(prompts))]
        with self.patcher.patched(combo):
            imgs = sample(self.pipe, prompts, seeds, steps=STEPS, guidance=GUIDANCE, prompt_cache=self.cache)
        return self.clip.image_features(imgs)

    def target_metrics(self, target: str, combo) -> dict[str, float]:
        kind, anchor = TARGETS[target]
        feats = self.images(concept_prompts(target, kind, self.sizes.per_target, SEED), combo)
        return {"accuracy": self.clip.clip_accuracy(feats, target, anchor, kind),
                "score": self.clip.clip_score(feats, target, kind)}

    def probe(self, combo, skip: set[str] = frozenset()) -> dict[str, float]:
        """Per non-skipped concept: share of its images classified as it (zero-shot among its kind)."""
        out = {}
        for kind, labels in (("object", world.OBJECTS), ("style", world.STYLES)):
            for concept in labels:
                if concept in skip:
                    continue
                feats = self.images(concept_prompts(concept, kind, self.sizes.probe, SEED + 1), combo)
                out[concept] = float(np.mean([p == concept for p in self.clip.classify(feats, list(labels), kind)]))
        return out


def zero_shot(clip: ClipScorer, n: int) -> dict[str, float]:
    from .data import render_dataset

    scenes, ims = render_dataset(n, seed=777, cache=False)  # seed 777: never used in training
    feats = clip.image_features([Image.fromarray(i) for i in ims])
    obj = clip.classify(feats, list(world.OBJECTS), "object")
    sty = clip.classify(feats, list(world.STYLES), "style")
    return {"object": float(np.mean([p == s.object for p, s in zip(obj, scenes)])),
            "style": float(np.mean([p == s.style for p, s in zip(sty, scenes)]))}


def prompt_following(ev: Evaluator, n: int) -> dict[str, float]:
    rng = random.Random(SEED)
    scenes = [world.sample_scene(rng) for _ in range(n)]
    prompts = [s.caption(world.PROMPT_TEMPLATES[3]) for s in scenes]  # all attributes named
    feats = ev.images(prompts, [])
    obj = ev.clip.classify(feats, list(world.OBJECTS), "object")
    sty = ev.clip.classify(feats, list(world.STYLES), "style")
    # Colour: among "A photo depicts <colour> <true object>" captions.
    col = []
    for f, s in zip(feats, scenes):
        caps = [f"A photo depicts {c} {s.object}" for c in world.COLORS]
        col.append(list(world.COLORS)[int((f @ ev.clip.text_features(caps).T).argmax())])
    ok = np.array([[o == s.object, t == s.style, c == s.color] for o, t, c, s in zip(obj, sty, col, scenes)])
    return {"object": float(ok[:, 0].mean()), "style": float(ok[:, 1].mean()), "colour": float(ok[:, 2].mean()),
            "all three": float(ok.all(1).mean())}


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


def control_agreement(ev: Evaluator, root: Path, n: int) -> dict[str, dict]:
    """(h) For each shipped ControlNet: how well generated images follow the condition, vs the same prompts and
    seeds without it. Measures: silhouette IoU (foreground of the image vs the scene's shape) for every kind, and
    for canny also the edge F1 of ``cv2.Canny`` on the generated image vs the input edge map (1 px tolerance)."""
    import cv2
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    rng = random.Random(SEED + 7)
    scenes = [world.sample_scene(rng) for _ in range(n)]
    prompts = [s.caption(world.PROMPT_TEMPLATES[3]) for s in scenes]
    seeds = [SEED + i for i in range(n)]
    masks = [np.asarray(world._shape_mask(s, 64)) > 127 for s in scenes]
    plain = sample(ev.pipe, prompts, seeds, steps=STEPS, guidance=GUIDANCE, prompt_cache=ev.cache)
    out: dict[str, dict] = {}
    for kind in ("canny", "depth", "scribble"):
        folder = root / "controlnet" / kind
        if not folder.exists():
            log.warning("h. no ControlNet at %s; skipped", folder)
            continue
        net = ControlNetModel.from_pretrained(folder, torch_dtype=torch.float32)
        cn = StableDiffusionControlNetPipeline(**ev.pipe.components, controlnet=net, requires_safety_checker=False)
        cn.set_progress_bar_config(disable=True)
        conds = [world.condition(kind, s) for s in scenes]
        ims = sample(cn, prompts, seeds, steps=STEPS, guidance=GUIDANCE, prompt_cache=ev.cache, image=conds)
        res = {"measure": "silhouette IoU",
               "with": float(np.mean([iou(foreground(i), m) for i, m in zip(ims, masks)])),
               "without": float(np.mean([iou(foreground(i), m) for i, m in zip(plain, masks)]))}
        out[kind] = res
        if kind == "canny":
            def f1(img: Image.Image, cond: Image.Image) -> float:
                pred = cv2.Canny(np.asarray(img.convert("L")), 50, 120) > 0
                return edge_f1(pred, np.asarray(cond.convert("L")) > 127)

            out["canny edges"] = {"measure": "edge F1 (1 px)",
                                  "with": float(np.mean([f1(i, c) for i, c in zip(ims, conds)])),
                                  "without": float(np.mean([f1(i, c) for i, c in zip(plain, conds)]))}
        log.info("h. %s: %s", kind, res)
    return out


def max_change(probe: dict[str, float], base_probe: dict[str, float]) -> tuple[float, str]:
    diffs = {k: abs(probe[k] - base_probe[k]) for k in probe}
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst


def run(args: argparse.Namespace) -> dict:
    from diffusers import StableDiffusionPipeline

    sizes = QUICK if args.quick else Sizes()
    root = Path(args.assets)
    meta = World.load(root)
    pipe = StableDiffusionPipeline.from_pretrained(root / "base")
    pipe.set_progress_bar_config(disable=True)
    clip = ClipScorer.load(root / "clip")
    ev = Evaluator(pipe, clip, sizes)
    vectors = {c.name: TaskVector.from_pair(root / "base", c.source) for c in meta.concepts}
    targets = [t for t in TARGETS if t in vectors and (not args.concepts or t in args.concepts)]
    res: dict = {"sizes": sizes.__dict__, "steps": STEPS, "guidance": GUIDANCE}
    t0 = time.time()

    log.info("a. zero-shot CLIP")
    res["zero_shot"] = zero_shot(clip, sizes.zero_shot)
    log.info("b. base model")
    res["base"] = {t: ev.target_metrics(t, []) for t in targets}
    res["follow"] = prompt_following(ev, sizes.follow)
    base_probe = ev.probe([])
    res["base_probe"] = base_probe
    log.info("c/d/f. per-concept ablation, enhancement, random baseline (%.0fs)", time.time() - t0)
    for t in targets:
        tv = vectors[t]
        r = {"ablate": ev.target_metrics(t, [(tv, 1.0)])}
        probe = ev.probe([(tv, 1.0)], skip={t})
        r["other_change"], r["worst_other"] = max_change(probe, base_probe)
        anchor = TARGETS[t][1]
        r["anchor_change"] = abs(probe[anchor] - base_probe[anchor])
        r["enhance_-1"] = ev.target_metrics(t, [(tv, -1.0)])
        r["enhance_-2"] = ev.target_metrics(t, [(tv, -2.0)])
        r["random"] = ev.target_metrics(t, [(random_like(tv, seed=0), 1.0)])
        res[t] = r
        log.info("%s done (%.0fs): %s", t, time.time() - t0, {k: r[k] for k in ("ablate", "other_change")})
    log.info("e. addition of one object and one style ablation")
    obj_t = next(t for t in targets if TARGETS[t][0] == "object")
    sty_t = next(t for t in targets if TARGETS[t][0] == "style")
    combo = [(vectors[obj_t], 1.0), (vectors[sty_t], 1.0)]
    probe = ev.probe(combo, skip={obj_t, sty_t})
    change, worst = max_change(probe, base_probe)
    res["addition"] = {"pair": [obj_t, sty_t], obj_t: ev.target_metrics(obj_t, combo),
                       sty_t: ev.target_metrics(sty_t, combo), "other_change": change, "worst_other": worst}
    log.info("g. gradual ablation")
    res["gradual"] = {t: [ev.target_metrics(t, [(vectors[t], lam)])["accuracy"] for lam in LAMBDAS_GRADUAL]
                      for t in (targets if args.gradual_all else [obj_t, sty_t])}
    log.info("h. ControlNets")
    control = control_agreement(ev, root, sizes.control)
    if control:
        res["control"] = control
    res["seconds"] = time.time() - t0
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", default=str(ASSETS))
    ap.add_argument("--quick", action="store_true", help="few images: a smoke test of the whole evaluation")
    ap.add_argument("--concepts", nargs="*", help="only these target concepts")
    ap.add_argument("--gradual-all", action="store_true", help="gradual ablation for every target (slow)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--no-card", action="store_true", help="do not rewrite MODEL_CARD.md")
    args = ap.parse_args(argv)
    res = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    if not args.no_card:
        from .model_card import write_results

        write_results(Path(args.assets) / "MODEL_CARD.md", res, command="python -m tad_demo.toyworld.evaluate"
                      + (" --quick" if args.quick else ""))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
