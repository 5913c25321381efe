"""Loaded models, one cache per process: the base pipeline (and ControlNet pipelines sharing its modules), its
weight patcher, CLIP scorers and task vectors keyed by their source.

The grid, the research views and the app all generate through one :class:`Models`, so a vector is built once
and a switch of weights is a hot patch, never a reload.
"""

from __future__ import annotations

import contextvars
import gc
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..core.checkpoints import to_module_keys, with_prefix
from ..core.errors import ModelError
from ..core.lora import load_lora
from ..core.patching import WeightPatcher, torch_threads
from ..core.recipe import VECTOR_KINDS
from ..core.task_vector import TaskVector
from .fast_unet import install as install_fast_unet
from .loading import LOADING
from .metrics import ClipScorer
from .pipelines import load_pipeline
from .sampling import PromptCache

log = logging.getLogger(__name__)

# Below this many UNet parameters a CPU forward pass is bound by Python and per-op overhead, not arithmetic: the
# toy world's UNet (6.6 M) spends ~20% of a forward in diffusers' Python, which a trace removes (fast_unet.py).
# SD-1.x (860 M) is compute-bound: diffusers' own forward.
SMALL_UNET_PARAMS = 50_000_000


def source_key(source: str) -> tuple:
    """Identity of an input: a local path with its size and mtime (a re-upload is a new input), else the id."""
    p = Path(source).expanduser()
    if p.exists():
        st = p.stat()
        return (str(p.resolve()), st.st_size, st.st_mtime_ns)
    return (source,)


