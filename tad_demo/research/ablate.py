"""Make your own concept-ablation checkpoint (Kumari et al., arXiv:2303.13516, model-based): ``python -m tad_demo
ablate --base DIR --concept heart --anchor circle --out heart.safetensors``.

Recipe (:func:`make_checkpoint`):
1. check the inputs (before loading anything);
2. load the base pipeline in fp32 on the device (CUDA when available, else CPU);
3. prompt pairs: anchor prompts name the anchor (toy world: its captions with the anchor in the object/style slot;
   else templates, or ``--prompts FILE``); each target prompt is the same text with the concept in the anchor's
   place (styles, as Kumari: ", in the style of <concept>");
4. anchor images: the base model samples them from the anchor prompts (kept as latents: no decode/encode);
5. fine-tune the UNet's cross-attention k/v (default) with ``tad_demo.runtime.ablation.ablate``:
   ‖ε_θ(x_t, c_target, t) − sg(ε_base(x_t, c_anchor, t))‖² on anchor latents, plus the preservation term on
   (anchor latent, anchor prompt) pairs (Kumari's regularisation: the anchor itself must not move);
6. save the fine-tuned weights of the trained tensors (bare diffusers UNet names, fp32) with metadata — the
   format of the toy world's ablations, which ``TaskVector.from_pair(base, file)`` and the app consume.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any

from ..core.errors import WorldError
from ..core.limits import HARD
from ..core.world import World
from .lab import KINDS, LabError

log = logging.getLogger(__name__)

# Anchor prompt templates for real models (Kumari et al. ask ChatGPT for 200 captions that contain the anchor word;
# offline we use fixed templates, or the user's --prompts file).
OBJECT_TEMPLATES = (
    "a photo of a {}", "a {} in the park", "a {} on the beach", "a close-up photo of a {}", "a {} sitting on the grass",
    "a {} in a living room", "a picture of a {} in the snow", "a cute {}", "a {} next to a tree",
    "a black and white photo of a {}",
)
STYLE_SUBJECTS = (
    "a mountain landscape", "a city street", "a bowl of fruit", "a woman reading", "a harbor with boats",
    "a field of flowers", "a house by a lake", "a forest path", "a portrait of an old man", "a river at sunset",
)
# The same templates as Lab prompt templates ({object}/{style} slots): `eval` on a real model draws from them.
PROMPT_TEMPLATES = {"object": tuple(t.format("{object}") for t in OBJECT_TEMPLATES),
                    "style": tuple(f"{s}, in the style of {{style}}" for s in STYLE_SUBJECTS)}
PARAMS = ("kv", "crossattn", "full")  # runtime.ablation.PARAM_MODES (not imported: it pulls in torch)


class AblateError(LabError):
    """Inputs that cannot make a checkpoint; the one-line message names the flag and the value."""


# --- prompts ---------------------------------------------------------------------------------------------

def world_of(base: str | Path) -> World | None:
    """The world whose ``base/`` folder ``base`` is (a world.json beside it), else None."""
    p = Path(base)
    if not (p.is_dir() and (p.parent / "world.json").is_file()):
        return None
    try:
        return World.load(p.parent)
    except WorldError as e:
        raise AblateError(f"--base {base!r}: {e}") from None


def target_prompt(anchor_prompt: str, concept: str, anchor: str, kind: str, i: int = 0) -> str:
    """Kumari's target prompt: objects replace the anchor word; styles add the concept's style to the prompt."""
    if kind == "object":
        return anchor_prompt.replace(anchor, concept)
    return f"{anchor_prompt}, in the style of {concept}" if i % 2 == 0 else f"in {concept}'s style, {anchor_prompt}"


def prompt_pairs(concept: str, anchor: str, kind: str, n: int, seed: int = 0, world: World | None = None,
                 prompts: list[str] | None = None) -> tuple[list[str], list[str]]:
    """``n`` (anchor prompt, target prompt) pairs (seeded); in a world, its captions with the anchor (resp. the
    concept) in the object/style slot."""
    if world is not None:
        rng = random.Random(seed)
        words = [world.sample_words(rng, **{kind: anchor}) for _ in range(n)]
        templates = [rng.choice(world.prompt_templates) for _ in range(n)]
        return ([t.format(**w) for w, t in zip(words, templates)],
                [t.format(**{**w, kind: concept}) for w, t in zip(words, templates)])
    if prompts is None:
        prompts = ([t.format(anchor) for t in OBJECT_TEMPLATES] if kind == "object"
                   else [f"a {anchor} of {s}" for s in STYLE_SUBJECTS])
    anchors = [prompts[i % len(prompts)] for i in range(n)]
    return anchors, [target_prompt(p, concept, anchor, kind, i) for i, p in enumerate(anchors)]


# --- the command -----------------------------------------------------------------------------------------

def check_inputs(base: str, concept: str, anchor: str, out: str, *, kind: str | None, steps: int, lr: float,
                 params: str, n_anchor: int, batch: int, force: bool, prompts_file: str | None,
                 keep_weight: float = 1.0, guidance: float | None = None, gen_steps: int | None = None,
                 keep_prompts_file: str | None = None, n_keep: int | None = None) -> str:
    """Step 1: raise AblateError on the first bad input; returns the kind (object/style)."""
    if not isinstance(concept, str) or not concept.strip():
        raise AblateError("--concept is empty; name the concept to ablate (e.g. 'snoopy')")
    if not isinstance(anchor, str) or not anchor.strip():
        raise AblateError("--anchor is empty; name the concept it should become (e.g. 'dog')")
    if concept.strip() == anchor.strip():
        raise AblateError(f"--concept and --anchor are both {concept!r}; ablating a concept into itself does nothing")
    looks_local = Path(base).suffix in (".safetensors", ".ckpt") or base.startswith((".", "/", "~")) \
        or base.count("/") != 1
    if looks_local and not Path(base).expanduser().exists():
        raise AblateError(f"--base {base!r} not found; give a diffusers folder, a .safetensors/.ckpt file or a Hub id")
    if not out.endswith(".safetensors"):
        raise AblateError(f"--out {out!r} must end in .safetensors")
    if Path(out).exists() and not force:
        raise AblateError(f"--out {out!r} exists; pass --force to overwrite it")
    if kind is not None and kind not in KINDS:
        raise AblateError(f"--kind {kind!r} is not one of {', '.join(KINDS)}")
    if params not in PARAMS:
        raise AblateError(f"--params {params!r} is not one of {', '.join(PARAMS)}")
    for flag, v, lo in (("--steps", steps, 1), ("--n-anchor", n_anchor, 1), ("--batch", batch, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise AblateError(f"{flag} {v!r} is not an integer ≥ {lo}")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or not 0 < lr <= 1:
        raise AblateError(f"--lr {lr!r} is not a number in (0, 1]")
    if not isinstance(keep_weight, (int, float)) or not math.isfinite(keep_weight) or keep_weight < 0:
        raise AblateError(f"--keep-weight {keep_weight!r} is not a number ≥ 0")
    if guidance is not None and (not isinstance(guidance, (int, float)) or not 0 <= guidance <= HARD.guidance):
        raise AblateError(f"--guidance {guidance!r} is not a number in [0, {HARD.guidance:g}]")
    if gen_steps is not None and (isinstance(gen_steps, bool) or not isinstance(gen_steps, int) or gen_steps < 1):
        raise AblateError(f"--gen-steps {gen_steps!r} is not an integer ≥ 1")
    world = world_of(base)
    if world is not None:
        kind = kind or world.kind_of(concept)
        for flag, w in (("--concept", concept), ("--anchor", anchor)):
            if w not in world.words(kind):
                raise AblateError(f"{flag} {w!r} is not a toy-world {kind} ({world.root}/world.json); "
                                  f"{kind}s: {', '.join(world.words(kind))}")
        if prompts_file:
            raise AblateError("--prompts is for real models; the toy world's prompts are its own captions")
    if prompts_file is not None and not Path(prompts_file).is_file():
        raise AblateError(f"--prompts {prompts_file!r} not found")
    if keep_prompts_file is not None:
        if not Path(keep_prompts_file).is_file():
            raise AblateError(f"--keep-prompts {keep_prompts_file!r} not found")
        if keep_weight <= 0:
            raise AblateError("--keep-prompts needs --keep-weight > 0 (the preservation term is off at 0)")
    if n_keep is not None and (isinstance(n_keep, bool) or not isinstance(n_keep, int) or n_keep < 1):
        raise AblateError(f"--n-keep {n_keep!r} is not an integer ≥ 1")
    return kind or "object"


def read_prompts(path: str, anchor: str | None, kind: str, flag: str = "--prompts") -> list[str]:
    """Non-empty lines of a prompts file; for object anchor prompts (``anchor`` given) each must name the anchor."""
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise AblateError(f"{flag} {path!r} has no prompts (one per line)")
    if kind == "object" and anchor is not None:
        bad = next((ln for ln in lines if anchor not in ln), None)
        if bad is not None:
            raise AblateError(f"--prompts {path!r}: {bad!r} does not contain the anchor {anchor!r} (the target prompt "
                              "replaces it)")
    return lines


def read_keep_prompts(path: str, concept: str, kind: str) -> list[str]:
    """The --keep-prompts file's prompts; none may name the concept (keeping its own prediction would fight the
    ablation)."""
    lines = read_prompts(path, None, kind, "--keep-prompts")
    bad = next((ln for ln in lines if concept.strip() in ln.split()), None)
    if bad is not None:
        raise AblateError(f"--keep-prompts {path!r}: {bad!r} names the concept {concept!r}")
    return lines


def make_checkpoint(base: str, concept: str, anchor: str, out: str, *, kind: str | None = None, steps: int = 200,
                    lr: float | None = None, params: str = "kv", n_anchor: int | None = None, batch: int = 4,
                    keep_weight: float = 1.0, gen_steps: int | None = None, guidance: float | None = None,
                    seed: int = 0, device: str | None = None, prompts_file: str | None = None,
                    keep_prompts_file: str | None = None, n_keep: int | None = None,
                    force: bool = False) -> dict[str, Any]:
    """Fine-tune ``base`` to ablate ``concept`` into ``anchor`` and save the touched tensors' weights to ``out``
    (see the module docstring for the recipe). Defaults: the toy world lr 2e-3, 32 anchor images; other bases
    Kumari's lr (2e-6 × batch 4 = 8e-6) and 200 anchor images. ``keep_prompts_file``: more prompts whose
    predictions the preservation term keeps at the base's (``n_keep`` images, default as many as anchor images),
    beyond Kumari's anchor prompts: less collateral damage on those concepts. Returns what was done, with timings."""
    base, out = str(base), str(out)
    world = world_of(base)  # a world (the toy world): its captions, its sampling defaults
    lr = (2e-3 if world else 8e-6) if lr is None else lr
    n_anchor = (32 if world else 200) if n_anchor is None else n_anchor
    # 1. inputs
    kind = check_inputs(base, concept, anchor, out, kind=kind, steps=steps, lr=lr, params=params,
                        n_anchor=n_anchor, batch=batch, force=force, prompts_file=prompts_file,
                        keep_weight=keep_weight, guidance=guidance, gen_steps=gen_steps,
                        keep_prompts_file=keep_prompts_file, n_keep=n_keep)
    extra_keep = read_keep_prompts(keep_prompts_file, concept, kind) if keep_prompts_file else []
    t0 = time.perf_counter()
    # 2. the frozen base, fp32 (training math in fp32 even on a GPU)
    pipe, dev = _frozen_base(base, device)
    defaults = {"steps": world.steps, "guidance": world.guidance} if world is not None else \
        {"steps": 50, "guidance": 6.0}  # Kumari's sampling of anchor images on SD
    gen_steps = gen_steps or defaults["steps"]
    guidance = defaults["guidance"] if guidance is None else guidance
    # 3. prompt pairs
    user_prompts = read_prompts(prompts_file, anchor, kind) if prompts_file else None
    anchor_prompts, target_prompts = prompt_pairs(concept, anchor, kind, n_anchor, seed, world=world,
                                                  prompts=user_prompts)
    log.info("e.g. anchor %r -> target %r", anchor_prompts[0], target_prompts[0])
    # 4. anchor images from the base (latents; each from its own seed), and the preserved prompts' own images
    t1 = time.perf_counter()
    latents, keep_prompts, keep_latents = _anchor_latents(pipe, anchor_prompts, extra_keep, n_keep or n_anchor,
                                                          seed=seed, steps=gen_steps, guidance=guidance)
    t_gen = time.perf_counter() - t1
    log.info("sampled %d anchor (+%d preserved) latents in %.1f s", n_anchor, len(keep_prompts) - n_anchor, t_gen)
    # 5. fine-tune with Kumari's objective (+ preservation of the anchor's own prompts and --keep-prompts)
    t2 = time.perf_counter()
    weights = _fine_tune(pipe, latents, target_prompts, anchor_prompts, keep_latents, keep_prompts, batch=batch,
                         seed=seed, steps=steps, lr=lr, params=params, keep_weight=keep_weight)
    t_train = time.perf_counter() - t2
    # 6. save with provenance
    base_hash = _sha256_of(base)
    meta = {"concept": concept, "anchor": anchor, "kind": kind, "objective": "kumari-model-based",
            "params": params, "steps": steps, "lr": lr, "batch": batch, "keep_weight": keep_weight,
            "n_anchor": n_anchor, "gen_steps": gen_steps, "guidance": guidance, "seed": seed,
            "prompts": "toy-world captions" if world else (prompts_file or "templates"),
            "keep_prompts": f"{keep_prompts_file} ({len(keep_prompts) - n_anchor} images)" if extra_keep else "anchor",
            "base": base, "base_sha256": base_hash, "made_by": "python -m tad_demo ablate"}
    from ..runtime.ablation import save_weights

    save_weights(weights, out, meta)
    return {"out": out, "concept": concept, "anchor": anchor, "kind": kind, "device": str(dev),
            "tensors": len(weights), "params": sum(v.numel() for v in weights.values()),
            "delta_norm": _delta_norm(weights, pipe.unet.state_dict()),
            "example_anchor_prompt": anchor_prompts[0], "example_target_prompt": target_prompts[0],
            "preserved_images": len(keep_prompts) if keep_weight > 0 else 0,
            "base_sha256": base_hash, "seconds_generate": t_gen, "seconds_train": t_train,
            "seconds_total": time.perf_counter() - t0}


