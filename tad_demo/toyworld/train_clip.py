"""Train the toy world's CLIP (an open_clip model) contrastively on renders and captions.

Read top to bottom. Run: ``python -m tad_demo.toyworld.train_clip [--steps N] [--smoke]``.
Output ``assets/toyworld/clip/``: ``open_clip_config.json`` + ``model.safetensors`` + tokenizer files, so plain
open_clip loads it with ``open_clip.create_model_and_transforms("local-dir:assets/toyworld/clip")`` and
``open_clip.get_tokenizer("local-dir:assets/toyworld/clip")``; ``config.json`` is the bare model config (★3).

Captions share attributes across a batch ("A photo depicts circle" fits every circle), so plain CLIP loss would
push true pairs apart. We know every image's attributes, so the target of each row is uniform over *all*
captions consistent with the image (a multi-positive contrastive loss, as in SupCon, Khosla et al. 2020).
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
from .data import ASSETS, WORK, render_dataset, to_tensor
from .tokenizer import write_tokenizer

log = logging.getLogger("train_clip")

# --- config ---------------------------------------------------------------------------------------------
STEPS = 2000       # zero-shot accuracy on held-out renders saturates before this (see MODEL_CARD)
BATCH = 128        # many negatives per step matter for contrastive losses; 128 keeps a step ~0.5 s on one core
LR = 1e-3          # small ViT with warm-up; AdamW
WARMUP = 100
N_IMAGES = 20_000  # the same renders the diffusion model saw (seed 0); evaluation uses other seeds
SEED = 0
# Standard CLIP normalisation, so the toy model plugs into open_clip's preprocessing unchanged.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
MODEL_CFG = {
    "embed_dim": 64,
    "quick_gelu": True,  # as OpenAI's ViT-B-32, the model Kumari's evaluation uses
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": None, "width": 64, "heads": 4, "layers": 3,
                 "hf_tokenizer_name": "toyworld-tokenizer"},  # local-dir loading uses the folder's tokenizer
}
PREPROCESS_CFG = {"size": 64, "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
                  "resize_mode": "shortest"}


def caption_with_attrs(scene: world.Scene, rng: random.Random) -> tuple[str, dict[str, str]]:
    """A caption and the attributes it asserts (used to find every image it fits)."""
    r = rng.random()
    if r < 0.45:
        template = rng.choice(world.PROMPT_TEMPLATES)
        attrs = {k: getattr(scene, k) for k in ("object", "style", "color", "background", "size")
                 if "{" + k + "}" in template}
        return scene.caption(template), attrs
    if r < 0.70:
        return f"A photo depicts {scene.object}", {"object": scene.object}
    if r < 0.90:
        return f"A photo depicts {scene.style} style", {"style": scene.style}
    return f"A photo depicts {scene.color} {scene.object}", {"color": scene.color, "object": scene.object}


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, noise and small shifts: the CLIP must also judge imperfect *generated* images."""
    b = x.shape[0]
    blur = torch.rand(b, generator=gen) < 0.5
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0]) / 4
        kernel = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
        x = torch.where(blur[:, None, None, None], blurred, x)
    x = x + 0.05 * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    shift = torch.randint(-3, 4, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=shift, dims=(2, 3)).clamp(-1, 1)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> CLIP-normalised."""
    x = (x + 1) / 2
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


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


def main(argv: list[str] | None = None) -> None:
    import open_clip
    from transformers import CLIPTokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=str(ASSETS / "clip"))
    args = ap.parse_args(argv)
    steps, n_images, batch = (3, 64, 16) if args.smoke else (args.steps, N_IMAGES, BATCH)
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    gen = torch.Generator().manual_seed(SEED)

    # 1. tokenizer and data
    tok_dir = write_tokenizer(WORK / ("clip_tok_smoke" if args.smoke else "clip_tok"))
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    scenes, images = render_dataset(n_images, seed=SEED, cache=not args.smoke)
    x_all = to_tensor(images)

    # 2. model (open_clip's own CLIP class from our config)
    model_cfg = json.loads(json.dumps(MODEL_CFG))
    model_cfg["text_cfg"]["vocab_size"] = len(tokenizer)
    cfg = {k: v for k, v in model_cfg.items()}
    cfg["text_cfg"] = {k: v for k, v in cfg["text_cfg"].items() if k != "hf_tokenizer_name"}
    model = open_clip.CLIP(**cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    log.info("clip %.2fM params", sum(p.numel() for p in model.parameters()) / 1e6)

    # 3. train
    t0 = time.time()
    for step in range(1, steps + 1):
        lr = LR * min(1.0, step / WARMUP) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(x_all), (batch,), generator=gen).tolist()
        caps = [caption_with_attrs(scenes[i], rng) for i in idx]
        ids = tokenizer([c for c, _ in caps], padding="max_length", truncation=True, return_tensors="pt").input_ids
        img = normalise(augment(x_all[idx], gen))
        fi, ft, scale = model(img, ids)[:3]
        logits = scale * fi @ ft.t()
        # match[i, j]: caption j fits image i
        match = torch.tensor([[all(getattr(scenes[i], k) == v for k, v in attrs.items()) for _, attrs in caps]
                              for i in idx], dtype=torch.float32)
        loss = 0.5 * (F.cross_entropy(logits, match / match.sum(1, keepdim=True))
                      + F.cross_entropy(logits.t(), (match / match.sum(0, keepdim=True)).t()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == steps:
            log.info("step %d/%d loss %.4f lr %.2e %.0fs", step, steps, loss.item(), lr, time.time() - t0)

    # 4. save in open_clip's local-dir format
    save_clip(model.eval(), Path(args.out), tok_dir, model_cfg)
    log.info("saved %s", args.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
