"""Batched, reproducible sampling with a diffusers SD pipeline.

Each image depends only on its own seed (its initial latents come from a generator seeded with it), never on
the batch it was generated in; each distinct prompt is encoded once. The grid, the evaluation and the sweeps
all sample through here, so "same seed ⇒ same image" holds across all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from PIL import Image

log = logging.getLogger(__name__)


def initial_latents(pipe, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    """N×C×h×w Gaussian latents, row i drawn from ``torch.Generator().manual_seed(seeds[i])``."""
    c = pipe.unet.config.in_channels
    shape = (1, c, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    return torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float32)
                      for s in seeds]).to(device=pipe.unet.device, dtype=pipe.unet.dtype)


class PromptCache:
    """Text-encoder outputs per prompt for one pipeline (weights of the text encoder must not change)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if todo:
            tok = self.pipe.tokenizer(todo, padding="max_length", max_length=self.pipe.tokenizer.model_max_length,
                                      truncation=True, return_tensors="pt")
            emb = self.pipe.text_encoder(tok.input_ids.to(self.pipe.text_encoder.device))[0]
            self._cache.update(zip(todo, emb))
        return torch.stack([self._cache[p] for p in prompts])

    def clear(self) -> None:
        self._cache.clear()


@torch.no_grad()
def sample(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int = 20,
    guidance: float = 5.0,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 32,
    prompt_cache: PromptCache | None = None,
    prompt_embeds: torch.Tensor | None = None,
    callback: Callable[[int, int, int], None] | None = None,
    **pipe_kwargs,
) -> list[Image.Image]:
    """Images for (prompt, seed) pairs, in order. ``prompt_embeds``: a conditioning per prompt to use instead of
    the prompts' own encoding (e.g. a point between two prompts'). ``callback(batch_index, step, total_steps)``
    after each step (raise from it to cancel). Extra kwargs go to the pipeline call (e.g. ``image=`` for
    ControlNet)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if prompt_embeds is not None and len(prompt_embeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(prompt_embeds)} prompt embeddings")
    height = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    cache = prompt_cache or PromptCache(pipe)
    uncond = cache([""])
    images: list[Image.Image] = []
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        p, s = prompts[start:start + batch_size], seeds[start:start + batch_size]
        step_cb = None
        if callback is not None:
            def step_cb(_pipe, i, _t, kw, b=b):
                callback(b, i + 1, steps)
                return kw
        extra = {k: (v[start:start + batch_size] if isinstance(v, list) and len(v) == len(prompts) else v)
                 for k, v in pipe_kwargs.items()}
        cond = cache(p) if prompt_embeds is None else prompt_embeds[start:start + batch_size]
        out = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond.expand(len(p), -1, -1),
                   latents=initial_latents(pipe, s, height, width), num_inference_steps=steps,
                   guidance_scale=guidance, height=height, width=width, callback_on_step_end=step_cb, **extra)
        images.extend(out.images)
    return images
