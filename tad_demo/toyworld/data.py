"""Datasets of rendered scenes for the trainers (rendered once, cached as .npz)."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import world

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "assets" / "toyworld"
WORK = REPO / ".cache" / "toyworld"  # training checkpoints and cached datasets (not committed)


def render_dataset(n: int, seed: int, size: int = 64, cache: bool = True,
                   strength: tuple[float, float] = world.BASE_STRENGTH, generic: float = 0.0, **fixed):
    """``n`` seeded scenes and their images (uint8, N×H×W×3). Cached under ``.cache/toyworld``.

    ``strength``: the range of target strengths (``world.BASE_STRENGTH`` for the diffusion model's data,
    ``world.FULL_STRENGTH`` for the CLIP's and the VAE's); ``generic``: the share drawn at strength 0
    (``world.sample_scene``)."""
    tag = "_".join(f"{k}-{v}" for k, v in sorted(fixed.items()))
    lo, hi = strength
    mix = f"_g{generic:g}" if generic else ""
    name = f"scenes_{_digest(world.__file__)}_n{n}_s{seed}_{size}_st{lo:g}-{hi:g}{mix}{'_' + tag if tag else ''}"
    path = WORK / f"{name}.npz"
    rng = random.Random(seed)
    scenes = [world.sample_scene(rng, strength, generic, **fixed) for _ in range(n)]
    if cache and path.exists():
        return scenes, np.load(path)["images"]
    log.info("rendering %d scenes (seed %d) ...", n, seed)
    images = np.stack([np.asarray(world.render(s, size)) for s in scenes])
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, images=images)
    return scenes, images


def _sha256(*files: str | Path) -> str:
    """SHA-256 (hex) of the files' bytes, one after another, read in 1 MiB chunks."""
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _digest(*sources: str | Path) -> str:
    return _sha256(*sources)[:10]


def checkpoint(name: str, trainer: str | Path, **settings: object) -> Path:
    """Where a trainer's resume checkpoint lives, named after the sources that hold its settings (the world and
    the trainer) and the run's command-line settings (``steps=…``, a starting folder): a rerun after a change to
    any of them starts afresh instead of resuming a run made with the old ones — a 1 000-step run must not
    continue a finished 500-step run's weights and schedule. (The rendered datasets are named after the world's
    source the same way.)"""
    tag = _digest(world.__file__, trainer)
    if settings:
        tag += "_" + hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return WORK / f"{name}_{tag}.pt"


def base_dataset(n: int, seed: int, cache: bool = True, **fixed):
    """Scenes of the base model's final distribution — its tuning phase: ``world.TUNE_STRENGTH`` with a
    ``world.GENERIC_SHARE`` of bare anchors under a target's name — as ``render_dataset`` returns them. The
    ablations and ControlNets train on it, since it is what the finished base renders."""
    return render_dataset(n, seed, cache=cache, strength=world.TUNE_STRENGTH, generic=world.GENERIC_SHARE, **fixed)


def base_fingerprint(base: str | Path) -> str:
    """SHA-256 of a base pipeline's UNet weights: what an ablation or ControlNet was trained against (a stage
    resumes only over outputs made from the same base)."""
    return _sha256(Path(base) / "unet" / "diffusion_pytorch_model.safetensors")


def random_caption(scene: world.Scene, rng: random.Random) -> str:
    """A caption of the scene from a random template (attributes left out some of the time)."""
    return scene.caption(rng.choice(world.PROMPT_TEMPLATES))


def scene_dicts(scenes: list[world.Scene]) -> list[dict]:
    return [asdict(s) for s in scenes]


def to_tensor(images: np.ndarray):
    """uint8 N×H×W×3 -> float tensor N×3×H×W in [-1, 1] (the VAE's input range)."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
