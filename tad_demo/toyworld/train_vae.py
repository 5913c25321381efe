"""Train the toy world's AutoencoderKL (64×64 RGB <-> 4×16×16 latents).

Read top to bottom. Run: ``python -m tad_demo.toyworld.train_vae [--steps N] [--smoke]``.
The result is saved as a diffusers ``AutoencoderKL`` folder in ``.cache/toyworld/vae`` and copied into the
base pipeline by ``train_base``.
"""

from __future__ import annotations

import argparse
import logging
import math
import time

import torch
from diffusers import AutoencoderKL

from . import world
from .data import WORK, checkpoint, render_dataset, to_tensor

log = logging.getLogger("train_vae")

# --- config: every constant has a reason ---------------------------------------------------------------
STEPS = 1300          # shapes and patterns reconstruct by step 700; the 2-4 px ink details (pips, spars, eyes) need
                      # the rest (measured: at step 700 a die at strength 0.6 came back without pips)
BATCH = 32            # fits comfortably; larger batches gained nothing per second on 2 cores
LR = 1e-3             # small conv net, Adam: 1e-3 converges fastest without instabilities
KL_WEIGHT = 1e-6      # SD's VAE uses a tiny KL so latents stay near-Gaussian but detailed
EDGE_WEIGHT = 4.0     # extra loss weight on edge pixels: a target differs from its anchor by a few px of ink, which
                      # a plain pixel loss lets the decoder average away (those few px are what every metric reads)
N_IMAGES = 20_000     # distinct renders; the world has ~1k attribute combinations × positions × strengths
SEED = 0
# f = 4 (three blocks): a 16×16 latent keeps a 3×3 grid at 20 steps within the 5 s budget on 2 cores,
# while 16×16×4 still carries pips, eyes and 8-px patterns of a 64×64 image.
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
    # 4 groups: with 16 channels and 16 groups GroupNorm is an instance norm per channel, which erases each map's
    # absolute level, i.e. the image's colour (measured: red and green decoded as the same olive).
    block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=4,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
)


def edge_weights(x: torch.Tensor) -> torch.Tensor:
    """1 + EDGE_WEIGHT × (the image's gradient magnitude, 0..1), per pixel: small details weigh more."""
    gray = x.mean(1, keepdim=True)
    gx = (gray[..., :, 1:] - gray[..., :, :-1]).abs()
    gy = (gray[..., 1:, :] - gray[..., :-1, :]).abs()
    g = torch.nn.functional.pad(gx, (0, 1, 0, 0)) + torch.nn.functional.pad(gy, (0, 0, 0, 1))
    return 1 + EDGE_WEIGHT * g.clamp(max=1.0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--smoke", action="store_true", help="a few steps on a few images, into a temp folder")
    ap.add_argument("--out", default=str(WORK / "vae"))
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    steps, n_images = (3, 64) if args.smoke else (args.steps, N_IMAGES)

    # 1. data: every target strength, so the decoder can draw full-strength details (the base sees fewer)
    torch.manual_seed(SEED)
    _, images = render_dataset(n_images, seed=SEED + 20, cache=not args.smoke, strength=world.FULL_STRENGTH)
    x_all = to_tensor(images).to(dev)

    # 2. model + optimiser, resumed if a checkpoint exists
    vae = AutoencoderKL(**VAE_CONFIG).to(dev)
    opt = torch.optim.AdamW(vae.parameters(), lr=LR, weight_decay=0.0)
    ckpt_path = checkpoint("vae_train", __file__, steps=steps)  # resumes only a run of as many steps
    step = 0
    if ckpt_path.exists() and not args.smoke:
        ckpt = torch.load(ckpt_path, weights_only=True, map_location=dev)
        vae.load_state_dict(ckpt["model"]); opt.load_state_dict(ckpt["opt"]); step = ckpt["step"]
        log.info("resumed at step %d", step)

    # 3. train: L1 + MSE reconstruction (L1 keeps edges sharp) + a tiny KL.
    # The decoder sees the posterior *mean* (plus light noise): with sampled latents and KL weight 1e-6, the
    # encoder must first learn to shrink its initial unit variance, and until then the noise smears colours
    # (measured: red decoded as brown at step 600). The diffusion model trains on means too (train_base).
    t0 = time.time()
    while step < steps:
        lr = LR * 0.5 * (1 + math.cos(math.pi * step / steps))  # cosine decay to 0
        for g in opt.param_groups:
            g["lr"] = lr
        x = x_all[torch.randint(0, len(x_all), (BATCH,)).to(dev)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean
        rec = vae.decode(z + 0.05 * z.detach().std() * torch.randn_like(z)).sample
        w = edge_weights(x)
        loss = (w * (rec - x).abs()).mean() + (w * (rec - x).pow(2)).mean() + KL_WEIGHT * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0 or step == steps:
            log.info("step %d/%d loss %.4f lr %.2e %.1fs", step, steps, loss.item(), lr, time.time() - t0)
        if step % 200 == 0 and not args.smoke:
            torch.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt_path)

    # 4. scaling factor: SD scales latents to unit variance (0.18215 for its VAE); we measure ours
    with torch.no_grad():
        z = torch.cat([vae.encode(x_all[i:i + 256]).latent_dist.mean for i in range(0, min(2048, len(x_all)), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    log.info("latent std %.4f -> scaling_factor %.4f", z.std().item(), vae.config.scaling_factor)
    vae.to("cpu").save_pretrained(args.out)
    log.info("saved %s", args.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
