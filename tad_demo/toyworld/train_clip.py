"""Train the toy world's CLIP (an open_clip model) contrastively on renders and captions.

Read top to bottom. Run: ``python -m tad_demo.toyworld.train_clip [--steps N] [--smoke]`` (needs the VAE from
``train_vae``). Output ``assets/toyworld/clip/``: ``open_clip_config.json`` + ``model.safetensors`` + tokenizer
files, so plain open_clip loads it with ``open_clip.create_model_and_transforms("local-dir:assets/toyworld/clip")``
and ``open_clip.get_tokenizer("local-dir:assets/toyworld/clip")``; ``config.json`` is the bare model config.

What it must do is score what a person sees, with the evaluation's text: the **bare concept string**
("smiley", "circle", "striped", "plain"; optionally prefixed "A photo depicts ").

* Soft targets. Captions share attributes across a batch ("circle" fits every circle), and a target at
  strength s is the target with weight s and its anchor with weight 1 − s in phase 1, s**0.2 and 1 − s**0.2 in
  phase 2 (``world.caption_weight``, ``SHARPEN_GAMMA``; see below). So the
  target of each row is the distribution of caption weights over the batch (a multi-positive contrastive loss,
  as in SupCon, Khosla et al. 2020, with graded positives): the learned cosine rises with the strength a
  person sees, which is what makes "more smiley" score higher.
* Every strength (``world.FULL_STRENGTH``), unlike the base model: the CLIP knows the full concept.
* Robust to generated images: half the renders pass through the VAE first (its blur and colour bleeding are
  what every generated image has), then blur, noise, colour jitter and small shifts.
* Two phases. Phase 1 trains both towers. Phase 2 (``SHARPEN_*``) trains the image tower alone, so the text
  tower — which the base model uses, frozen, as its text encoder — stays exactly as it was. Measured on renders
  (48 per target and strength) after phase 1, and what phase 2 changes:
  - checkered was recognised on 25 % of full-strength renders, and on 81 % of the same renders shifted by
    4 px: its 8-px squares line up with the 8-px patches, so each token saw one flat tone, and phase 1 shifted
    whole batches by up to 3 px, which almost never left them aligned the way every render and every generated
    image is. Phase 2 shifts each image on its own, half of them not at all: 100 % from strength 0.8;
  - the learnt logit scale sat at phase 1's cap of 100. Phase 2 starts it at 20 and it settles near 16;
  - its VAE rows decode *noisy* latents (``SHARPEN_NOISE``): a generated latent is never exact, and its errors
    decode into the blotches and colour speckles of generated images;
  - a person names a target from strength 0.1 on (at 0.1 a render shows the face, the pips, the mark, the spars
    and the pattern plainly, if faint), but with weights s and 1 − s the CLIP preferred the anchor's string up
    to s = 0.5 (accuracy at s = 0.3: 0.00–0.08 for every target, 24 renders each). Phase 2 weighs the target
    s**0.3 (half the target at s = 0.1), and in 500 steps the crossing moved down part of the way (accuracy at
    s = 0.3: 0.04–1.00, objects 0.21–0.71); the colour blotches (below) moved it back up (0.04–1.00, objects
    0.17–0.62). Phase 2 now weighs it s**0.2 (``SHARPEN_GAMMA``: 0.63 of the target at s = 0.1) and trains
    1 000 steps: 0.38–1.00, objects 0.38–0.75;
  - a target's own score must keep rising with strength (``strength_ranking``): the contrastive loss only sets
    how a target's string compares with its anchor's, and full-strength objects scored lower than at 0.75
    (1.245 against 1.254), styles barely higher (1.300 against 1.291). After phase 2 (500 steps, s**0.3) styles
    rise to the top (1.318–1.330 at 0.75, 1.370–1.400 at 1), kite too (1.274 → 1.333); smiley, die and warning
    stay flat above 0.75 (75 % and full ink opacity look alike);
  - generated images of prompts that name no colour mix the palette's colours in blotches, and now and then
    draw a face's eyes or a die's pips green or red; more so away from the base, as at λ = −1, where the faces
    and pips are bolder. A person looks past the colours; the CLIP, which had seen only dark ink on one-colour
    objects, scored those smileys lower than the base's. Phase 2 permutes the colour channels inside soft
    blotches on half of its images and leans dark pixels there towards a palette colour (``colour_blotches``;
    on the same 96 generated smileys at λ = 0 and −1, development seeds, the paired change of the smiley's
    score went from −0.016 to +0.040; colour still named right on 99.5 % of 192 base images).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import world
from .data import ASSETS, WORK, checkpoint, render_dataset, to_tensor
from .tokenizer import write_tokenizer

log = logging.getLogger("train_clip")

# --- config ---------------------------------------------------------------------------------------------
STEPS = 1500       # the strength response and zero-shot accuracy flatten out before this
BATCH = 128        # many negatives per step matter for contrastive losses
LR = 1e-3          # small ViT with warm-up; AdamW
WARMUP = 100
SHARPEN_STEPS = 1000  # phase 2, image tower only: in 500 the crossing had moved only part of the way (docstring)
SHARPEN_LR = 5e-4    # from phase 1's weights: half its peak rate, same warm-up and cosine decay
SHARPEN_SCALE = 20.0 # cap on the logit scale in phase 2: a caption's log-odds of 1 is then 0.05 of cosine
SHARPEN_NOISE = 0.5  # phase 2's VAE rows: latent noise up to half the latent's std (see ``roundtrip``)
SHARPEN_GAMMA = 0.2  # phase 2: target weights s**0.2 (``world.attribute_weight``), 0.63 of the target at s = 0.1
SHARPEN_BLOTCHES = 0.5  # phase 2: share of images with colour blotches (``colour_blotches``)
RANK_MARGIN = 0.1    # phase 2: a target's bare-string cosine must rise by this per unit of strength (see
RANK_WEIGHT = 60.0   # ``strength_ranking``); weight of that term next to the contrastive loss (~3); with 10 or
                     # 30 enhanced smileys still scored below the base's on development images (model card)
N_IMAGES = 20_000  # renders at every strength (seed 10: neither the base's data nor any evaluation's)
SEED = 10
VAE_SHARE = 0.5    # share of images seen through the VAE (encode -> decode), like every generated image
N_VAE = 6000       # renders passed through the VAE once (the round trip of all 20 000 took 8 min)
TWIN_SHARE = 0.5   # share of images that also bring their twin caption (target and anchor word swapped): a batch
                   # of 128 random captions almost never holds "smiley" next to "circle", so without twins the
                   # contrastive loss only asked for the shape (measured: zero-shot object accuracy 0.53, and at
                   # strength 1 the anchor outscored the target on 85 % of smileys)
# Standard CLIP normalisation, so the toy model plugs into open_clip's preprocessing unchanged.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
MODEL_CFG = {
    "embed_dim": 64,
    "quick_gelu": True,  # as OpenAI's ViT-B-32, the model Kumari's evaluation uses
    # 8-px patches (64 tokens): with 16-px patches a small object in a patterned picture fell on 2×2 tokens, and
    # zero-shot object accuracy stayed at 0.81
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 96, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": None, "width": 64, "heads": 4, "layers": 3,
                 "hf_tokenizer_name": "toyworld-tokenizer"},  # local-dir loading uses the folder's tokenizer
}
PREPROCESS_CFG = {"size": 64, "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
                  "resize_mode": "shortest"}
PREFIX = "A photo depicts "  # CLIPScore's caption prefix: an option of the metric, so the CLIP knows it too


def _word(scene: world.Scene, attr: str, rng: random.Random, gamma: float = 1.0) -> str:
    """The word a caption uses for an attribute: for a target, its own name with the probability of its weight
    (``world.attribute_weight``) and its anchor's otherwise (so the caption always fits the image with a weight
    above zero)."""
    value = getattr(scene, attr)
    targets = world.TARGETS_OF.get(attr, {})
    if value in targets and rng.random() > world.attribute_weight(scene, attr, value, gamma):
        return targets[value]
    return value


def caption_with_attrs(scene: world.Scene, rng: random.Random, gamma: float = 1.0) -> tuple[str, dict[str, str]]:
    """A caption and the attributes it asserts (used to weigh it against every image of the batch)."""
    words = {a: _word(scene, a, rng, gamma) for a in world.ATTRIBUTES}
    r = rng.random()
    if r < 0.30:  # a prompt template, as the diffusion model sees them
        template = rng.choice(world.PROMPT_TEMPLATES)
        asserted = {a: words[a] for a in world.ATTRIBUTES if "{" + a + "}" in template}
        return template.format(**words), asserted
    if r < 0.55:  # the bare concept strings of the evaluation
        return words["object"], {"object": words["object"]}
    if r < 0.75:
        return words["style"], {"style": words["style"]}
    if r < 0.85:
        return f"{words['color']} {words['object']}", {"color": words["color"], "object": words["object"]}
    if r < 0.90:
        return words["color"], {"color": words["color"]}
    attr = rng.choice(("object", "style"))  # the prefixed option of the metric
    return PREFIX + words[attr], {attr: words[attr]}


def twin(attr: str, value: str, rng: random.Random) -> str | None:
    """The value a caption must tell ``value`` apart from: a target's anchor, or one of an anchor's targets."""
    targets = world.TARGETS_OF[attr]
    if value in targets:
        return targets[value]
    twins = [t for t, a in targets.items() if a == value]
    return rng.choice(twins) if twins else None


def twin_caption(scene: world.Scene, rng: random.Random) -> tuple[str, dict[str, str]] | None:
    """A caption true to the scene except one word, the object's or the style's, swapped for its twin (None if
    the scene has no twin: a control object in a style drawn without one). Weighed like any caption, so a
    smiley at strength 0.6 is 0.4 "circle": the loss teaches the graded response, not only the contrast."""
    for attr in rng.sample(("object", "style"), 2):
        other = twin(attr, getattr(scene, attr), rng)
        if other is None:
            continue
        if rng.random() < 0.5:
            return other, {attr: other}
        template = rng.choice([t for t in world.PROMPT_TEMPLATES if "{" + attr + "}" in t])
        words = {a: getattr(scene, a) for a in world.ATTRIBUTES} | {attr: other}
        return template.format(**words), {a: words[a] for a in world.ATTRIBUTES if "{" + a + "}" in template}
    return None


def roundtrip(vae_dir: str | Path, x: torch.Tensor, latent_noise: float = 0.0,
              gen: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] through the VAE (posterior mean, decoded), in batches. ``latent_noise``: each latent
    gets Gaussian noise of a random share (uniform up to this) of its own standard deviation before decoding —
    a generated latent is never exact, and its errors decode into the blotches and colour speckles that every
    generated image of this world has."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 256):
            z = vae.encode(x[i:i + 256]).latent_dist.mean
            if latent_noise:
                sigma = latent_noise * torch.rand(len(z), 1, 1, 1, generator=gen)
                z = z + sigma * z.std(dim=(1, 2, 3), keepdim=True) * torch.randn(z.shape, generator=gen)
            out.append(vae.decode(z).sample.clamp(-1, 1))
    return torch.cat(out)


def colour_blotches(x: torch.Tensor, gen: torch.Generator, share: float) -> torch.Tensor:
    """On ``share`` of the images, a few soft blotches in which the colour channels are permuted — a red object
    turns partly blue or green, greys (backgrounds, a pattern's tones) stay as they are — and dark pixels (ink,
    black backgrounds) lean up to halfway to a palette colour. Generated images of colourless prompts mix the
    palette's colours in blotches like these and draw some faces and pips green or red (at every λ, more so
    away from the base), which a person looks past when naming the object or style."""
    b, _, h, w = x.shape
    on = torch.rand(b, generator=gen) < share
    if not on.any():
        return x
    # a low-frequency field (4×4 cells, bilinear); where it exceeds 0.6 a blotch with soft edges (1/8 of the
    # field's range): a quarter of an image on average, often none on a small object
    field = F.interpolate(torch.rand(b, 1, 4, 4, generator=gen), size=(h, w), mode="bilinear", align_corners=False)
    alpha = ((field - 0.6) * 8).clamp(0, 1) * on[:, None, None, None]
    perms = ((1, 2, 0), (2, 0, 1), (1, 0, 2), (2, 1, 0), (0, 2, 1))  # every order but the identity
    pick = torch.randint(0, len(perms), (b,), generator=gen).tolist()
    swapped = torch.stack([xi[list(perms[k])] for xi, k in zip(x, pick)])
    # dark pixels in a blotch lean towards a palette colour, by a random amount up to half the way
    palette = torch.tensor(list(world.COLORS.values()), dtype=x.dtype) / 127.5 - 1
    tint = palette[torch.randint(0, len(palette), (b,), generator=gen)][:, :, None, None]
    dark = (x.mean(1, keepdim=True) < -0.5).to(x.dtype) * 0.5 * torch.rand(b, 1, 1, 1, generator=gen)
    swapped = swapped + dark * (tint - swapped)
    return x * (1 - alpha) + swapped * alpha


def augment(x: torch.Tensor, gen: torch.Generator, per_image_shift: bool = False,
            blotches: float = 0.0) -> torch.Tensor:
    """Blur, noise, colour jitter and small shifts: the CLIP must also judge imperfect *generated* images.

    ``per_image_shift`` (phase 2): each image shifted on its own by up to 4 px, half of them not at all (the
    alignment every render and generated image has); phase 1 shifted the whole batch by up to 3 px.
    ``blotches`` (phase 2): the share of images given ``colour_blotches``."""
    b = x.shape[0]
    blur = torch.rand(b, generator=gen) < 0.4
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0]) / 4
        kernel = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
        x = torch.where(blur[:, None, None, None], blurred, x)
    # colour: per-image brightness, contrast and per-channel gain (generated colours drift a little)
    gain = 1 + 0.08 * torch.randn(b, 3, 1, 1, generator=gen)
    contrast = 1 + 0.15 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    bright = 0.1 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    x = (x * contrast * gain + bright)
    x = x + 0.06 * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    if blotches:
        x = colour_blotches(x, gen, blotches)
    if per_image_shift:
        shifts = torch.randint(-4, 5, (b, 2), generator=gen) * (torch.rand(b, 1, generator=gen) < 0.5)
        x = torch.stack([torch.roll(xi, shifts=tuple(s), dims=(1, 2)) for xi, s in zip(x, shifts.tolist())])
        return x.clamp(-1, 1)
    shift = torch.randint(-3, 4, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=shift, dims=(2, 3)).clamp(-1, 1)


def strength_ranking(fi: torch.Tensor, scenes: list[world.Scene], target_text: dict[str, torch.Tensor],
                     margin: float) -> torch.Tensor:
    """Hinge loss that orders each target's bare-string cosine by strength: for two images of the same target
    (its anchor counts as strength 0) at strengths s_i > s_j, cos_i − cos_j ≥ margin · (s_i − s_j).

    The contrastive loss alone sets how a target's string compares with its anchor's, not how high the target's
    own cosine climbs: after it, full-strength objects scored *lower* than at strength 0.75 (1.245 vs 1.254, 24
    renders per target), so the CLIP score could not tell a fully drawn face from a three-quarter one."""
    terms = []
    for attr, targets in world.TARGETS_OF.items():
        for target, anchor in targets.items():
            rows = [(i, world.attribute_weight(sc, attr, target))  # its strength; 0 for the anchor
                    for i, sc in enumerate(scenes) if getattr(sc, attr) in (target, anchor)]
            if len(rows) < 2:
                continue
            idx = torch.tensor([i for i, _ in rows], device=fi.device)
            s = torch.tensor([v for _, v in rows], device=fi.device)
            cos = fi[idx] @ target_text[target]
            ds, dc = s[:, None] - s[None, :], cos[:, None] - cos[None, :]
            terms.append(F.relu(margin * ds - dc)[ds > 0.05])  # closer strengths look alike: no order asked
    hinges = torch.cat(terms) if terms else fi.new_zeros(0)
    return hinges.mean() if len(hinges) else fi.new_zeros(())


def normalise(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> CLIP-normalised."""
    x = (x + 1) / 2
    return (x - torch.tensor(MEAN, device=x.device)[:, None, None]) / torch.tensor(STD, device=x.device)[:, None, None]


