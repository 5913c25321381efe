"""The traced UNet forward: bit-identical to diffusers' forward, follows hot-patched weights, steps aside for
calls it does not cover. (End to end: tests/test_grid.py's default cell equals a plain pipeline's image.)"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_controlnet, tiny_unet

from tad_demo.core.patching import WeightPatcher
from tad_demo.runtime.fast_unet import TracedForward, install, uninstall


@pytest.fixture()
def unet():
    return tiny_unet().eval()


def _inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, 32, 32, generator=g), torch.tensor(501),
            torch.randn(batch, 7, 32, generator=g))


def _eager(unet, x, t, e, **kw):
    return type(unet).forward(unet, x, t, encoder_hidden_states=e, return_dict=False, **kw)[0]


def test_traced_equals_eager_bit_for_bit_and_follows_patched_weights(unet):
    x, t, e = _inputs()
    fast = install(unet)
    with torch.inference_mode():
        want = _eager(unet, x, t, e)
        for _ in range(3):  # the first call traces; later calls run the graph (TorchScript may re-optimize it)
            assert torch.equal(unet(x, t, encoder_hidden_states=e, return_dict=False)[0], want)
        assert torch.equal(unet(x, t, encoder_hidden_states=e).sample, want)  # return_dict=True too
    assert fast.calls == {"traced": 4, "eager": 0} and len(fast.graphs) == 1

    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    delta = torch.randn_like(unet.state_dict()[key])
    patcher = WeightPatcher(unet)
    with patcher.patched([("tau", {f"unet.{key}": delta}, -2.0)]), torch.inference_mode():
        patched = unet(x, t, encoder_hidden_states=e, return_dict=False)[0]
        assert torch.equal(patched, _eager(unet, x, t, e)) and not torch.equal(patched, want)
    with torch.inference_mode():
        assert torch.equal(unet(x, t, encoder_hidden_states=e, return_dict=False)[0], want)  # restored


def test_controlnet_residuals_are_traced_too(unet):
    x, t, e = _inputs()
    cond = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        down, mid = tiny_controlnet()(x, t, encoder_hidden_states=e, controlnet_cond=cond, return_dict=False)
        want = _eager(unet, x, t, e, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        fast = install(unet)
        got = unet(x, t, encoder_hidden_states=e, down_block_additional_residuals=down,
                   mid_block_additional_residual=mid, return_dict=False)[0]
    assert torch.equal(got, want) and fast.calls["traced"] == 1


def test_shapes_get_their_own_trace_and_other_calls_run_eagerly(unet):
    fast = install(unet)
    assert install(unet) is fast, "idempotent"
    with torch.inference_mode():
        for batch in (1, 2, 1):
            x, t, e = _inputs(batch)
            assert torch.equal(unet(x, t, encoder_hidden_states=e, return_dict=False)[0], _eager(unet, x, t, e))
        assert len(fast.graphs) == 2
        x, t, e = _inputs()
        unet(x, t, encoder_hidden_states=e, cross_attention_kwargs={"scale": 0.5})  # not covered: eager
        unet(x, 10.0, encoder_hidden_states=e)  # a Python-number timestep: eager
    x, t, e = _inputs()
    out = unet(x, t, encoder_hidden_states=e).sample  # grad enabled (training): eager, and differentiable
    assert out.requires_grad
    assert fast.calls == {"traced": 3, "eager": 3}
    uninstall(unet)
    assert "forward" not in unet.__dict__ and not isinstance(unet.forward, TracedForward)


def test_a_failed_trace_falls_back_to_eager(unet, monkeypatch, caplog):
    def broken(*_a, **_k):
        raise RuntimeError("no tracer in this torch")

    monkeypatch.setattr(torch.jit, "trace", broken)
    fast = install(unet)
    x, t, e = _inputs()
    with torch.inference_mode():
        assert torch.equal(unet(x, t, encoder_hidden_states=e, return_dict=False)[0], _eager(unet, x, t, e))
        unet(x, t, encoder_hidden_states=e)
    assert fast.calls == {"traced": 0, "eager": 2}
    assert "tracing the UNet failed (RuntimeError: no tracer in this torch); running it eagerly" in caplog.text