def _frozen_base(base: str, device: str | None) -> tuple[Any, Any]:
    """The base pipeline in fp32 on ``device`` (CUDA when available), every module frozen."""
    import torch

    from ..runtime.pipelines import load_pipeline

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        pipe = load_pipeline(base, dtype=torch.float32).to(dev)
    except Exception as e:  # noqa: BLE001 - diffusers raises OSError/ValueError/HF errors
        first = (str(e).strip().splitlines() or [""])[0]
        raise AblateError(f"--base {base!r} cannot be loaded: {type(e).__name__}: {first}"[:300]) from e
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.text_encoder, pipe.vae):
        m.requires_grad_(False)
    return pipe, dev


def _anchor_latents(pipe: Any, anchor_prompts: list[str], extra_keep: list[str], n_keep: int, *, seed: int,
                    steps: int, guidance: float) -> tuple[Any, list[str], Any]:
    """(anchor latents, preserved prompts, their latents): the anchor images' own prompts are preserved; extra
    preserved prompts get ``n_keep`` images of their own, from the seeds after the anchor images'."""
    import torch

    from ..runtime.sampling import sample

    n_anchor = len(anchor_prompts)
    latents = torch.stack(sample(pipe, anchor_prompts, [seed + i for i in range(n_anchor)], steps=steps,
                                 guidance=guidance, batch_size=8, output_type="latent"))
    if not extra_keep:
        return latents, list(anchor_prompts), latents
    more = [extra_keep[i % len(extra_keep)] for i in range(n_keep)]
    extra = torch.stack(sample(pipe, more, [seed + n_anchor + i for i in range(n_keep)], steps=steps,
                               guidance=guidance, batch_size=8, output_type="latent"))
    return latents, list(anchor_prompts) + more, torch.cat([latents, extra])


