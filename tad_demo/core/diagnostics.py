"""Diagnostics of task vectors for the analysis view: sizes, similarities, interference, a random baseline.

    norms({"snoopy": a, "monet": b})          # {"snoopy": 12.3, "monet": 8.1}
    cosine_matrix({"snoopy": a, "monet": b})  # (["snoopy", "monet"], [[1.0, 0.02], [0.02, 1.0]])
    per_tensor_cosine(a, b)                   # {key: cosine} over the keys both vectors change
    block_cosine(a, b)                        # {"down_blocks.1": ..., "mid_block": ..., "up_blocks.2": ...}
    count_large_angles(a, b, 75.0)            # tensors whose angle exceeds 75°
    sparsity(a), sign_agreement(a, b)
    random_like(a, seed=0)                    # same per-tensor norms, random directions

Background:
- Ilharco et al., Editing Models with Task Arithmetic (https://arxiv.org/abs/2212.04089): task vectors of
  different tasks are nearly orthogonal (global cosine ≈ 0), more similar for related tasks; the control
  baseline is a random vector with each layer's norm equal to the task vector's.
- "Multi-Concept Editing using Task Arithmetic" (anonymous submission): in high dimension global angles are all
  near 90°, so count the layers whose own angle exceeds φ_t = 75°; related concepts have fewer such layers.

Conventions: a vector's missing key is a zero delta. Global measures (``cosine_matrix``, ``norms``) use all keys;
per-tensor measures use the keys both vectors carry (an angle with an absent tensor is undefined). The cosine
of a zero tensor is 0.0 (angle 90°), as in ``TaskVector.cosine``. Results are plain Python floats/dicts/lists.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Mapping, Sequence

import torch

from .errors import TaskVectorError
from .task_vector import TaskVector

log = logging.getLogger(__name__)

__all__ = ["angle_deg", "block_cosine", "block_of", "block_order", "cosine_matrix", "count_large_angles", "group_key",
           "norms", "per_tensor_angles", "per_tensor_cosine", "random_like", "sign_agreement", "sparsity",
           "tensor_norms"]

Vectors = Sequence[TaskVector] | Mapping[str, TaskVector]


def _named(vectors: Vectors) -> tuple[list[str], list[TaskVector]]:
    """Names and vectors: a mapping keeps its keys; a list is named "τ1", "τ2", …"""
    if isinstance(vectors, Mapping):
        names, tvs = [str(k) for k in vectors], list(vectors.values())
    else:
        tvs = list(vectors)
        names = [f"τ{i + 1}" for i in range(len(tvs))]
    for name, tv in zip(names, tvs):
        if not isinstance(tv, TaskVector):
            raise TaskVectorError(f"{name} is a {type(tv).__name__}, not a TaskVector")
    return names, tvs


def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    # float64 accumulation: fp32 dot products over millions of entries lose digits the UI would show.
    x, y = x.flatten().double(), y.flatten().double()
    n = float(x.norm() * y.norm())
    return float(torch.dot(x, y)) / n if n > 0 else 0.0


def angle_deg(cosine: float) -> float:
    """The angle for a cosine, in degrees (clamped against rounding just outside [-1, 1])."""
    return math.degrees(math.acos(max(-1.0, min(1.0, cosine))))


# --- sizes ---------------------------------------------------------------------------------------------------
def norms(vectors: Vectors) -> dict[str, float]:
    """Global L2 norm of each vector, by name."""
    names, tvs = _named(vectors)
    return {n: tv.norm() for n, tv in zip(names, tvs)}


def tensor_norms(tv: TaskVector) -> dict[str, float]:
    """L2 norm of each tensor of one vector."""
    return {k: float(v.double().norm()) for k, v in tv.deltas.items()}


def sparsity(tv: TaskVector, eps: float = 0.0) -> float:
    """Fraction of entries with |value| ≤ eps (1.0 for a vector with no tensors: all of it is zero)."""
    total = tv.numel()
    if total == 0:
        return 1.0
    zeros = sum(int((v.abs() <= eps).sum()) for v in tv.deltas.values())
    return zeros / total


# --- similarities --------------------------------------------------------------------------------------------
def cosine_matrix(vectors: Vectors) -> tuple[list[str], list[list[float]]]:
    """Global cosine similarity of every pair (missing keys count as zeros): names and a symmetric matrix."""
    names, tvs = _named(vectors)
    n = len(tvs)
    m = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i, n):
            m[i][j] = m[j][i] = tvs[i].cosine(tvs[j])
    return names, m


def _shared_keys(a: TaskVector, b: TaskVector) -> list[str]:
    keys = [k for k in a.deltas if k in b.deltas]
    for k in keys:
        if a[k].shape != b[k].shape:
            raise TaskVectorError(f"key {k!r} has shapes {tuple(a[k].shape)} and {tuple(b[k].shape)}; "
                                  "the vectors come from different architectures")
    return keys


def per_tensor_cosine(a: TaskVector, b: TaskVector) -> dict[str, float]:
    """Cosine between the two vectors' deltas of each tensor both carry (in ``a``'s key order)."""
    return {k: _cos(a[k], b[k]) for k in _shared_keys(a, b)}


def per_tensor_angles(a: TaskVector, b: TaskVector) -> dict[str, float]:
    """Angle in degrees between the two vectors' deltas of each tensor both carry."""
    return {k: angle_deg(c) for k, c in per_tensor_cosine(a, b).items()}


