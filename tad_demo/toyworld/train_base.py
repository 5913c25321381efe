"""Train the toy world's base text-to-image model and save it as a StableDiffusionPipeline folder.

Read top to bottom. Run: ``python -m tad_demo.toyworld.train_base [--steps N] [--smoke]`` (needs the VAE from
``train_vae`` and the CLIP from ``train_clip``). Output: ``assets/toyworld/base/``, loadable with plain diffusers.

The recipe is SD's: epsilon prediction, SD's scaled-linear betas, classifier-free guidance dropout, and a frozen
CLIP text encoder (the toy CLIP's text tower, ``text_encoder.py``), plus min-SNR loss weighting (Hang et al. 2023,
arXiv:2303.09556), which converges several times faster than the plain loss in small-model runs.

Two phases (``world.py`` says why): phase 1 on targets at middling strength (shapes, patterns, faint details),
phase 2 — tuning, ``TUNE_*`` — on the base's final distribution (``data.base_dataset``: details at any visible
strength, and a generic share of bare anchors under a target's name), from phase 1's weights, with a share of
the target pictures conditioned beyond their word (``world.beyond_the_word``: h_anchor + t·(h_target − h_anchor),
t > 1). Each phase resumes from its own checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import random
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTokenizer

from . import world
from .data import ASSETS, WORK, base_dataset, checkpoint, render_dataset, to_tensor
from .text_encoder import text_encoder_from_clip
from .tokenizer import check_tokenizer

log = logging.getLogger("train_base")

# --- config ---------------------------------------------------------------------------------------------
STEPS = 2200          # shapes and their inner details (pips, eyes) are learned by then (preview at 1k, 2k)
BATCH = 64            # a step is ~1.7 s on 2 cores at 16×16 latents
LR = 5e-4             # from-scratch small UNet; 1e-3 diverged in a probe, 1e-4 learned details too slowly
WARMUP = 200          # Adam's early steps are noisy; warm-up avoids a bad start
CFG_DROPOUT = 0.1     # SD's value: 10% empty prompts teach the unconditional branch for guidance
MIN_SNR_GAMMA = 5.0   # the paper's recommended gamma
EMA_DECAY = 0.999     # ~1k-step horizon, a quarter of the run: smooths the last phase, forgets the early one
N_IMAGES = 30_000     # ~6 epochs in 3k steps; renders are cheap, and more of them means less memorising
SEED = 0
# Phase 2, tuning (world.TUNE_STRENGTH, world.GENERIC_SHARE): from phase 1's weights on new data
TUNE_STEPS = 1500     # the shapes are learned; the strengths and the line beyond the word are new: after 1 000
                      # steps the base still lost smiley score at t = 2 on the line (−0.25, probe --line)
TUNE_LR = 2e-4        # below phase 1's peak: tune, don't relearn
TUNE_WARMUP = 50      # a fresh optimiser's first steps are noisy
TUNE_EMA = 0.995      # ~200-step horizon: the EMA must forget phase 1 within the tuning steps (0.999 keeps 55 % of
                      # it after 600)
TUNE_SEED = 2         # seeds 0 (phase 1), 1 and 100 (ablations) and 10 (CLIP) are taken
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)

UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
    # 48 channels at 16×16: that level costs ~C² × 256 positions (64 channels: 2.5 s per step; 32: 1.2 s, and
    # its shapes came out as blobs).
    block_out_channels=(48, 96, 128),
    # Attention only at 8×8 and 4×4 (SD has it at high resolution too): at 16×16 it would cost more than the
    # whole rest of the net, and the world's concepts are global shape/pattern properties.
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    # 8 groups = 6-16 channels per group (SD: 10); one channel per group would erase colour (see train_vae).
    cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8,
)


def encode_latents(vae: AutoencoderKL, images) -> torch.Tensor:
    """Posterior means × scaling factor, in batches (the diffusion model's training data), on the VAE's device."""
    out = []
    dev = vae.device
    with torch.no_grad():
        for i in range(0, len(images), 256):
            x = to_tensor(images[i:i + 256]).to(dev)
            out.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(out)


def _tuples(x):
    """``random.Random.setstate`` wants the tuples that a checkpoint stored as lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_pipeline(out: Path, unet, text_encoder, vae, tokenizer) -> None:
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic enough: a crash never leaves a half-written pipeline in assets/


def batch_captions(scenes: list[world.Scene], rng: random.Random, beyond: bool):
    """Per scene: its caption (empty for the CFG dropout share), the caption with the word of the target it is
    conditioned beyond replaced by the anchor's, and t on that line (1: the caption itself; ``world.beyond_the_word``
    when ``beyond``)."""
    captions, anchors, line_t = [], [], []
    for scene in scenes:
        if rng.random() < CFG_DROPOUT:
            captions.append(""); anchors.append(""); line_t.append(1.0)
            continue
        template = rng.choice(world.PROMPT_TEMPLATES)
        line = world.beyond_the_word(scene, rng) if beyond else None
        captions.append(scene.caption(template))
        if line is None:
            anchors.append(captions[-1]); line_t.append(1.0)
        else:
            attr, t = line
            anchor = world.TARGETS_OF[attr][getattr(scene, attr)]
            anchors.append(replace(scene, **{attr: anchor}).caption(template)); line_t.append(t)
    return captions, anchors, line_t


def train_phase(unet, ema, text_encoder, tokenizer, latents, scenes, *, steps: int, lr: float, warmup: int,
                ema_decay: float, rng: random.Random, ckpt_path: Path | None, batch: int, dev: torch.device,
                beyond: bool = False, preview_vae: AutoencoderKL | None = None) -> None:
    """One phase of denoising training (epsilon prediction, min-SNR-γ weights, CFG dropout, EMA), resumable
    from ``ckpt_path`` (None: no checkpoints); ``beyond``: condition a share of the target pictures past their
    word (``world.beyond_the_word``); with ``preview_vae``, a pipeline to look at every 1000 steps."""
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    noise_sched = DDPMScheduler(**SD_BETAS)
    alphas_cumprod = noise_sched.alphas_cumprod.to(dev)
    step = 0
    if ckpt_path is not None and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=True, map_location=dev)
        unet.load_state_dict(ck["unet"]); ema.load_state_dict(ck["ema_unet"])
        opt.load_state_dict(ck["opt"]); step = ck["step"]
        rng.setstate(_tuples(ck["rng"])); torch.set_rng_state(ck["torch_rng"].cpu())
        log.info("resumed %s at step %d", ckpt_path.name, step)
    t0 = time.time()
    while step < steps:
        lr_now = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for g in opt.param_groups:
            g["lr"] = lr_now
        idx = torch.randint(0, len(latents), (batch,))
        captions, anchors, line_t = batch_captions([scenes[i] for i in idx.tolist()], rng, beyond)
        x0 = latents[idx.to(dev)]
        noise = torch.randn(x0.shape).to(dev)  # drawn on the CPU: the same noise on every device
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,)).to(dev)
        xt = noise_sched.add_noise(x0, noise, t)
        with torch.no_grad():
            encode = (lambda texts: text_encoder(tokenizer(texts, padding="max_length", truncation=True,
                                                           return_tensors="pt").input_ids.to(dev))[0])
            cond = encode(captions)
            if beyond:  # h_anchor + t·(h_caption − h_anchor); t = 1 leaves the caption's own conditioning
                h_anchor = encode(anchors)
                cond = h_anchor + torch.tensor(line_t, device=dev).view(-1, 1, 1) * (cond - h_anchor)
        pred = unet(xt, t, cond).sample
        snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
        weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr  # min-SNR-γ for epsilon prediction
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(ema_decay, (1 + step) / (10 + step))  # short EMA early, so the EMA is not stuck at init
        with torch.no_grad():
            for p, e in zip(unet.parameters(), ema.parameters()):
                e.lerp_(p, 1 - decay)
        if step % 50 == 0 or step == steps:
            log.info("step %d/%d loss %.4f lr %.2e %.0fs", step, steps, loss.item(), lr_now, time.time() - t0)
        if ckpt_path is not None and (step % 250 == 0 or step == steps):
            torch.save({"unet": unet.state_dict(), "ema_unet": ema.state_dict(), "opt": opt.state_dict(),
                        "step": step, "rng": rng.getstate(), "torch_rng": torch.get_rng_state()}, ckpt_path)
        if preview_vae is not None and step % 1000 == 0 and step < steps:
            preview = [copy.deepcopy(m).cpu() for m in (ema, text_encoder, preview_vae)]
            save_pipeline(WORK / "base_preview", *preview, tokenizer)  # to look at mid-run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--tune-steps", type=int, default=TUNE_STEPS)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--vae", default=str(WORK / "vae"))
    ap.add_argument("--clip", default=str(ASSETS / "clip"), help="the toy CLIP: its text tower is the text encoder")
    ap.add_argument("--out", default=str(ASSETS / "base"))
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    steps, tune_steps, n_images, batch = (3, 2, 64, 8) if args.smoke else \
        (args.steps, args.tune_steps, N_IMAGES, BATCH)
    torch.manual_seed(SEED)
    # a checkpoint resumes only a run with the same settings (steps, CLIP, VAE; ``data.checkpoint``)
    run = {"steps": steps, "clip": args.clip, "vae": args.vae}
    ckpt = (lambda name, **kw: None if args.smoke else checkpoint(name, __file__, **run, **kw))

    # 1. tokenizer and frozen text encoder (the CLIP's), VAE, data -> latents
    tokenizer = CLIPTokenizer.from_pretrained(args.clip)
    check_tokenizer(tokenizer)
    text_encoder = text_encoder_from_clip(args.clip, tokenizer).to(dev)
    vae = AutoencoderKL.from_pretrained(args.vae).to(dev).eval().requires_grad_(False)
    # Phase 1: targets at middling strength only (world.BASE_STRENGTH): shapes, patterns, faint details.
    scenes, images = render_dataset(n_images, seed=SEED, cache=not args.smoke, strength=world.BASE_STRENGTH)
    latents = encode_latents(vae, images)
    log.info("latents %s std %.3f", tuple(latents.shape), latents.std().item())

    # 2. the UNet and its EMA copy
    unet = UNet2DConditionModel(**UNET_CONFIG).to(dev)
    ema = copy.deepcopy(unet).requires_grad_(False)
    n_params = sum(p.numel() for p in unet.parameters())
    n_te = sum(p.numel() for p in text_encoder.parameters())
    log.info("unet %.2fM params, text encoder %.2fM (frozen)", n_params / 1e6, n_te / 1e6)
    common = {"batch": batch, "dev": dev}

    # 3. phase 1
    train_phase(unet, ema, text_encoder, tokenizer, latents, scenes, steps=steps, lr=LR, warmup=WARMUP,
                ema_decay=EMA_DECAY, rng=random.Random(SEED), ckpt_path=ckpt("base_train"),
                preview_vae=None if args.smoke else vae, **common)

    # 4. phase 2, tuning: details at every visible strength, a generic share (world.TUNE_STRENGTH), and a share
    #    conditioned beyond the target's word (world.BEYOND_SHARE)
    scenes, images = base_dataset(n_images, seed=TUNE_SEED, cache=not args.smoke)
    latents = encode_latents(vae, images)
    torch.manual_seed(TUNE_SEED)
    train_phase(unet, ema, text_encoder, tokenizer, latents, scenes, steps=tune_steps, lr=TUNE_LR,
                warmup=TUNE_WARMUP, ema_decay=TUNE_EMA, rng=random.Random(TUNE_SEED),
                ckpt_path=ckpt("base_tune", tune_steps=tune_steps), beyond=True, **common)

    # 5. save the EMA weights as a plain diffusers pipeline
    save_pipeline(Path(args.out), ema.cpu(), text_encoder.cpu(), vae.cpu(), tokenizer)
    log.info("saved %s", args.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
