"""Task vectors: τ = θ_finetuned − θ_base, a small value class whose operators are the API.

    tv = TaskVector.from_pair(base, finetuned)     # paths or state dicts; sparse over changed keys
    -tv, a + b, a - b, 0.5 * tv, sum([a, b])       # algebra (sum() works: 0 + tv is tv)
    c + (b - a)                                    # analogies
    tv.apply(state_dict, scale=1.0)                # θ_base + scale·τ, fp32 math, dtype of the base kept

Sign convention for concept-ablation checkpoints (Kumari et al., TAD): with τ = θ_ablated − θ_base,
**λ = +1 ablates, λ = 0 is the base, λ = −1 enhances** ("double negation").

Keys: vectors built from files carry component-prefixed diffusers names (``unet.down_blocks.…``,
``text_encoder.text_model.…``); vectors built from plain state dicts keep the dict's keys as they are.
All values are fp32 whatever the files stored; non-float tensors (``position_ids``, int buffers) are skipped.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Union

import torch

from .checkpoints import (
    COMPONENTS,
    TASK_VECTOR_FORMAT,
    existing_path,
    is_lora_key,
    load_weights,
    read_file,
    sniff,
    to_module_keys,
)
from .errors import TaskVectorError
from .scopes import SCOPES, scope_matcher

log = logging.getLogger(__name__)

StateDict = Mapping[str, torch.Tensor]
Source = Union[str, Path, StateDict]

def _is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point()


def _check_finite(t: torch.Tensor, key: str, origin: str) -> None:
    if not torch.isfinite(t).all():
        raise TaskVectorError(f"{origin}: tensor {key!r} contains NaN or Inf; the checkpoint is corrupt")


def _load(source: Source, role: str, components: tuple[str, ...] | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict and a name for error messages."""
    if isinstance(source, Mapping):
        return dict(source), f"{role} state dict"
    return load_weights(source, components), str(source)