def _fine_tune(pipe: Any, latents: Any, target_prompts: list[str], anchor_prompts: list[str], keep_latents: Any,
               keep_prompts: list[str], *, batch: int, seed: int, steps: int, lr: float, params: str,
               keep_weight: float) -> dict[str, Any]:
    """Kumari's objective on the UNet (``runtime.ablation.ablate``): the fine-tuned weights of the trained tensors."""
    from diffusers import DDPMScheduler

    from ..runtime.ablation import ablate, paired_batches, prompt_encoder

    next_batch = paired_batches(latents, target_prompts, anchor_prompts, batch, seed=seed,
                                keep_latents=keep_latents if keep_weight > 0 else None,
                                keep_prompts=keep_prompts if keep_weight > 0 else None)
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    return ablate(pipe.unet, prompt_encoder(pipe), noise_sched, next_batch, steps=steps, lr=lr, mode=params,
                  keep_weight=keep_weight, seed=seed, log_every=max(1, steps // 10))


def _delta_norm(weights: dict[str, Any], base_state: dict[str, Any]) -> float:
    return math.sqrt(sum(float((weights[k].float() - base_state[k].float()).pow(2).sum()) for k in weights))


def _sha256_of(base: str) -> str:
    from ..core.recipe import sha256_path

    return sha256_path(base) if Path(base).exists() else "not-a-local-path"


# --- CLI -------------------------------------------------------------------------------------------------

def cmd_ablate(args: Any) -> dict[str, Any]:
    return make_checkpoint(args.base, args.concept, args.anchor, args.out, kind=args.kind, steps=args.steps,
                           lr=args.lr, params=args.params, n_anchor=args.n_anchor, batch=args.batch,
                           keep_weight=args.keep_weight, gen_steps=args.gen_steps, guidance=args.guidance,
                           seed=args.seed, device=None if args.device == "auto" else args.device,
                           prompts_file=args.prompts, keep_prompts_file=args.keep_prompts, n_keep=args.n_keep,
                           force=args.force)


def print_ablate(result: dict[str, Any]) -> None:
    print(f"wrote {result['out']}: {result['tensors']} tensors, {result['params']:,} parameters, "
          f"‖θ_ablated − θ_base‖ = {result['delta_norm']:.4f}")
    print(f"{result['concept']} → {result['anchor']} ({result['kind']}) on {result['device']}: anchor images "
          f"{result['seconds_generate']:.1f} s, training {result['seconds_train']:.1f} s, total "
          f"{result['seconds_total']:.1f} s")
    print(f"e.g. anchor prompt {result['example_anchor_prompt']!r} → target {result['example_target_prompt']!r}")
    print(f"use it: python -m tad_demo vector --base BASE --finetuned {result['out']} --out tau.safetensors")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ablate", help="make a concept-ablation checkpoint (Kumari et al.)",
        description="Fine-tune the base so that prompts naming CONCEPT produce ANCHOR (Kumari et al.'s "
        "model-based concept ablation): anchor images are sampled from the base with anchor prompts, and the "
        "model learns ε(x_t, target prompt) = ε_base(x_t, anchor prompt). Trains the UNet's cross-attention k/v by "
        "default, in fp32, on CUDA when available. Writes the fine-tuned weights of the trained tensors "
        "(diffusers names) with metadata: use it as an ablation checkpoint (λ=+1 ablates, −1 enhances).")
    p.add_argument("--base", required=True, help="base model: diffusers folder (the toy world's base/ uses its "
                   "captions), .safetensors/.ckpt or Hub id")
    p.add_argument("--concept", required=True, help="the concept to ablate (e.g. snoopy)")
    p.add_argument("--anchor", required=True, help="what it should become (e.g. dog)")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--kind", choices=KINDS, help="object or style (default: the toy world knows; else object)")
    p.add_argument("--steps", type=int, default=200, help="optimisation steps (default 200)")
    p.add_argument("--lr", type=float, help="AdamW learning rate, cosine decay (default: toy world 2e-3; other "
                   "bases 8e-6, Kumari's 2e-6 scaled by the batch of 4)")
    p.add_argument("--params", choices=PARAMS, default="kv", help="trained tensors: kv = cross-attention k/v "
                   "(Kumari's default), crossattn = all cross-attention, full = whole UNet")
    p.add_argument("--n-anchor", type=int, help="anchor images sampled from the base (default: toy world 32; "
                   "other bases 200, Kumari's default)")
    p.add_argument("--batch", type=int, default=4, help="anchor images per step, as many again for preservation")
    p.add_argument("--keep-weight", type=float, default=1.0, help="weight of the anchor-preservation term (0: off)")
    p.add_argument("--gen-steps", type=int, help="sampling steps for anchor images (default: toy world 20, SD 50)")
    p.add_argument("--guidance", type=float, help="guidance for anchor images (default: toy world 5, SD 6)")
    p.add_argument("--prompts", help="file of anchor prompts, one per line (objects: each contains the anchor word)")
    p.add_argument("--keep-prompts", help="file of prompts to preserve, one per line (e.g. other concepts the "
                   "ablation should not touch): their predictions are kept at the base's, next to the anchor's")
    p.add_argument("--n-keep", type=int, help="images sampled for --keep-prompts (default: as many as --n-anchor)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_ablate, human=print_ablate)
