"""Make one concept-ablation checkpoint per target concept of the toy world (Kumari et al.'s objective).

Read top to bottom. Run: ``python -m tad_demo.toyworld.train_ablations [--concepts smiley,striped] [--smoke]``.
Needs ``assets/toyworld/base``. Writes ``assets/toyworld/ablations/<concept>.safetensors``: the fine-tuned
weights of the UNet's cross-attention k/v (bare diffusers parameter names), the format of Kumari's released
files in diffusers naming, which ``TaskVector.from_pair(base, file)`` consumes.

Anchor images are renders of the anchor concept (a smiley's anchor is a circle), encoded by the base VAE.
Kumari et al. sample them from the base model instead; on the toy world the renderer *is* the distribution
the base model learned, and rendering is ~100× cheaper than sampling on a CPU.

The control concepts (``world.CONTROL_OBJECTS``) appear in no prompt of any ablation, neither in the anchor
prompts nor in the preservation set: they measure collateral damage, so no objective may see them.
A concept whose checkpoint exists and was trained against this base (its metadata records the base UNet's
SHA-256) is skipped: the stage resumes; ``--force`` retrains it.
"""

from __future__ import annotations

import argparse
import logging
import random
from dataclasses import replace
from pathlib import Path

from diffusers import DDPMScheduler, StableDiffusionPipeline

from ..core.world import World
from ..runtime.ablation import AblationBatch, ablate, prompt_encoder, save_weights
from . import world
from .data import ASSETS, base_dataset, base_fingerprint, random_caption
from .train_base import SD_BETAS, encode_latents

log = logging.getLogger("train_ablations")

# --- config ---------------------------------------------------------------------------------------------
STEPS = 300           # the feasibility probe ablated square→circle visibly in 300 steps
BATCH = 16            # anchor samples per step; another 16 for preservation
LR = 2e-3             # only k/v matrices train; Adam at 2e-3 moves them within 300 steps without blow-up
KEEP_WEIGHT = 1.0     # preservation of other concepts: equal weight kept non-target accuracy within 0.1
N_ANCHOR = 2000       # anchor renders per concept
SEED = 0


def concept_kind(concept: str) -> tuple[str, str]:
    if concept in world.OBJECT_TARGETS:
        return "object", world.OBJECT_TARGETS[concept]
    if concept in world.STYLE_TARGETS:
        return "style", world.STYLE_TARGETS[concept]
    raise ValueError(f"{concept!r} is not a target concept; targets: "
                     f"{', '.join([*world.OBJECT_TARGETS, *world.STYLE_TARGETS])}")