def save_clip(model, out: Path, tok_dir: Path, model_cfg: dict) -> None:
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(model_cfg, indent=2))
    (tmp / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": PREPROCESS_CFG}, indent=2))
    for f in tok_dir.iterdir():
        shutil.copy(f, tmp / f.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def train_phase(model, params, *, steps: int, lr: float, scale_cap: float, per_image_shift: bool, data,
                ckpt_path: Path | None, seed: int, batch: int, dev: torch.device, tokenizer,
                gamma: float = 1.0, rank_margin: float = 0.0, blotches: float = 0.0) -> None:
    """One phase of contrastive training over ``params`` (the rest of the model frozen), resumable from
    ``ckpt_path`` (a checkpoint every 250 steps; None: no checkpoints). ``gamma``: the target weights'
    exponent (``world.attribute_weight``); ``rank_margin`` > 0 (phase 2, text tower frozen) adds
    ``strength_ranking`` with that margin."""
    scenes, x_all, x_vae = data
    n_vae = len(x_vae)
    target_text = {}
    if rank_margin:
        words = [*world.OBJECT_TARGETS, *world.STYLE_TARGETS]
        with torch.no_grad():
            ids = tokenizer(words, padding="max_length", truncation=True, return_tensors="pt").input_ids
            target_text = dict(zip(words, model.encode_text(ids.to(dev), normalize=True)))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    rng, gen, step = random.Random(seed), torch.Generator().manual_seed(seed), 0
    if ckpt_path is not None and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=True, map_location=dev)
        model.load_state_dict(ck["model"]); opt.load_state_dict(ck["opt"]); step = ck["step"]
        gen.set_state(ck["gen"]); rng = random.Random(f"{seed}-{step}")
        log.info("resumed at step %d", step)
    t0 = time.time()
    while step < steps:
        step += 1
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / WARMUP) * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(x_all), (batch,), generator=gen)
        through_vae = torch.rand(batch, generator=gen) < VAE_SHARE
        idx = torch.where(through_vae, idx % n_vae, idx)  # VAE rows come from the round-tripped renders
        x = torch.where(through_vae[:, None, None, None], x_vae[idx % n_vae], x_all[idx])
        caps = [caption_with_attrs(scenes[i], rng, gamma) for i in idx.tolist()]
        twins = [twin_caption(scenes[i], rng) for i in idx.tolist() if rng.random() < TWIN_SHARE]
        caps += [c for c in twins if c is not None]
        ids = tokenizer([c for c, _ in caps], padding="max_length", truncation=True, return_tensors="pt").input_ids
        fi, ft, scale = model(normalise(augment(x, gen, per_image_shift, blotches)).to(dev), ids.to(dev))[:3]
        logits = scale * fi @ ft.t()
        # weight[i, j]: how well caption j describes image i (graded for a target: world.attribute_weight; 0 or 1
        # otherwise)
        weight = torch.tensor([[world.caption_weight(scenes[i], asserted, gamma) for _, asserted in caps]
                               for i in idx.tolist()], dtype=torch.float32, device=dev)
        # image -> text over every caption; text -> image for the captions that fit some image of the batch
        # (a twin caption may fit none)
        fits = weight.sum(0) > 0
        loss = 0.5 * (F.cross_entropy(logits, weight / weight.sum(1, keepdim=True))
                      + F.cross_entropy(logits.t()[fits], (weight[:, fits] / weight[:, fits].sum(0)).t()))
        if rank_margin:
            loss = loss + RANK_WEIGHT * strength_ranking(fi, [scenes[i] for i in idx.tolist()], target_text,
                                                         rank_margin)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(scale_cap))
        if step % 50 == 0 or step == steps:
            log.info("step %d/%d loss %.4f scale %.1f %.0fs", step, steps, loss.item(), model.logit_scale.exp().item(),
                     time.time() - t0)
        if ckpt_path is not None and step % 250 == 0:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "gen": gen.get_state()}, ckpt_path)


