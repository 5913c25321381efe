"""A tiny toy world on disk for the app tests (a world folder with tiny random components).

    root = build_tiny_world(tmp / "world")   # base/, ablations/{smiley,striped}, clip/, controlnet/canny, examples/,
                                             # world.json
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import torch
from conftest import build_tiny_pipeline, perturbed, tiny_controlnet
from safetensors.torch import load_file, save_file

from tad_demo.core.world import World
from tad_demo.toyworld import examples, world

STEPS = 2
SIDE = 32


def _tiny_clip(out: Path) -> None:
    """A random open_clip model in the toy world's local-dir format (training it would only cost time here)."""
    import open_clip
    from transformers import CLIPTokenizer

    from tad_demo.toyworld.tokenizer import write_tokenizer
    from tad_demo.toyworld.train_clip import save_clip

    tok_dir = write_tokenizer(out.parent / "clip_tok")
    text_cfg = {"context_length": 24, "vocab_size": len(CLIPTokenizer.from_pretrained(tok_dir)), "width": 32,
                "heads": 2, "layers": 1}
    cfg = {"embed_dim": 16, "quick_gelu": True,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {**text_cfg, "hf_tokenizer_name": "toyworld-tokenizer"}}
    torch.manual_seed(0)
    model = open_clip.CLIP(**{**cfg, "text_cfg": text_cfg})
    save_clip(model.eval(), out, tok_dir, cfg)


def _live_controlnet(out: Path, seed: int = 0) -> Path:
    """A tiny ControlNet whose zero-initialised output convs are re-initialised, so the condition matters."""
    net = tiny_controlnet(seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            conv.weight.copy_(0.3 * torch.randn(conv.weight.shape, generator=g))
            conv.bias.copy_(0.1 * torch.randn(conv.bias.shape, generator=g))
    net.save_pretrained(out)
    return out


def build_tiny_world(root: Path) -> Path:
    """A toy world folder with tiny random models: smiley/striped ablations, CLIP, a canny ControlNet, and the toy
    world's example scenes with their condition maps at the world's size."""
    root.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_pipeline(root.parent / (root.name + "_pipe"))
    shutil.copytree(pipe, root / "base")
    unet = load_file(str(root / "base" / "unet" / "diffusion_pytorch_model.safetensors"))
    kv = [k for k in unet if "attn2.to_k" in k or "attn2.to_v" in k]
    (root / "ablations").mkdir()
    for name, seed in (("smiley", 1), ("striped", 2)):
        ft = perturbed(unet, kv, seed=seed, scale=0.5)
        save_file({k: ft[k].contiguous() for k in kv}, str(root / "ablations" / f"{name}.safetensors"))
    _tiny_clip(root / "clip")
    _live_controlnet(root / "controlnet" / "canny")
    examples.write_examples(root / "examples", size=SIDE)
    w = World.from_dict(world.manifest(), root)
    w = w.with_concepts([c for c in w.concepts if c.name in ("smiley", "striped")])
    w.defaults = {"num_inference_steps": STEPS, "guidance_scale": 5.0, "height": SIDE, "width": SIDE}
    w.save()
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
