"""A quick look at candidate ablation checkpoints: the development loop of the toy world's design.

Run: ``python -m tad_demo.toyworld.probe --ablations DIR [--n 32] [--lambdas 1,-0.5,-1] [--concepts smiley,…]
[--guidance G]``. For every ``<concept>.safetensors`` in DIR (as ``train_ablations --out DIR`` writes them, against
the base in ``--assets``) it prints the target's CLIP score and accuracy at λ = 0 and each λ, the paired change of
the score (same prompts and seeds; ± its standard error), what the CLIP names the images zero-shot among the
world's words of the target's kind (the two commonest names), and how often the held-out control objects are
still recognised at λ = +1. It uses ``evaluate``'s prompts, seeds, sampler settings and metric, with fewer images
(minutes, not an hour): a probe for choosing a design, not the model card's numbers — those come from ``evaluate``.

``--directions`` prints, instead, how alike the targets' directions are in the base's conditioning: the cosine
between (target − anchor) hidden states of the frozen text encoder, for every pair of targets of a kind. A task
vector can only add what its direction holds: targets that share one direction share what enhancement adds.
``--clip DIR`` reads a CLIP's text tower instead of the base's (the same weights, once a base is trained on it):
the check to make before the base's half hour of training.

``--line 1.5,2`` samples the base alone, conditioned on the line from a target's anchor caption through its own:
h_anchor + t·(h_target − h_anchor) for each t (t = 1 is the prompt itself; a task vector at λ = −1 lands near
t = 2). It prints each t's score and accuracy and its paired change against t = 1: does the base know where
enhancement leads, before any ablation is trained (``world.beyond_the_word``)?
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPTokenizer

from ..core.patching import WeightPatcher
from ..core.task_vector import TaskVector
from ..runtime.metrics import ClipScorer
from ..runtime.pipelines import load_pipeline
from ..runtime.sampling import PromptCache, sample
from . import world
from .data import ASSETS
from .evaluate import GUIDANCE, SEED, STEPS, Stat, concept_prompts
from .text_encoder import text_encoder_from_clip

DIRECTION_PROMPTS = ("a {object}", "a red {object} in plain style", "{style}", "a red circle in {style} style")


def directions(tokenizer, text_encoder) -> None:
    """Pairwise cosine of the targets' (target − anchor) conditioning, per kind and prompt (see the docstring)."""

    def hidden(prompt: str) -> torch.Tensor:
        ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            return text_encoder(ids)[0][0].flatten()

    for template in DIRECTION_PROMPTS:
        kind = "object" if "{object}" in template else "style"
        targets = world.TARGETS_OF[kind]
        d = {t: hidden(template.format(**{kind: t})) - hidden(template.format(**{kind: a})) for t, a in targets.items()}
        pairs = [f"{a}·{b} {torch.cosine_similarity(d[a], d[b], dim=0).item():+.2f}"
                 for a, b in itertools.combinations(d, 2)]
        print(f"{template!r}: " + ", ".join(pairs))