def main(argv: list[str] | None = None) -> None:
    import open_clip
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--sharpen-steps", type=int, default=SHARPEN_STEPS)
    ap.add_argument("--from-clip", default="", help="a phase-1 CLIP folder: skip phase 1 and sharpen it")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--vae", default=str(WORK / "vae"))
    ap.add_argument("--out", default=str(ASSETS / "clip"))
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    steps, sharpen_steps, n_images, batch = (3, 2, 64, 16) if args.smoke else \
        (args.steps, args.sharpen_steps, N_IMAGES, BATCH)
    torch.manual_seed(SEED)

    # 1. tokenizer and data: renders at every strength (each phase passes its share of them through the VAE)
    tok_dir = write_tokenizer(WORK / ("clip_tok_smoke" if args.smoke else "clip_tok"))
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    scenes, images = render_dataset(n_images, seed=SEED, cache=not args.smoke, strength=world.FULL_STRENGTH)
    x_all = to_tensor(images)
    n_vae = min(N_VAE, len(x_all))

    # 2. model (open_clip's own CLIP class from our config)
    model_cfg = json.loads(json.dumps(MODEL_CFG))
    model_cfg["text_cfg"]["vocab_size"] = len(tokenizer)
    cfg = {k: v for k, v in model_cfg.items()}
    cfg["text_cfg"] = {k: v for k, v in cfg["text_cfg"].items() if k != "hf_tokenizer_name"}
    model = open_clip.CLIP(**cfg).to(dev)
    log.info("clip %.2fM params", sum(p.numel() for p in model.parameters()) / 1e6)
    common = {"batch": batch, "dev": dev, "tokenizer": tokenizer}
    # a checkpoint resumes only a run with the same settings (``data.checkpoint``)
    ckpt = (lambda name, **run: None if args.smoke else checkpoint(name, __file__, vae=args.vae, **run))

    # 3. phase 1: both towers; its VAE rows are exact round trips
    if args.from_clip:
        model.load_state_dict(load_file(str(Path(args.from_clip) / "model.safetensors")))
        log.info("phase 1 from %s", args.from_clip)
    else:
        x_vae = roundtrip(args.vae, x_all[:n_vae])
        log.info("%d renders, VAE round trip MAE %.1f/255 on %d", len(x_all),
                 (x_vae - x_all[:n_vae]).abs().mean().item() * 127.5, n_vae)
        train_phase(model, list(model.parameters()), steps=steps, lr=LR, scale_cap=100.0, per_image_shift=False,
                    data=(scenes, x_all, x_vae), ckpt_path=ckpt("clip_train", steps=steps), seed=SEED, **common)

    # 4. phase 2: the image tower (and the logit scale) alone; the text tower, the base's text encoder, is frozen;
    #    its VAE rows decode noisy latents, as generated images do
    x_gen = roundtrip(args.vae, x_all[:n_vae], SHARPEN_NOISE, torch.Generator().manual_seed(SEED + 1))
    visual = [*model.visual.parameters(), model.logit_scale]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in visual:
        p.requires_grad_(True)
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(SHARPEN_SCALE))
    sharpen_ckpt = ckpt("clip_sharpen", steps=steps, sharpen_steps=sharpen_steps, start=args.from_clip)
    train_phase(model, visual, steps=sharpen_steps, lr=SHARPEN_LR, scale_cap=SHARPEN_SCALE, per_image_shift=True,
                data=(scenes, x_all, x_gen), ckpt_path=sharpen_ckpt, seed=SEED + 1,
                gamma=SHARPEN_GAMMA, rank_margin=RANK_MARGIN, blotches=SHARPEN_BLOTCHES, **common)

    # 5. save in open_clip's local-dir format
    save_clip(model.cpu().eval(), Path(args.out), tok_dir, model_cfg)
    log.info("saved %s", args.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