class TaskVector:
    """A sparse set of fp32 parameter deltas. Immutable by convention: operators return new vectors."""

    __slots__ = ("deltas",)

    def __init__(self, deltas: Mapping[str, torch.Tensor] | None = None):
        self.deltas: dict[str, torch.Tensor] = {}
        for k, v in (deltas or {}).items():
            if not isinstance(v, torch.Tensor):
                raise TaskVectorError(f"delta {k!r} is a {type(v).__name__}, not a tensor")
            if not _is_float(v):
                continue
            self.deltas[k] = v.detach().to(torch.float32).contiguous()

    # --- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_pair(cls, base: Source, finetuned: Source, *, scope: str | None = None) -> TaskVector:
        """τ = finetuned − base over the fine-tuned side's float tensors that differ from the base.

        A fine-tuned side that covers only some tensors (a Kumari file: 32 cross-attention k/v tensors) gives
        zero delta elsewhere. A key only in the fine-tuned side, or a shape mismatch, is an error. A component
        scope (``scope="unet"``) reads only that component of multi-component files and folders.
        """
        comps = (scope,) if scope in COMPONENTS else None  # a component scope: read only that component
        base_sd, base_name = _load(base, "base", comps)
        ft_sd, ft_name = _load(finetuned, "fine-tuned", comps)
        if not ft_sd:
            raise TaskVectorError(f"{ft_name}: no tensors found")
        deltas: dict[str, torch.Tensor] = {}
        for key, ft in ft_sd.items():
            if not _is_float(ft):
                continue  # position_ids and other integer buffers are not weights
            if key not in base_sd:
                near = nearest_key(key, base_sd.keys())
                raise TaskVectorError(
                    f"{ft_name}: key {key!r} is not in the base ({base_name}); the checkpoints are of different "
                    f"models or layouts{f' (closest base key: {near!r})' if near else ''}")
            b = base_sd[key]
            if b.shape != ft.shape:
                raise TaskVectorError(
                    f"{ft_name}: key {key!r} has shape {tuple(ft.shape)} but the base has {tuple(b.shape)}; "
                    "the fine-tuned model has a different architecture (e.g. cross-attention width)")
            _check_finite(ft, key, ft_name)
            _check_finite(b, key, base_name)
            d = ft.to(torch.float32) - b.to(torch.float32)
            if torch.count_nonzero(d):
                deltas[key] = d
        tv = cls(deltas)
        return tv.restrict(scope) if scope else tv

    @classmethod
    def zeros_like(cls, other: TaskVector) -> TaskVector:
        return cls({k: torch.zeros_like(v) for k, v in other.deltas.items()})

    # --- algebra ---------------------------------------------------------------------------------------
    def __neg__(self) -> TaskVector:
        return TaskVector({k: -v for k, v in self.deltas.items()})

    def __pos__(self) -> TaskVector:
        return self

    def __add__(self, other: object) -> TaskVector:
        if isinstance(other, (int, float)) and other == 0:
            return self  # so that sum([a, b]) works
        if not isinstance(other, TaskVector):
            return NotImplemented
        out = dict(self.deltas)
        for k, v in other.deltas.items():
            if k in out:
                if out[k].shape != v.shape:
                    raise TaskVectorError(f"cannot add vectors: key {k!r} has shapes {tuple(out[k].shape)} "
                                          f"and {tuple(v.shape)}")
                out[k] = out[k] + v
            else:
                out[k] = v
        return TaskVector(out)

    __radd__ = __add__

    def __sub__(self, other: object) -> TaskVector:
        if not isinstance(other, TaskVector):
            return NotImplemented
        return self + (-other)

    def __mul__(self, scalar: object) -> TaskVector:
        if isinstance(scalar, TaskVector):
            raise TaskVectorError("task vectors multiply by scalars only (use cosine() for a dot product)")
        if not isinstance(scalar, (int, float)) or isinstance(scalar, bool):
            return NotImplemented
        if not math.isfinite(scalar):
            raise TaskVectorError(f"scale {scalar!r} is not a finite number")
        return TaskVector({k: v * float(scalar) for k, v in self.deltas.items()})

    __rmul__ = __mul__

    def __truediv__(self, scalar: float) -> TaskVector:
        return self * (1.0 / scalar)

    # --- application -----------------------------------------------------------------------------------
    def apply(self, state_dict: StateDict, scale: float = 1.0) -> dict[str, torch.Tensor]:
        """θ + scale·τ as a new dict (untouched tensors are shared, not copied); fp32 math, base dtype kept.

        A vector on one component (keys ``unet.…``) also applies to that component's bare state dict
        (``unet.state_dict()``); a vector on several components needs ``tv.component(name)`` for each.
        """
        deltas = self.deltas
        missing = [k for k in deltas if k not in state_dict]
        if missing:
            deltas = self._on_bare_component(state_dict) or deltas
            missing = [k for k in deltas if k not in state_dict]
        if missing:
            hint = ""
            comps = sorted({k.split(".", 1)[0] for k in self.deltas})
            if "." in missing[0] and missing[0].split(".", 1)[1] in state_dict:
                hint = (f"; the vector's keys carry component prefixes ({', '.join(comps)}): apply "
                        f"tv.component({missing[0].split('.')[0]!r}) to that component's state dict")
            raise TaskVectorError(f"{len(missing)} vector key(s) not in the state dict, e.g. {missing[0]!r}{hint}")
        out = dict(state_dict)
        for k, d in deltas.items():
            b = state_dict[k]
            if b.shape != d.shape:
                raise TaskVectorError(f"key {k!r}: vector shape {tuple(d.shape)} vs state dict {tuple(b.shape)}")
            out[k] = (b.to(torch.float32) + scale * d).to(b.dtype)
        return out

    def _on_bare_component(self, state_dict: StateDict) -> dict[str, torch.Tensor] | None:
        """The deltas renamed to a bare component state dict's keys, when the vector is on one component only."""
        comps = {k.split(".", 1)[0] for k in self.deltas}
        if len(comps) != 1 or next(iter(comps)) not in COMPONENTS:
            return None
        renamed = to_module_keys(self.component(next(iter(comps))).deltas, state_dict.keys())
        return renamed if all(k in state_dict for k in renamed) else None

    # --- scopes ----------------------------------------------------------------------------------------
    def restrict(self, scope: str) -> TaskVector:
        """Keep keys matching a named scope (``SCOPES``) or a checked, time-bounded regular expression
        (``core/scopes.py``)."""
        matches = scope_matcher(scope)
        return TaskVector({k: v for k, v in self.deltas.items() if matches(k)})

    def component(self, name: str) -> TaskVector:
        """The part of the vector on one component, with the ``name.`` prefix removed from its keys."""
        p = name + "."
        return TaskVector({k[len(p):]: v for k, v in self.deltas.items() if k.startswith(p)})

    def with_prefix(self, name: str) -> TaskVector:
        return TaskVector({f"{name}.{k}": v for k, v in self.deltas.items()})

    # --- measures --------------------------------------------------------------------------------------
    def dot(self, other: TaskVector) -> float:
        return float(sum(torch.dot(v.flatten().double(), other.deltas[k].flatten().double())
                         for k, v in self.deltas.items() if k in other.deltas))

    def norm(self) -> float:
        return math.sqrt(sum(float(v.double().pow(2).sum()) for v in self.deltas.values()))

    def cosine(self, other: TaskVector) -> float:
        """Global cosine similarity (keys missing on one side count as zeros); 0.0 if either is zero."""
        n = self.norm() * other.norm()
        return self.dot(other) / n if n > 0 else 0.0

    def numel(self) -> int:
        return sum(v.numel() for v in self.deltas.values())

    def keys(self) -> list[str]:
        return list(self.deltas)

    def __len__(self) -> int:
        return len(self.deltas)

    def __contains__(self, key: str) -> bool:
        return key in self.deltas

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.deltas[key]

    def __repr__(self) -> str:
        return f"TaskVector({len(self)} tensors, {self.numel():,} params, norm={self.norm():.4g})"

    # --- files -----------------------------------------------------------------------------------------
    def save(self, path: str | Path, dtype: torch.dtype = torch.float32, metadata: dict | None = None) -> Path:
        """Write a safetensors file. fp16 halves the size; entries that underflow to zero are counted in a
        warning because they silently drop part of the edit."""
        from safetensors.torch import save_file

        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TaskVectorError(f"unsupported dtype {dtype}; use torch.float32, float16 or bfloat16")
        tensors = {}
        lost = 0
        for k, v in self.deltas.items():
            c = v.to(dtype)
            if dtype != torch.float32:
                lost += int(((c == 0) & (v != 0)).sum())
            tensors[k] = c.contiguous()
        if lost:
            log.warning("saving %s as %s: %d non-zero entries underflow to zero", path, dtype, lost)
        meta = {"format": TASK_VECTOR_FORMAT, "version": "1"}
        meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TaskVector:
        """Read a vector written by ``save`` (any float dtype; values become fp32).

        The file must say it is one (``format`` metadata): model weights, Kumari checkpoints and LoRA files are
        refused with the call that reads each.
        """
        p = existing_path(path)
        if p.is_file() and sniff(p) in ("zip", "pickle"):
            raise TaskVectorError(
                f"{p} is not a task vector file (vectors are safetensors written by TaskVector.save / `vector`); if "
                f"it is a checkpoint (model weights, a Kumari .ckpt or delta.bin), make a vector from it with "
                f"`python -m tad_demo vector --base BASE --finetuned {p.name} --out tau.safetensors`")
        tensors, meta = read_file(p)
        if meta.get("format") != TASK_VECTOR_FORMAT:
            fmt = f"format {meta['format']!r}" if meta.get("format") else "no format"
            what = "a LoRA" if any(is_lora_key(k) for k in tensors) else "model weights"
            raise TaskVectorError(f"{p} is {what} ({fmt} metadata; task vectors carry format "
                                  f"{TASK_VECTOR_FORMAT!r}), not a task vector; make one with `python -m tad_demo "
                                  f"vector --base BASE --finetuned {p.name} --out tau.safetensors`")
        for k, v in tensors.items():
            if v.is_floating_point():
                _check_finite(v, k, str(p))
        return cls(tensors)


def nearest_key(key: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``key`` (for "did you mean" hints in error messages), or None."""
    import difflib

    m = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return m[0] if m else None


__all__ = ["SCOPES", "Source", "StateDict", "TaskVector", "TaskVectorError", "nearest_key"]