class Models:
    """Loaded models for grids, one per process: the base pipeline (and ControlNet pipelines built from its
    components), its patcher, CLIP scorers, and task vectors keyed by their source.

    Switching the base loads the new one first (the old keeps serving if that fails), then frees the old
    pipeline, its ControlNet pipelines, vectors and prompt cache. Thread-safe through ``lock`` (run_grid holds it).

    ``use_safetensors=True`` (the hosted app) loads bases and ControlNets from safetensors weights only, so no
    pickle from the Hub is ever unpickled; None is diffusers' default (safetensors preferred, pickle fallback).
    """

    def __init__(self, *, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                 max_clips: int = 2, use_safetensors: bool | None = None, threads: int | None = None,
                 trace: bool | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype
        self.use_safetensors = use_safetensors
        self.threads = threads  # torch CPU threads while generating; None = torch's default
        self.trace = trace  # traced UNet forward (tad_demo.fast_unet); None = auto: small UNets on CPU
        self.lock = threading.RLock()
        self.base: str | None = None
        self.pipe = None
        self.patcher = None
        self.prompt_cache = None
        self._base_key: tuple | None = None
        self._controlnets: dict[tuple, Any] = {}
        self._cn_pipes: dict[tuple, Any] = {}
        self._clips: OrderedDict[str, Any] = OrderedDict()
        self._vectors: dict[tuple, Any] = {}
        self._max_clips = max_clips
        self.loads: Counter[str] = Counter()  # what was (re)loaded: lets tests and benches check the caching
        # Callers that generate from several threads (the app) run it all on one thread: see ``submit``.
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tad-compute")

    # --- base ------------------------------------------------------------------------------------------
    def load_base(self, base: str) -> Any:
        """The pipeline of ``base``, loading it if it is not the current one."""
        key = source_key(str(base))
        with self.lock:
            if self.pipe is not None and key == self._base_key:
                return self.pipe
            # 1. load while the old model still serves: a failure leaves everything as it was
            try:
                pipe = load_pipeline(base, dtype=self.dtype, use_safetensors=self.use_safetensors).to(self.device)
            except Exception as e:  # noqa: BLE001 - diffusers raises OSError/ValueError/EnvironmentError/HF errors
                raise ModelError(f"cannot load base model {base!r}: {_one_line(e)}"
                                f"{'; the previous model stays loaded' if self.pipe is not None else ''}") from e
            pipe.set_progress_bar_config(disable=True)
            if self.trace or (self.trace is None and self._small_on_cpu(pipe)):
                install_fast_unet(pipe.unet)  # bit-exact, ~25% faster toy-world grids (see fast_unet's docstring)
            # 2. swap, then free the old model and everything derived from it
            if self.patcher is not None:
                self.patcher.release()
            self._cn_pipes.clear()
            self._controlnets.clear()
            self._vectors.clear()
            self.pipe, self.base, self._base_key = pipe, str(base), key
            self.patcher = WeightPatcher(pipe)
            self.prompt_cache = PromptCache(pipe)  # valid while the text encoder holds the base weights
            self.loads["base"] += 1
            _free_memory()
            log.info("loaded base %s", base)
            return pipe

    # --- generating ------------------------------------------------------------------------------------
    def _small_on_cpu(self, pipe: Any) -> bool:
        """A UNet small enough to be bound by per-op overhead on this CPU device (see SMALL_UNET_PARAMS)."""
        return self.device.type == "cpu" and sum(p.numel() for p in pipe.unet.parameters()) < SMALL_UNET_PARAMS

    @contextmanager
    def computing(self) -> Iterator[None]:
        """Hold the lock and use ``threads`` torch threads, if set (what a grid or a research view runs under)."""
        with self.lock:
            with torch_threads(self.threads):
                yield

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn`` on this cache's one compute thread (with the caller's context variables, e.g. a web
        framework's progress tracker). Torch's CPU threads come from libgomp, which gives every thread that runs
        parallel work a team of its own; once the teams hold more threads than there are cores it stops
        spinning between parallel regions, and a small model's many short regions then wait on the kernel
        (``bench/bench_grid.py``: a warm toy-world grid from a second thread after the first had generated). One
        thread for all generation keeps one team."""
        ctx = contextvars.copy_context()
        return self._compute.submit(ctx.run, fn, *args, **kwargs)

    # --- ControlNet ------------------------------------------------------------------------------------
    def controlnet_pipe(self, model: str) -> Any:
        """A StableDiffusionControlNetPipeline sharing the base pipeline's modules (one patcher patches both)."""
        from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

        with self.lock:
            if self.pipe is None:
                raise ModelError("load a base model before a ControlNet")
            key = source_key(str(model))
            if key in self._cn_pipes:
                return self._cn_pipes[key]
            try:
                with LOADING:  # see loading.py
                    net = ControlNetModel.from_pretrained(str(model), torch_dtype=self.dtype,
                                                          use_safetensors=self.use_safetensors)
                net = net.to(self.device)
            except Exception as e:  # noqa: BLE001
                raise ModelError(f"cannot load ControlNet {model!r}: {_one_line(e)}") from e
            ucfg, ccfg = self.pipe.unet.config, net.config
            for f in ("cross_attention_dim", "block_out_channels", "in_channels"):
                if tuple(_as_tuple(ucfg.get(f))) != tuple(_as_tuple(ccfg.get(f))):
                    raise ModelError(f"ControlNet {model!r} does not fit base {self.base!r}: {f} is "
                                    f"{ccfg.get(f)} vs the UNet's {ucfg.get(f)}; pick a ControlNet made for this base")
            pipe = StableDiffusionControlNetPipeline(**self.pipe.components, controlnet=net,
                                                     requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            self._controlnets[key] = net
            self._cn_pipes[key] = pipe
            self.loads["controlnet"] += 1
            return pipe

    # --- CLIP ------------------------------------------------------------------------------------------
    def clip(self, spec: str) -> Any:
        """A ClipScorer (a few are kept, least recently used dropped)."""
        with self.lock:
            if spec in self._clips:
                self._clips.move_to_end(spec)
                return self._clips[spec]
            scorer = ClipScorer.load(spec)  # raises ClipUnavailable with what to download
            self._clips[spec] = scorer
            while len(self._clips) > self._max_clips:
                self._clips.popitem(last=False)
            self.loads["clip"] += 1
            return scorer

    # --- task vectors ----------------------------------------------------------------------------------
    def vector(self, source: str, kind: str = "ablation", scope: str | None = None) -> Any:
        """τ of a checkpoint against the loaded base, keyed for the patcher (cached by source, kind, scope)."""
        with self.lock:
            if self.pipe is None:
                raise ModelError("load a base model before building vectors")
            key = (source_key(str(source)), kind, scope)
            if key in self._vectors:
                return self._vectors[key]
            if not Path(str(source)).expanduser().exists():
                raise ModelError(f"checkpoint {str(source)!r} not found; give a local .safetensors/.ckpt/delta.bin "
                                "file or folder")
            if self.patcher.current:
                raise ModelError("cannot build a vector while the model is patched (another grid is running)")
            # τ against the live base weights: no second read of the base from disk (4 GB on SD).
            base_state: dict[str, torch.Tensor] = {}
            for comp in ("unet", "text_encoder"):
                base_state.update(with_prefix(comp, getattr(self.pipe, comp).state_dict()))
            if kind in ("ablation", "finetuned"):
                tv = TaskVector.from_pair(base_state, str(source))
            elif kind == "vector":
                tv = TaskVector.load(str(source))
            elif kind == "lora":
                tv = load_lora(str(source), base=base_state)
            else:
                raise ModelError(f"vector kind {kind!r} is not one of {', '.join(VECTOR_KINDS)}")
            if scope:
                tv = tv.restrict(scope)
            tv = self._live_keys(tv)
            if not len(tv):
                raise ModelError(f"{source}: does not differ from the base{' within scope ' + scope if scope else ''}"
                                "; it is not an edit of this model")
            self._vectors[key] = tv
            self.loads["vector"] += 1
            return tv

    def _live_keys(self, tv: Any) -> Any:
        """Canonical text-encoder keys (``text_model.…``) renamed to the live module's (transformers ≥ 5)."""
        if not any(k.startswith("text_encoder.") for k in tv.keys()):
            return tv
        te_keys = set(self.pipe.text_encoder.state_dict())
        out = {}
        for k, v in tv.deltas.items():
            comp, _, local = k.partition(".")
            if comp == "text_encoder":
                local = next(iter(to_module_keys({local: None}, te_keys)))
            out[f"{comp}.{local}"] = v
        return TaskVector(out)

    # --- housekeeping ----------------------------------------------------------------------------------
    def clear(self) -> None:
        """Free everything (the next grid loads again)."""
        with self.lock:
            if self.patcher is not None:
                self.patcher.release()
            self.pipe = self.patcher = self.prompt_cache = None
            self.base = self._base_key = None
            self._cn_pipes.clear()
            self._controlnets.clear()
            self._clips.clear()
            self._vectors.clear()
            _free_memory()

    def describe(self, wait: bool = True) -> dict[str, Any] | None:
        """What is loaded (for a status line in the UI); None when ``wait`` is false and a run holds the lock (a
        page load must not wait for a grid)."""
        if not self.lock.acquire(blocking=wait):
            return None
        try:
            return {"base": self.base, "device": str(self.device), "controlnets": [k[0] for k in self._cn_pipes],
                    "clip": list(self._clips), "vectors": len(self._vectors),
                    "patch_backup_mib": (self.patcher.backup_bytes / 2**20) if self.patcher else 0.0}
        finally:
            self.lock.release()


def _as_tuple(v: Any) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["SMALL_UNET_PARAMS", "ModelError", "Models", "source_key"]
