"""The base model's text encoder: the toy CLIP's text tower, as a transformers ``CLIPTextModel``.

Stable Diffusion conditions on the (frozen) text encoder of OpenAI's CLIP; the toy world does the same with its
own CLIP, trained first. A CLIP text tower already knows every word of the world and how words compose, so the
UNet only has to learn to read it (v1 trained a text encoder jointly from scratch and followed prompts less
well). open_clip and transformers implement the same transformer (pre-LN blocks, causal mask, QuickGELU, final
LayerNorm, pooling at the end-of-text token, which has the highest id); only the parameter layout differs:
open_clip packs q/k/v into one ``in_proj``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


def text_encoder_from_clip(clip_dir: str | Path, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A ``CLIPTextModel`` with the weights of the open_clip text tower in ``clip_dir`` (local-dir layout)."""
    from safetensors.torch import load_file

    clip_dir = Path(clip_dir)
    cfg = json.loads((clip_dir / "open_clip_config.json").read_text())["model_cfg"]
    text = cfg["text_cfg"]
    width, layers, heads = text["width"], text["layers"], text["heads"]
    if not cfg.get("quick_gelu"):
        raise ValueError(f"{clip_dir}: the text tower must use QuickGELU (quick_gelu: true) to convert exactly")
    config = CLIPTextConfig(
        vocab_size=text["vocab_size"], hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=text["context_length"], hidden_act="quick_gelu",
        projection_dim=cfg["embed_dim"], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, layer_norm_eps=1e-5,
    )
    src = load_file(str(clip_dir / "model.safetensors"))
    out = {"text_model.embeddings.token_embedding.weight": src["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": src["positional_embedding"],
           "text_model.final_layer_norm.weight": src["ln_final.weight"],
           "text_model.final_layer_norm.bias": src["ln_final.bias"]}
    for i in range(layers):
        a, b = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for name, w, bias in zip(("q", "k", "v"), src[a + "attn.in_proj_weight"].chunk(3),
                                 src[a + "attn.in_proj_bias"].chunk(3)):
            out[b + f"self_attn.{name}_proj.weight"], out[b + f"self_attn.{name}_proj.bias"] = w, bias
        pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                 "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
        for s, d in pairs.items():
            out[b + d + ".weight"], out[b + d + ".bias"] = src[a + s + ".weight"], src[a + s + ".bias"]
    model = CLIPTextModel(config)
    # transformers 4 names the parameters "text_model.…", transformers 5 without the prefix
    prefixed = any(k.startswith("text_model.") for k in model.state_dict())
    out = {(k if prefixed else k.removeprefix("text_model.")): v.clone() for k, v in out.items()}
    missing, unexpected = model.load_state_dict(out, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise ValueError(f"{clip_dir}: text tower conversion left {missing} unset and {unexpected} unused")
    return model.eval().requires_grad_(False)


@torch.no_grad()
def check_same_as_open_clip(clip_dir: str | Path, model: CLIPTextModel, tokenizer: CLIPTokenizer,
                            prompts: list[str]) -> float:
    """Max |difference| between open_clip's text features and the converted model's pooled output projected
    the same way (a conversion check; ~1e-6 when exact)."""
    import open_clip

    oc, _, _ = open_clip.create_model_and_transforms(f"local-dir:{clip_dir}")
    ids = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt").input_ids
    ref = oc.encode_text(ids)
    ours = model(ids).pooler_output @ oc.text_projection
    return float((ref - ours).abs().max())
