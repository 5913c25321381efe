"""Concept ablation by Kumari et al. (arXiv:2303.13516), "model-based" variant, on a diffusers UNet.

Objective: on latents x_t of *anchor* images, make the fine-tuned model's noise prediction for the *target*
prompt match the frozen base model's prediction for the *anchor* prompt:

    L_ablate = || ε_θ(x_t, c_target, t) − sg(ε_base(x_t, c_anchor, t)) ||²

Only the UNet's cross-attention key/value projections are trained by default (Kumari's "kv" mode, the
released checkpoints' choice). ``W_k``/``W_v`` act on every text token, so an optional *preservation* term
keeps the model's prediction for other prompts where the base had it:

    L_keep = || ε_θ(x'_t, c', t) − sg(ε_base(x'_t, c', t)) ||²        on other concepts' latents and prompts

(Kumari et al. regularise with the anchor prompt only; we use it when a world has concepts to preserve —
measured necessary on the toy world, see its MODEL_CARD.)

The result is the fine-tuned weights of the trained tensors only: exactly what Kumari's released files hold,
and what ``TaskVector.from_pair(base, file)`` turns into τ = θ_ablated − θ_base (λ = +1 ablates).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PARAM_MODES = {
    "kv": r"attn2\.to_[kv]\.weight$",          # Kumari's default: cross-attention key/value
    "crossattn": r"attn2\.",                    # all cross-attention weights
    "full": r".",                               # the whole UNet (rarely needed; big files)
}


@dataclass
class AblationBatch:
    """One optimisation step's inputs: anchor latents with (target, anchor) prompts, plus optional keep data."""

    latents: torch.Tensor               # B×C×h×w, already × scaling_factor
    target_prompts: list[str]
    anchor_prompts: list[str]
    keep_latents: torch.Tensor | None = None
    keep_prompts: list[str] | None = None


def trainable_names(unet: torch.nn.Module, mode: str = "kv") -> list[str]:
    if mode not in PARAM_MODES:
        raise ValueError(f"unknown parameter mode {mode!r}; choose one of {', '.join(PARAM_MODES)}")
    rx = re.compile(PARAM_MODES[mode])
    names = [n for n, _ in unet.named_parameters() if rx.search(n)]
    if not names:
        raise ValueError(f"the UNet has no parameters matching mode {mode!r} ({PARAM_MODES[mode]})")
    return names


def ablate(
    unet: torch.nn.Module,
    encode_prompts: Callable[[list[str]], torch.Tensor],
    noise_scheduler,
    next_batch: Callable[[int], AblationBatch],
    *,
    steps: int = 400,
    lr: float = 1e-3,
    mode: str = "kv",
    keep_weight: float = 1.0,
    seed: int = 0,
    log_every: int = 50,
) -> dict[str, torch.Tensor]:
    """Fine-tune a copy of ``unet`` with Kumari's objective; returns {param name: fine-tuned weight}.

    ``encode_prompts`` maps prompts to text-encoder hidden states (frozen); ``next_batch(step)`` yields data.
    The input ``unet`` is not modified.
    """
    torch.manual_seed(seed)
    base = unet.eval().requires_grad_(False)
    model = copy.deepcopy(unet).train()
    names = set(trainable_names(model, mode))
    params = []
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
        if n in names:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    t0 = time.time()
    n_train = noise_scheduler.config.num_train_timesteps
    for step in range(steps):
        for g in opt.param_groups:  # cosine decay: the last steps refine instead of jumping around
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        b = next_batch(step)
        with torch.no_grad():
            cond = encode_prompts(b.target_prompts + b.anchor_prompts + (b.keep_prompts or []))
        n = len(b.target_prompts)
        x0 = b.latents
        noise = torch.randn_like(x0)
        t = torch.randint(0, n_train, (n,), device=x0.device)  # CPU: the same draws as without device=
        xt = noise_scheduler.add_noise(x0, noise, t)
        with torch.no_grad():
            teacher = base(xt, t, cond[n:2 * n]).sample
        loss = (model(xt, t, cond[:n]).sample - teacher).pow(2).mean()
        loss_keep = torch.zeros(())
        if b.keep_prompts and keep_weight > 0:
            k = len(b.keep_prompts)
            xk0 = b.keep_latents
            tk = torch.randint(0, n_train, (k,), device=xk0.device)
            xkt = noise_scheduler.add_noise(xk0, torch.randn_like(xk0), tk)
            ck = cond[2 * n:]
            with torch.no_grad():
                teacher_k = base(xkt, tk, ck).sample
            loss_keep = (model(xkt, tk, ck).sample - teacher_k).pow(2).mean()
        total = loss + keep_weight * loss_keep
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            log.info("ablate step %d/%d loss %.5f keep %.5f %.0fs", step + 1, steps, loss.item(), loss_keep.item(),
                     time.time() - t0)
    state = model.state_dict()
    return {n: state[n].detach().clone().contiguous() for n in sorted(names)}


# --- shared by the toy trainer (toyworld/train_ablations.py) and `python -m tad_demo ablate` -------------------

def prompt_encoder(pipe) -> Callable[[list[str]], torch.Tensor]:
    """Prompts → the frozen text encoder's hidden states (what the UNet's cross-attention reads)."""
    def encode(prompts: list[str]) -> torch.Tensor:
        ids = pipe.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt").input_ids
        return pipe.text_encoder(ids.to(pipe.text_encoder.device))[0]

    return encode


def paired_batches(latents: torch.Tensor, target_prompts: list[str], anchor_prompts: list[str], batch: int,
                   seed: int = 0, keep_latents: torch.Tensor | None = None,
                   keep_prompts: list[str] | None = None) -> Callable[[int], AblationBatch]:
    """A ``next_batch(step)`` drawing ``batch`` fixed (anchor latent, target prompt, anchor prompt) triples per
    step, plus as many (latent, prompt) preservation pairs when ``keep_*`` are given (seeded, reproducible)."""
    if not (len(latents) == len(target_prompts) == len(anchor_prompts)) or not len(latents):
        raise ValueError(f"paired_batches: {len(latents)} latents, {len(target_prompts)} target and "
                         f"{len(anchor_prompts)} anchor prompts; give the same non-zero number of each")
    g = torch.Generator().manual_seed(seed)

    def next_batch(step: int) -> AblationBatch:
        idx = torch.randint(0, len(latents), (batch,), generator=g).tolist()
        b = AblationBatch(latents=latents[idx], target_prompts=[target_prompts[i] for i in idx],
                          anchor_prompts=[anchor_prompts[i] for i in idx])
        if keep_prompts:
            kidx = torch.randint(0, len(keep_prompts), (batch,), generator=g).tolist()
            b.keep_latents, b.keep_prompts = keep_latents[kidx], [keep_prompts[i] for i in kidx]
        return b

    return next_batch


def save_weights(weights: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, object]) -> None:
    """Write the fine-tuned weights (bare diffusers UNet names, fp32, CPU) with string metadata; atomic: a crash
    never leaves a half-written checkpoint under the final name."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().float().cpu().contiguous() for k, v in weights.items()}, str(tmp),
              metadata={k: str(v) for k, v in metadata.items()})
    os.replace(tmp, path)
