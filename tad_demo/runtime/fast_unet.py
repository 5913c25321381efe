"""A bit-exact fast path for small UNets on CPU: the UNet's forward traced once per input shape.

    install(pipe.unet)      # Models does this for small UNets on CPU (see models.SMALL_UNET_PARAMS)
    uninstall(pipe.unet)    # back to diffusers' own forward

Why: a toy-world UNet forward runs ~22 ms of aten ops inside ~29 ms of wall time; the rest is Python — diffusers'
module tree (``__call__`` and hook checks per submodule, attribute lookups, an ``inspect.signature`` in every
``Attention.forward``). A TorchScript trace runs the same aten ops without that Python: 21 ms instead of 29 ms per
forward, the grid ~25% faster (bench/bench_grid.py). The trace
* is **bit-identical** to eager (same ops, same order; TorchScript's CPU fuser is off by default, and
  tests/test_grid.py checks the default cell against a plain diffusers pipeline, pixel for pixel);
* **shares the UNet's parameter tensors**, so the WeightPatcher's in-place switches are seen by it;
* covers the calls generation makes (text conditioning, optional ControlNet residuals, no grad); any other call
  (training, extra conditioning, a new dtype/device) takes diffusers' forward unchanged.

``torch.jit.trace`` is deprecated in favour of ``torch.compile``/``torch.export``, which we measured side by side:
``torch.compile(backend="eager")`` saves 5% (plus ~4 s per shape to compile) and ``torch.export``'s module 1%, so
the trace stays while it exists; if tracing fails (e.g. a future torch without it) we log once and run eager.
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

import torch

log = logging.getLogger(__name__)

# Keyword arguments the fast path accepts, with the values it accepts them at (anything else: diffusers' forward).
_NEUTRAL = {"class_labels": None, "timestep_cond": None, "attention_mask": None, "cross_attention_kwargs": None,
            "added_cond_kwargs": None, "down_intrablock_additional_residuals": None, "encoder_attention_mask": None}
MAX_GRAPHS = 16  # distinct input shapes kept (batch sizes × image sizes × with/without ControlNet); then eager


class _Forward(torch.nn.Module):
    """What gets traced: the UNet's own forward with tensors in, one tensor out."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, *residuals):
        down, mid = (tuple(residuals[:-1]), residuals[-1]) if residuals else (None, None)
        return type(self.unet).forward(self.unet, sample, timestep, encoder_hidden_states,
                                       down_block_additional_residuals=down, mid_block_additional_residual=mid,
                                       return_dict=False)[0]


class TracedForward:
    """Replaces ``unet.forward`` (an instance attribute, so hooks on the module still run)."""

    def __init__(self, unet: torch.nn.Module, max_graphs: int = MAX_GRAPHS):
        self.unet = unet
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, Any] = {}  # input signature → traced module, or None when tracing failed
        self.calls = {"traced": 0, "eager": 0}
        self._lock = threading.Lock()
        self._failed = False

    def eager(self, *args: Any, **kwargs: Any) -> Any:
        return type(self.unet).forward(self.unet, *args, **kwargs)

    def __call__(self, sample: Any, timestep: Any, encoder_hidden_states: Any = None, *args: Any,
                 **kwargs: Any) -> Any:
        down = kwargs.pop("down_block_additional_residuals", None)
        mid = kwargs.pop("mid_block_additional_residual", None)
        return_dict = kwargs.pop("return_dict", True)
        tensors = [sample, timestep, encoder_hidden_states, *(down or ()), *(() if mid is None else (mid,))]
        simple = (not args and not torch.is_grad_enabled() and not self._failed and (down is None) == (mid is None)
                  and all(k in _NEUTRAL and (v is None or v == {}) for k, v in kwargs.items())
                  and all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tensors))
        graph = self._graph(tensors) if simple else None
        if graph is None:
            self.calls["eager"] += 1
            return self.eager(sample, timestep, encoder_hidden_states, *args, down_block_additional_residuals=down,
                              mid_block_additional_residual=mid, return_dict=return_dict, **kwargs)
        self.calls["traced"] += 1
        out = graph(*tensors)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    def _graph(self, tensors: list[torch.Tensor]) -> Any:
        # The parameters' identity is part of the key: after a .to() the old trace would hold the old tensors.
        first = next(self.unet.parameters())
        key = (first.data_ptr(), first.dtype, *((tuple(t.shape), t.dtype) for t in tensors))
        with self._lock:
            if key in self.graphs:
                return self.graphs[key]
            if len(self.graphs) >= self.max_graphs:
                return None
            try:
                with warnings.catch_warnings():
                    # TracerWarnings (diffusers' shape checks become constants: hence one trace per shape) and
                    # torch's deprecation notice (see the module docstring for why the trace stays).
                    warnings.simplefilter("ignore")
                    with torch.inference_mode(False), torch.no_grad():
                        graph = torch.jit.trace(_Forward(self.unet), tuple(t.clone() for t in tensors),
                                                check_trace=False)
            except Exception as e:  # noqa: BLE001 - any failure: keep generating, eagerly
                log.warning("tracing the UNet failed (%s: %s); running it eagerly", type(e).__name__, e)
                self._failed = True
                return None
            self.graphs[key] = graph
            log.info("traced the UNet for inputs %s", [tuple(t.shape) for t in tensors])
            return graph


def install(unet: torch.nn.Module) -> TracedForward:
    """Route ``unet``'s forward through per-shape traces (idempotent)."""
    current = unet.__dict__.get("forward")
    if isinstance(current, TracedForward):
        return current
    fast = TracedForward(unet)
    unet.forward = fast
    return fast


def uninstall(unet: torch.nn.Module) -> None:
    """Back to the class's own forward."""
    if isinstance(unet.__dict__.get("forward"), TracedForward):
        del unet.forward