def count_large_angles(a: TaskVector, b: TaskVector, threshold_deg: float = 75.0, level: str = "tensor") -> int:
    """Number of tensors (or layers/blocks, see ``group_key``) whose angle between a and b exceeds the threshold.

    The multi-concept paper's interference measure (φ_t = 75°): fewer large angles ↔ more related concepts.
    """
    if not 0.0 <= threshold_deg <= 180.0:
        raise TaskVectorError(f"threshold_deg={threshold_deg!r} must be in [0, 180]")
    cosines = per_tensor_cosine(a, b) if level == "tensor" else block_cosine(a, b, level=level)
    return sum(angle_deg(c) > threshold_deg for c in cosines.values())


# Block names in the UNet (diffusers and original LDM layouts) and the text encoder.
_BLOCK_RX = re.compile(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block|input_blocks\.\d+|output_blocks\.\d+|"
                       r"middle_block|encoder\.layers\.\d+)")
_PREFIXES = ("unet.", "model.diffusion_model.")  # the UNet's own prefixes carry no information for grouping
_COMPONENTS = ("text_encoder", "vae", "controlnet")  # other components keep their name (vae.down_blocks.0 ≠ UNet's)
LEVELS = ("tensor", "layer", "block")


def block_of(key: str) -> str:
    """The UNet block a key belongs to: "down_blocks.1", "mid_block", "up_blocks.2" (LDM: "input_blocks.4"…).

    Other components keep their name ("text_encoder.encoder.layers.3", "vae.down_blocks.0"); keys outside any
    block group by their first name ("conv_in", "time_embedding").
    """
    for p in _PREFIXES:
        if key.startswith(p):
            key = key[len(p):]
            break
    m = _BLOCK_RX.search(key)
    component = key.split(".", 1)[0] if key.split(".", 1)[0] in _COMPONENTS else ""
    if m:
        return f"{component}.{m.group(1)}" if component else m.group(1)
    return component or key.split(".", 1)[0]


def group_key(key: str, level: str) -> str:
    """A key's group at a level: "tensor" (the key), "layer" (the module: without .weight/.bias), "block"."""
    if level == "tensor":
        return key
    if level == "layer":
        return key.rsplit(".", 1)[0]
    if level == "block":
        return block_of(key)
    raise TaskVectorError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")


def block_order(name: str) -> tuple[int, list]:
    # UNet order (down, mid, up, then the rest) whatever order the state dict lists its modules in; numbers compare
    # as numbers (up_blocks.10 after up_blocks.2). re.split keeps str/int alternating, so the lists compare.
    rank = next((r for r, prefixes in enumerate(_UNET_ORDER) if name.startswith(prefixes)), len(_UNET_ORDER))
    return rank, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


_UNET_ORDER = (("down_blocks", "input_blocks"), ("mid_block", "middle_block"), ("up_blocks", "output_blocks"))


def block_cosine(a: TaskVector, b: TaskVector, level: str = "block") -> dict[str, float]:
    """Cosine between a and b within each group of shared keys (UNet blocks by default, see ``group_key``)."""
    groups: dict[str, list[str]] = {}
    for k in _shared_keys(a, b):
        groups.setdefault(group_key(k, level), []).append(k)
    out = {}
    for name, keys in groups.items():
        out[name] = _cos(torch.cat([a[k].flatten() for k in keys]), torch.cat([b[k].flatten() for k in keys]))
    if level == "block":
        out = {n: out[n] for n in sorted(out, key=block_order)}
    return out


def sign_agreement(a: TaskVector, b: TaskVector) -> float | None:
    """Fraction of entries with the same sign, among the entries non-zero in both (None if there are none).

    TIES' sign conflicts are the complement: 1 − agreement.
    """
    agree = both = 0
    for k in _shared_keys(a, b):
        x, y = a[k], b[k]
        nz = (x != 0) & (y != 0)
        both += int(nz.sum())
        agree += int((nz & (torch.sign(x) == torch.sign(y))).sum())
    return agree / both if both else None


# --- random baseline -----------------------------------------------------------------------------------------
def _key_seed(seed: int, key: str) -> int:
    # Stable across processes and independent of which other keys exist or their order.
    return int.from_bytes(hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8], "little") & (2**63 - 1)


def random_like(tv: TaskVector, seed: int = 0) -> TaskVector:
    """Ilharco et al.'s random-vector baseline (https://arxiv.org/abs/2212.04089, App. B.2): per tensor, a
    N(0, I) draw rescaled to the task vector's norm for that tensor. Seeded and deterministic per key."""
    out = {}
    for k, v in tv.deltas.items():
        gen = torch.Generator().manual_seed(_key_seed(seed, k))
        r = torch.randn(v.shape, generator=gen, dtype=torch.float64)
        target = v.double().norm()
        rn = r.norm()
        out[k] = (r * (target / rn) if rn > 0 else torch.zeros_like(r)).to(torch.float32)
    log.debug("random_like: %d tensors, seed %d", len(out), seed)
    return TaskVector(out)