def _trained_against(path: Path) -> str | None:
    """The base fingerprint an existing checkpoint records (None if there is none)."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("base_unet_sha256")


def without_controls(scenes: list[world.Scene]) -> list[int]:
    """Indices of the scenes that show no control concept: those are held out of every ablation objective."""
    return [i for i, s in enumerate(scenes) if s.object not in world.CONTROL_OBJECTS]


def keep_indices(keep_scenes: list[world.Scene], kind: str, concept: str) -> list[int]:
    """The preservation set of an ablation: everything but the target itself (the anchor included, as Kumari
    et al. regularise with it) and the held-out control concepts."""
    return [i for i in without_controls(keep_scenes) if getattr(keep_scenes[i], kind) != concept]


def batch_maker(scenes, latents, kind, concept, keep_scenes, keep_latents, keep_idx, batch, rng):
    """A ``next_batch(step)`` for ``ablate``: anchor renders captioned twice — with the anchor word and with
    the target word in its place — plus a preservation batch of other scenes with their own captions."""

    def next_batch(step: int) -> AblationBatch:
        idx = [rng.randrange(len(scenes)) for _ in range(batch)]
        templates = [rng.choice(world.PROMPT_TEMPLATES) for _ in idx]
        anchor_prompts = [scenes[i].caption(t) for i, t in zip(idx, templates)]
        target_prompts = [replace(scenes[i], **{kind: concept}).caption(t) for i, t in zip(idx, templates)]
        kidx = [keep_idx[rng.randrange(len(keep_idx))] for _ in range(batch)]
        return AblationBatch(latents=latents[idx], target_prompts=target_prompts, anchor_prompts=anchor_prompts,
                             keep_latents=keep_latents[kidx],
                             keep_prompts=[random_caption(keep_scenes[i], rng) for i in kidx])

    return next_batch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", default=",".join([*world.OBJECT_TARGETS, *world.STYLE_TARGETS]))
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument("--keep-weight", type=float, default=KEEP_WEIGHT, help="weight of the preservation term")
    ap.add_argument("--params", default="kv", choices=["kv", "crossattn"],
                    help="what is fine-tuned: cross-attention k/v (Kumari's default) or all of cross-attention")
    ap.add_argument("--base", default=str(ASSETS / "base"))
    ap.add_argument("--out", default=str(ASSETS / "ablations"))
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--force", action="store_true", help="retrain concepts whose checkpoint exists")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args(argv)
    steps, n_anchor, batch = (2, 16, 4) if args.smoke else (args.steps, N_ANCHOR, BATCH)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. the frozen base
    pipe = StableDiffusionPipeline.from_pretrained(args.base).to(args.device)
    pipe.text_encoder.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    noise_sched = DDPMScheduler(**SD_BETAS)

    encode_prompts = prompt_encoder(pipe)

    # Preservation data: scenes of the base's distribution with their own captions (shared by all concepts;
    # encoded once), never a control concept.
    keep_scenes, keep_images = base_dataset(n_anchor, seed=SEED + 100, cache=not args.smoke)
    keep_latents = encode_latents(pipe.vae, keep_images)
    fingerprint = base_fingerprint(args.base)

    for concept in args.concepts.split(","):
        kind, anchor = concept_kind(concept)
        dst = out / f"{concept}.safetensors"
        if not args.force and not args.smoke and _trained_against(dst) == fingerprint:
            log.info("%s exists for this base; skipped (--force retrains it)", dst)
            continue
        # 2. anchor renders and prompt pairs: the same caption with the target word in place of the anchor's;
        #    scenes showing a control object are left out
        scenes, images = base_dataset(n_anchor, seed=SEED + 1, cache=not args.smoke, **{kind: anchor})
        anchor_idx = without_controls(scenes)
        scenes, latents = [scenes[i] for i in anchor_idx], encode_latents(pipe.vae, images[anchor_idx])
        keep_idx = keep_indices(keep_scenes, kind, concept)
        next_batch = batch_maker(scenes, latents, kind, concept, keep_scenes, keep_latents, keep_idx, batch,
                                 random.Random(SEED))

        # 3. fine-tune k/v with Kumari's objective and save the touched tensors' fine-tuned weights
        log.info("ablating %s (%s) -> %s", concept, kind, anchor)
        weights = ablate(pipe.unet, encode_prompts, noise_sched, next_batch, steps=steps, lr=args.lr,
                         mode=args.params, keep_weight=args.keep_weight, seed=SEED)
        meta = {"concept": concept, "anchor": anchor, "kind": kind, "objective": "kumari-model-based",
                "params": {"kv": "cross_attn_kv", "crossattn": "cross_attn"}[args.params],
                "steps": str(steps), "lr": str(args.lr),
                "keep_weight": str(args.keep_weight),
                "held_out": ",".join(world.CONTROL_OBJECTS), "base_unet_sha256": fingerprint}
        save_weights(weights, dst, meta)
        log.info("saved %s (%d tensors)", dst, len(weights))

    # 4. the world's manifest points at the checkpoints that exist (earlier runs' included); a smoke run
    #    into the shipped folder must not rewrite the shipped manifest
    if not args.smoke or out.resolve() != (ASSETS / "ablations").resolve():
        manifest = World.from_dict(world.manifest(out.name), out.parent)
        manifest.with_concepts(manifest.available_concepts()).save()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
