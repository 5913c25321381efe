"""Shared fixtures: tiny SD-architecture components written to disk (diffusers' own test configs)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=1)


def tiny_controlnet(seed: int = 0):
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    return ControlNetModel(
        block_out_channels=(4, 8), layers_per_block=2, in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), cross_attention_dim=32,
        conditioning_embedding_out_channels=(16, 32), norm_num_groups=1)


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)


def tiny_text_encoder(seed: int = 0, vocab_size: int = 1000):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=5, pad_token_id=1, vocab_size=vocab_size))


def build_tiny_pipeline(out: Path, seed: int = 0) -> Path:
    """A complete StableDiffusionPipeline folder with tiny random components and the toy-world tokenizer."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from tad_demo.toyworld.tokenizer import write_tokenizer

    tok = CLIPTokenizer.from_pretrained(write_tokenizer(out.parent / (out.name + "_tok")))
    pipe = StableDiffusionPipeline(
        unet=tiny_unet(seed), vae=tiny_vae(seed), text_encoder=tiny_text_encoder(seed), tokenizer=tok,
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny
    models are op-overhead bound, and one thread avoids OpenMP barriers on a shared 2-core machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A tiny SD pipeline on disk (diffusers layout)."""
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipe")


@pytest.fixture()
def kv_keys() -> list[str]:
    """The tiny UNet's cross-attention k/v weight names (what Kumari checkpoints cover)."""
    return [k for k in tiny_unet().state_dict() if "attn2.to_k" in k or "attn2.to_v" in k]


def perturbed(state: dict[str, torch.Tensor], keys: list[str], seed: int, scale: float = 0.05) -> dict:
    """A copy of ``state`` with seeded noise added to ``keys`` (a fake fine-tune)."""
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    for k in keys:
        out[k] = state[k] + scale * torch.randn(state[k].shape, generator=g, dtype=state[k].dtype)
    return out
