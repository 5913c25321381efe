"""Exact hot patching of a live diffusers pipeline with task vectors (after ComfyUI's ``comfy/model_patcher.py``).

    patcher = WeightPatcher(pipe)                    # or {"unet": unet, "text_encoder": te}, or a bare module
    patcher.apply([(tv_a, 1.0), (tv_b, -0.5)])       # θ = θ_base + Σ λᵢ τᵢ, in place, no reload
    patcher.register("snoopy", tv_a)
    patcher.apply({"snoopy": -1.0})                  # a new combination: computed from the backed-up base
    with patcher.patched([(tv_b, 1.0)]):             # holds the lock; the previous state comes back on exit
        pipe(...)
    patcher.restore()                                # bit-exact base (backups kept for the next switch)
    patcher.release()                                # restore and free the backups

Keys are component-prefixed parameter names (``unet.…``, ``text_encoder.…``, ``controlnet.…``): the prefix picks
the component, the rest is its ``state_dict`` name. Only components a vector covers are touched.

Arithmetic, fixed so that tests can compare bitwise::

    acc = λ₁·τ₁ + λ₂·τ₂ + …      every product rounded to fp32, summed left to right in fp32
    θ   = dtype(θ_base + acc)     one fp32 addition, then a single cast to the parameter's dtype

which is bit-identical to ``sum(λᵢ·τᵢ for …).apply(state_dict)`` (and to ``tv.apply(state_dict, λ)`` for one
vector). Terms with λ = 0 are dropped, so an all-zero combination gives exactly the base bytes.

Why chunked: a switch is memory-bound. Working through each tensor in chunks of 2 MiB with two fp32 scratch buffers
that stay in cache streams the touched bytes K + 2 times (read the backup, read K vectors, write the parameter) and
allocates nothing, where whole-tensor fp32 temporaries cost ~2K + 5 passes plus a page-faulting allocation per
tensor per switch. Backups (a clone of the original bytes, in the parameter's dtype) exist only for touched tensors.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import nn

from .errors import PatchError
from .task_vector import TaskVector, nearest_key

log = logging.getLogger(__name__)

Deltas = Mapping[str, torch.Tensor]
VectorLike = Union[TaskVector, Deltas, str]
# (vector, λ) or (name, vector, λ); a vector may be a registered name. A Mapping {name: λ} is also accepted.
Term = Union[tuple[VectorLike, float], tuple[str, VectorLike, float]]
Combination = Union[Sequence[Term], Mapping[str, float]]

# Elements per chunk: 2 fp32 scratch buffers × 2 MiB stay in cache on CPU (256K–512K measured best on a 1 MiB-L2
# EPYC: smaller chunks pay per-op overhead, larger ones spill); a GPU wants fewer, larger kernel launches.
CPU_CHUNK = 1 << 19
CUDA_CHUNK = 1 << 24


@dataclass
class _Slot:
    """One touched tensor: where it lives and its original bytes."""

    key: str
    module: nn.Module          # the submodule that owns the tensor
    attr: str                  # its attribute name there
    backup: torch.Tensor       # clone of the base bytes (parameter dtype)
    ptr: int                   # data_ptr of the live tensor when last synced: a change means it was replaced
    dirty: bool = False        # live bytes differ from the backup

    def tensor(self) -> torch.Tensor:
        return getattr(self.module, self.attr)


@dataclass(frozen=True)
class _Resolved:
    name: str
    deltas: Deltas
    scale: float


class WeightPatcher:
    """Applies weighted sums of task vectors to a live model in place; exact restore; thread-safe (one RLock)."""

    def __init__(self, target: Any, *, backup_device: torch.device | str | None = None,
                 chunk_numel: int | None = None, num_threads: int | None = 1, name: str = "unet"):
        """``target``: a diffusers pipeline (its ``nn.Module`` components), a ``{name: module}`` mapping, or a bare
        module registered as ``name``. ``backup_device``: where base copies live (default: with the parameter;
        ``"cpu"`` saves accelerator memory at the cost of slower switches). ``num_threads``: torch CPU threads
        during a switch (None: leave torch's setting; process-wide while the switch runs). One thread streams at
        memory bandwidth here, while every multi-threaded op on a small chunk pays an OpenMP barrier: on a 2-core
        machine with another busy process that made a 1 MB copy 150× slower (8 ms instead of 54 µs)."""
        if isinstance(target, nn.Module):
            components = {name: target}
        elif isinstance(target, Mapping):
            components = dict(target)
        elif hasattr(target, "components") and isinstance(target.components, Mapping):
            components = {k: v for k, v in target.components.items() if isinstance(v, nn.Module)}
        else:
            raise PatchError(f"cannot patch a {type(target).__name__}: pass a pipeline, a module or a "
                             "{component name: module} mapping")
        for k, v in components.items():
            if not isinstance(v, nn.Module):
                raise PatchError(f"component {k!r} is a {type(v).__name__}, not a torch module")
            if "." in k:
                raise PatchError(f"component name {k!r} must not contain '.' (it is the key prefix)")
        if not components:
            raise PatchError("nothing to patch: the target has no torch module components")
        self._components: dict[str, nn.Module] = components
        self._backup_device = torch.device(backup_device) if backup_device is not None else None
        self._chunk_numel = chunk_numel
        self._num_threads = num_threads
        self._lock = threading.RLock()
        self._slots: dict[str, _Slot] = {}
        self._current: tuple[_Resolved, ...] = ()
        self._vectors: dict[str, Deltas] = {}
        self._scratch: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    # --- public API --------------------------------------------------------------------------------------
    @property
    def lock(self) -> threading.RLock:
        """Hold this while running inference from several threads, or use ``patched()`` which holds it."""
        return self._lock

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(self._components)

    @property
    def current(self) -> list[tuple[str, float]]:
        """The applied combination as (name, λ) pairs, in the order given; [] means the base weights."""
        with self._lock:
            return [(r.name, r.scale) for r in self._current]

    @property
    def backup_bytes(self) -> int:
        """Bytes held by backups of touched tensors: the resident cost, besides 4 MiB of scratch per device."""
        with self._lock:
            return sum(s.backup.numel() * s.backup.element_size() for s in self._slots.values())

    @property
    def backed_up_keys(self) -> list[str]:
        with self._lock:
            return list(self._slots)

    def register(self, name: str, vector: TaskVector | Deltas) -> None:
        """Name a vector so that combinations (and ``current``) can refer to it by name."""
        with self._lock:
            self._vectors[name] = _deltas_of(vector)

    def apply(self, combination: Combination) -> None:
        """Set the weights to θ_base + Σ λᵢ τᵢ. Everything is validated before anything is written; an empty
        combination restores the base. Re-applying starts from the backups, never from the patched weights."""
        with self._lock:
            terms = self._resolve_terms(combination)
            if _same(terms, self._current):
                return
            self._apply_resolved(terms)

    def restore(self) -> None:
        """Bring back the exact base bytes of every tensor touched so far; backups are kept for later switches."""
        with self._lock:
            self._apply_resolved(())

    def release(self) -> None:
        """Restore and free all backups (e.g. before changing the base weights outside the patcher)."""
        with self._lock:
            self.restore()
            self._slots.clear()
            self._scratch.clear()

    @contextmanager
    def patched(self, combination: Combination) -> Iterator[WeightPatcher]:
        """Apply ``combination`` for the duration of the block, holding the lock; on exit (also on an exception)
        the weights go back to the combination that was applied before entering."""
        with self._lock:
            previous = self._current
            self.apply(combination)
            try:
                yield self
            finally:
                self._apply_resolved(previous)

    # --- resolution and validation (no writes) ----------------------------------------------------------
    def _resolve_terms(self, combination: Combination) -> tuple[_Resolved, ...]:
        if isinstance(combination, Mapping):
            combination = [(k, v) for k, v in combination.items()]
        out = []
        for i, term in enumerate(combination):
            if not isinstance(term, (tuple, list)) or len(term) not in (2, 3):
                raise PatchError(f"term {i}: expected (vector, λ) or (name, vector, λ), got {term!r:.80}")
            if len(term) == 3:
                name, vec, scale = term
            else:
                vec, scale = term
                name = vec if isinstance(vec, str) else f"#{i}"
            if isinstance(vec, str):
                if vec not in self._vectors:
                    known = ", ".join(self._vectors) or "none"
                    raise PatchError(f"term {i}: no vector registered as {vec!r} (registered: {known})")
                deltas = self._vectors[vec]
            else:
                deltas = _deltas_of(vec)
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
                raise PatchError(f"term {i} ({name}): λ must be a finite number, got {scale!r}")
            out.append(_Resolved(str(name), deltas, float(scale)))
        return tuple(out)

    def _locate(self, key: str, vector_name: str) -> tuple[nn.Module, str, torch.Tensor]:
        comp_name, _, local = key.partition(".")
        comp = self._components.get(comp_name)
        if comp is None or not local:
            raise PatchError(
                f"{vector_name}: key {key!r} names no component of this patcher ({', '.join(self._components)}); "
                "vectors built from a bare state dict need tv.with_prefix('unet'); nothing was changed")
        owner_path, _, attr = local.rpartition(".")
        try:
            owner = comp.get_submodule(owner_path) if owner_path else comp
        except AttributeError:
            owner = None
        t = getattr(owner, attr, None) if owner is not None else None
        if not isinstance(t, torch.Tensor):
            near = nearest_key(local, comp.state_dict().keys())
            hint = f" (closest: {comp_name}.{near})" if near else ""
            raise PatchError(f"{vector_name}: key {key!r} not found in {comp_name}{hint}; nothing was changed")
        return owner, attr, t

    def _plan(self, terms: tuple[_Resolved, ...]) -> dict[str, list[tuple[torch.Tensor, float]]]:
        """key → [(delta, λ)] for every non-zero term, after checking keys, shapes and dtypes."""
        plan: dict[str, list[tuple[torch.Tensor, float]]] = {}
        seen_ptr: dict[tuple[int, int], str] = {}
        for term in terms:
            for key, delta in term.deltas.items():
                slot = self._slots.get(key)
                t = slot.tensor() if slot is not None else self._locate(key, term.name)[2]
                if tuple(delta.shape) != tuple(t.shape):
                    raise PatchError(f"{term.name}: key {key!r} has shape {tuple(delta.shape)} but the model's is "
                                     f"{tuple(t.shape)}; nothing was changed")
                if not delta.is_floating_point() or not t.is_floating_point():
                    raise PatchError(f"{term.name}: key {key!r} is not a floating-point tensor "
                                     f"({delta.dtype} delta, {t.dtype} weight); nothing was changed")
                if t.is_meta:
                    raise PatchError(f"key {key!r} is on the meta device (sequential offload?); load the weights "
                                     "before patching")
                if key not in plan:
                    # Tied weights: two names for one tensor would be patched twice and backed up inconsistently.
                    ident = (t.untyped_storage().data_ptr(), t.storage_offset())
                    other = seen_ptr.setdefault(ident, key)
                    if other != key:
                        raise PatchError(f"keys {other!r} and {key!r} are the same tensor (tied weights); put the "
                                         "delta on one name only; nothing was changed")
                    plan[key] = []
                if term.scale != 0.0:
                    plan[key].append((delta, term.scale))
        return {k: v for k, v in plan.items() if v}

    # --- writing -----------------------------------------------------------------------------------------
    def _sync(self, slot: _Slot) -> torch.Tensor:
        """The live tensor; if it was replaced outside the patcher (``.to()``, ``load_state_dict``) adapt the
        backup: a cast/move converts the base copy, new values of the same dtype/device become the new base."""
        t = slot.tensor()
        if t.data_ptr() == slot.ptr:
            return t
        if t.dtype == slot.backup.dtype and t.device == slot.backup.device and t.shape == slot.backup.shape:
            log.warning("%s was replaced outside the patcher; taking its current values as the new base", slot.key)
            slot.backup = self._clone(t)
            slot.dirty = False
        else:
            log.info("%s moved to %s/%s; converting its backup", slot.key, t.device, t.dtype)
            slot.backup = slot.backup.to(device=self._backup_device or t.device, dtype=t.dtype, copy=True)
            slot.dirty = True  # the moved tensor holds whatever was live (maybe patched): rewrite it
        slot.ptr = t.data_ptr()
        return t

    def _clone(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device=self._backup_device or t.device, copy=True)

    def _apply_resolved(self, terms: tuple[_Resolved, ...]) -> None:
        plan = self._plan(terms)
        # Back up newly touched tensors first: an allocation failure here leaves the weights as they were.
        for key in plan:
            if key not in self._slots:
                owner, attr, t = self._locate(key, "")
                self._slots[key] = _Slot(key, owner, attr, self._clone(t), t.data_ptr())
        try:
            with torch.no_grad(), torch_threads(self._num_threads):
                for key, slot in self._slots.items():
                    t = self._sync(slot)
                    if key in plan:
                        self._write(t.detach(), slot.backup, plan[key])
                        slot.dirty = True
                    elif slot.dirty:
                        t.detach().copy_(slot.backup)
                        slot.dirty = False
        except BaseException:
            # Never leave a half-patched model (e.g. KeyboardInterrupt mid-switch): go back to the base.
            with torch.no_grad():
                for slot in self._slots.values():
                    if slot.dirty or slot.key in plan:
                        slot.tensor().detach().copy_(slot.backup)
                        slot.dirty = False
            self._current = ()
            raise
        self._current = terms

    def _buffers(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        bufs = self._scratch.get(device)
        if bufs is None:
            n = self._chunk_numel or (CUDA_CHUNK if device.type == "cuda" else CPU_CHUNK)
            bufs = (torch.empty(n, dtype=torch.float32, device=device),
                    torch.empty(n, dtype=torch.float32, device=device))
            self._scratch[device] = bufs
        return bufs

    def _write(self, dst: torch.Tensor, base: torch.Tensor, terms: list[tuple[torch.Tensor, float]]) -> None:
        """dst ← dtype(base + Σ λ·d) chunk by chunk: acc = λ₁d₁ (+ λᵢdᵢ, each product rounded), θ = base + acc."""
        if not dst.is_contiguous():
            # e.g. channels_last convolution weights: no flat view, so pay for one whole-tensor temporary
            acc = _accumulate([(d.to(device=dst.device), s) for d, s in terms])
            dst.copy_(acc.add_(base.to(device=dst.device, dtype=torch.float32)))
            return
        acc_buf, tmp_buf = self._buffers(dst.device)
        flat = dst.view(-1)
        src = base.reshape(-1)
        ds = [(d.reshape(-1), s) for d, s in terms]
        n, step = flat.numel(), acc_buf.numel()
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            acc, tmp = acc_buf[: hi - lo], tmp_buf[: hi - lo]
            for i, (d, s) in enumerate(ds):
                out = acc if i == 0 else tmp
                dc = d[lo:hi]
                if dc.dtype == torch.float32 and dc.device == out.device:
                    torch.mul(dc, s, out=out)
                else:  # fp16/bf16 storage or another device: upcast first, then scale in fp32
                    out.copy_(dc).mul_(s)
                if i:
                    acc.add_(tmp)
            bc, pc = src[lo:hi], flat[lo:hi]
            if pc.dtype == torch.float32 and bc.dtype == torch.float32 and bc.device == pc.device:
                torch.add(bc, acc, out=pc)
            else:  # one fp32 addition, one cast on the way out
                tmp.copy_(bc)
                acc.add_(tmp)
                pc.copy_(acc)

    def __repr__(self) -> str:
        return (f"WeightPatcher(components={list(self._components)}, current={self.current}, "
                f"backups={len(self._slots)} tensors/{self.backup_bytes / 2**20:.1f} MiB)")


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op threads (cheap: ~0.1 µs; the OpenMP pool is kept)."""
    prev = torch.get_num_threads()
    if n is None or n == prev:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _deltas_of(vector: TaskVector | Deltas) -> Deltas:
    if isinstance(vector, TaskVector):
        return vector.deltas
    if isinstance(vector, Mapping):
        return vector
    raise PatchError(f"expected a TaskVector or a {{key: tensor}} mapping, got {type(vector).__name__}")


def _accumulate(terms: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    acc = terms[0][0].to(torch.float32) * terms[0][1]
    for d, s in terms[1:]:
        acc.add_(d.to(torch.float32) * s)
    return acc


def _same(a: tuple[_Resolved, ...], b: tuple[_Resolved, ...]) -> bool:
    """Same vectors (by identity: vectors are immutable by convention) with the same λ, in the same order."""
    return len(a) == len(b) and all(x.deltas is y.deltas and x.scale == y.scale and x.name == y.name
                                    for x, y in zip(a, b))