def along_the_line(pipe, clip: ClipScorer, names: list[str], n: int, ts: list[float], guidance: float) -> None:
    """Per target: the base conditioned at points t of its anchor-to-target line (see the docstring)."""
    targets = {**world.OBJECT_TARGETS, **world.STYLE_TARGETS}
    cache = PromptCache(pipe)
    for name in names:
        kind = "object" if name in world.OBJECT_TARGETS else "style"
        prompts = concept_prompts(name, kind, n)
        anchors = [" ".join(targets[name] if w == name else w for w in p.split()) for p in prompts]
        h_target, h_anchor = cache(prompts), cache(anchors)
        at_word, cells = None, []
        for t in [1.0, *ts]:
            imgs = sample(pipe, prompts, [SEED + i for i in range(n)], steps=STEPS, guidance=guidance,
                          prompt_cache=cache, prompt_embeds=h_anchor + t * (h_target - h_anchor))
            s = clip.scores(clip.image_features(imgs), [clip.caption(name), clip.caption(targets[name])]).numpy()
            cell = f"t={t:g} score {s[:, 0].mean():.3f} acc {(s[:, 0] > s[:, 1]).mean():.2f}"
            if at_word is None:
                at_word = s[:, 0]
            else:
                d = Stat.of(s[:, 0] - at_word)
                cell += f" (Δ {d.mean:+.3f} ± {d.se:.3f})"
            cells.append(cell)
        print(f"{name} → {targets[name]}: " + " | ".join(cells), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", default=str(ASSETS), help="the world whose base and CLIP are used")
    ap.add_argument("--ablations", help="folder of <concept>.safetensors made against that base (not needed "
                                        "with --directions)")
    ap.add_argument("--n", type=int, default=32, help="images per (concept, λ); half as many per control object")
    ap.add_argument("--lambdas", default="1,-0.5,-1")
    ap.add_argument("--concepts", default="", help="comma-separated; default: every checkpoint in the folder")
    ap.add_argument("--guidance", type=float, default=GUIDANCE, help=f"guidance scale (evaluate's: {GUIDANCE:g})")
    ap.add_argument("--directions", action="store_true", help="print the targets' direction cosines and stop")
    ap.add_argument("--clip", default="", help="with --directions: a CLIP folder whose text tower to read (a new "
                                               "CLIP, before any base is trained on it); default: the base's")
    ap.add_argument("--line", default="", help="comma-separated t: sample the base along each target's "
                                               "anchor-to-target line instead (no --ablations needed)")
    args = ap.parse_args(argv)
    if not args.directions and not args.line and not args.ablations:
        ap.error("the following arguments are required: --ablations (or --directions, --line)")
    root, n = Path(args.assets), args.n
    lambdas = [float(x) for x in args.lambdas.split(",")]
    if args.directions and args.clip:
        tokenizer = CLIPTokenizer.from_pretrained(args.clip)
        directions(tokenizer, text_encoder_from_clip(args.clip, tokenizer))
        return
    pipe = load_pipeline(root / "base")
    pipe.set_progress_bar_config(disable=True)
    if args.directions:
        directions(pipe.tokenizer, pipe.text_encoder)
        return
    clip, cache, patcher = ClipScorer.load(root / "clip"), PromptCache(pipe), WeightPatcher(pipe)
    targets = {**world.OBJECT_TARGETS, **world.STYLE_TARGETS}
    if args.line:
        names = [c for c in args.concepts.split(",") if c] or list(targets)
        along_the_line(pipe, clip, names, n, [float(x) for x in args.line.split(",")], args.guidance)
        return
    names = [c for c in args.concepts.split(",") if c] or \
        [p.stem for p in sorted(Path(args.ablations).glob("*.safetensors")) if p.stem in targets]

    def images(prompts: list[str], combo: list) -> list:
        with patcher.patched(combo):
            return sample(pipe, prompts, [SEED + i for i in range(len(prompts))], steps=STEPS,
                          guidance=args.guidance, prompt_cache=cache)

    def controls_recognised(combo: list) -> np.ndarray:
        hits = []
        for c in world.CONTROL_OBJECTS:
            pred = clip.classify(clip.image_features(images(concept_prompts(c, "object", n // 2), combo)),
                                 list(world.OBJECTS))
            hits += [p == c for p in pred]
        return np.array(hits, float)

    def target(name: str, prompts: list[str], combo: list) -> tuple[np.ndarray, np.ndarray, str]:
        """Per image: the target's score, and whether it beats the anchor's; and the two commonest zero-shot
        names of the images among the world's words of the target's kind."""
        feats = clip.image_features(images(prompts, combo))
        s = clip.scores(feats, [clip.caption(name), clip.caption(targets[name])]).numpy()
        words = world.OBJECTS if name in world.OBJECT_TARGETS else world.STYLES
        named = ", ".join(f"{w} {c}" for w, c in Counter(clip.classify(feats, list(words))).most_common(2))
        return s[:, 0], (s[:, 0] > s[:, 1]).astype(float), named

    ctrl_base = controls_recognised([])
    print(f"{n} images per (target, λ), {n // 2} per control object; mean ± standard error")
    for name in names:
        kind = "object" if name in world.OBJECT_TARGETS else "style"
        tv = TaskVector.from_pair(root / "base", Path(args.ablations) / f"{name}.safetensors")
        prompts = concept_prompts(name, kind, n)

        s0, hit0, named0 = target(name, prompts, [])
        cells = [f"λ=0 score {s0.mean():.3f} acc {hit0.mean():.2f} named {named0}"]
        for lam in lambdas:
            s, hit, named = target(name, prompts, [(tv, lam)])
            d = Stat.of(s - s0)
            cells.append(f"λ={lam:+g} score {s.mean():.3f} (Δ {d.mean:+.3f} ± {d.se:.3f}) acc {hit.mean():.2f} "
                         f"named {named}")
        ctrl = controls_recognised([(tv, 1.0)])
        cells.append(f"controls {ctrl_base.mean():.2f} → {ctrl.mean():.2f} at λ=+1")
        print(f"{name} → {targets[name]}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
