"""Train the toy world's ControlNets (canny, depth, scribble) on the frozen base model.

Read top to bottom. Run: ``python -m tad_demo.toyworld.train_controlnet [--kinds canny,depth,scribble] [--smoke]``.
Needs ``assets/toyworld/base``. Writes ``assets/toyworld/controlnet/<kind>/`` (diffusers ``ControlNetModel``).

As in the ControlNet paper (Zhang et al. 2023): the ControlNet starts as a copy of the base UNet's encoder
(``ControlNetModel.from_unet``) with zero-initialised output convolutions, the base stays frozen, and 50% of
prompts are dropped so the net learns to read the condition on its own.
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

import numpy as np
import torch
from diffusers import ControlNetModel, DDPMScheduler, StableDiffusionPipeline

from . import world
from .data import ASSETS, base_dataset, base_fingerprint, random_caption
from .train_base import SD_BETAS, encode_latents

log = logging.getLogger("train_controlnet")

# --- config ---------------------------------------------------------------------------------------------
STEPS = 800           # condition-following is visible after a few hundred steps at this size (v1: 1200 gave
                      # silhouette IoU 0.76-0.78 vs 0.61 without control; 800 keeps 3 nets within ~30 min)
BATCH = 32
LR = 5e-4             # higher than SD's 1e-5: a small net trained from a copy of a small encoder
PROMPT_DROPOUT = 0.5  # the ControlNet paper's value
N_IMAGES = 6000
SEED = 0
# f = 4 VAE: two stride-2 stages take a 64×64 condition to the 16×16 latent grid.
COND_CHANNELS = (16, 32, 64)


def conditions(scenes: list[world.Scene], kind: str) -> torch.Tensor:
    """Renderer-made condition maps in [0, 1], N×3×H×W (what the ControlNet pipeline feeds the net)."""
    arr = np.stack([np.asarray(world.condition(kind, s)) for s in scenes])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="canny,depth,scribble")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--base", default=str(ASSETS / "base"))
    ap.add_argument("--out", default=str(ASSETS / "controlnet"))
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--force", action="store_true", help="retrain kinds whose ControlNet exists")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    steps, n_images, batch = (2, 16, 4) if args.smoke else (args.steps, N_IMAGES, BATCH)

    # 1. frozen base, data, latents
    pipe = StableDiffusionPipeline.from_pretrained(args.base).to(dev)
    unet, te, tok = pipe.unet.requires_grad_(False), pipe.text_encoder.requires_grad_(False), pipe.tokenizer
    noise_sched = DDPMScheduler(**SD_BETAS)
    scenes, images = base_dataset(n_images, seed=SEED + 2, cache=not args.smoke)
    latents = encode_latents(pipe.vae, images)

    fingerprint = base_fingerprint(args.base)
    for kind in args.kinds.split(","):
        dst = Path(args.out) / kind
        record = dst / "training.json"  # what it was trained against: a rerun resumes over the same base only
        if not args.force and not args.smoke and record.is_file() and \
                json.loads(record.read_text()).get("base_unet_sha256") == fingerprint:
            log.info("%s exists for this base; skipped (--force retrains it)", dst)
            continue
        torch.manual_seed(SEED)
        rng = random.Random(SEED)
        cond_all = conditions(scenes, kind)
        # 2. the ControlNet: a copy of the base encoder, zero convs at its outputs
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=COND_CHANNELS).to(dev)
        controlnet.train()
        opt = torch.optim.AdamW(controlnet.parameters(), lr=LR, weight_decay=0.0)
        t0 = time.time()
        # 3. train: the frozen UNet, steered by the ControlNet's residuals, predicts the noise
        for step in range(1, steps + 1):
            for g in opt.param_groups:
                g["lr"] = LR * min(1.0, step / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
            idx = torch.randint(0, len(latents), (batch,)).tolist()
            prompts = ["" if rng.random() < PROMPT_DROPOUT else random_caption(scenes[i], rng) for i in idx]
            with torch.no_grad():
                ids = tok(prompts, padding="max_length", truncation=True, return_tensors="pt").input_ids
                emb = te(ids.to(dev))[0]
            x0 = latents[idx]
            noise = torch.randn(x0.shape).to(dev)  # drawn on the CPU: the same noise on every device
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,)).to(dev)
            xt = noise_sched.add_noise(x0, noise, t)
            down, mid = controlnet(xt, t, emb, controlnet_cond=cond_all[idx].to(dev), return_dict=False)
            pred = unet(xt, t, emb, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
            loss = (pred - noise).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 50 == 0 or step == steps:
                log.info("%s step %d/%d loss %.4f %.0fs", kind, step, steps, loss.item(), time.time() - t0)
        # 4. save
        tmp = dst.with_name(kind + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        # Stored in fp16 to keep assets/toyworld within its 60 MB budget; diffusers loads it as fp32.
        controlnet.to("cpu", torch.float16).save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps({"base_unet_sha256": fingerprint, "steps": steps, "lr": LR,
                                                       "batch": batch, "images": n_images}, indent=2))
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
        log.info("saved %s", dst)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
