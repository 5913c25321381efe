"""Checkpoint loading: every layout written to disk in its real form, LoRA → dense, safe pickles, bad inputs."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from conftest import perturbed, tiny_controlnet, tiny_text_encoder, tiny_unet
from safetensors.torch import save_file

from tad_demo.core.checkpoints import (
    CheckpointError,
    convert,
    ldm_unet_key_map,
    load_weights,
    read_safetensors,
    safe_torch_load,
    to_module_keys,
)
from tad_demo.core.lora import load_lora
from tad_demo.core.task_vector import TaskVector, TaskVectorError

ALL = ("unet", "text_encoder", "vae")


# --- helpers -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base(tiny_pipeline_dir) -> dict[str, torch.Tensor]:
    """The tiny pipeline's UNet, text encoder and VAE weights, canonical keys."""
    return load_weights(tiny_pipeline_dir, components=ALL)


def one_line_error(exc: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in: {msg}"
    return msg


def strip(state: dict, comp: str) -> dict:
    p = comp + "."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# LDM names written *independently* of the loader: the original ldm/openaimodel.py and ldm autoencoder layouts.
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def ldm_unet_name(name: str, lpb: int = 2, cross_up: frozenset = frozenset({0})) -> str:
    """diffusers UNet name → LDM name for an SD-style UNet (cross_up: up blocks that have attentions)."""
    mod, param = name.rsplit(".", 1)
    if mod in _UNET_FIXED:
        return f"{_UNET_FIXED[mod]}.{param}"

    def res(rest: str) -> str:
        head, _, tail = rest.partition(".")
        return f"{_RESNET[head]}.{tail}"

    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        i = 1 + b * (lpb + 1) + j
        return f"input_blocks.{i}.0.{res(rest)}" if kind == "resnets" else f"input_blocks.{i}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", name):
        return f"input_blocks.{(int(m[1]) + 1) * (lpb + 1)}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", name):
        return f"middle_block.{2 * int(m[1])}.{res(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.+)", name):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        i = b * (lpb + 1) + j
        return f"output_blocks.{i}.0.{res(rest)}" if kind == "resnets" else f"output_blocks.{i}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", name):
        b = int(m[1])
        return f"output_blocks.{b * (lpb + 1) + lpb}.{2 if b in cross_up else 1}.conv.{m[2]}"
    raise AssertionError(f"no LDM name for {name}")


def ldm_vae_name(name: str, n_blocks: int = 2) -> str:
    name = name.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    name = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", name)
    name = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", name)
    name = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                  lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.block.", name)
    name = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                  lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample.", name)
    name = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", name)
    for new, old in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
        name = name.replace(f"mid_block.attentions.0.{new}.", f"mid.attn_1.{old}.")
    return name


def ldm_state(base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tiny pipeline as an original-SD (CompVis) checkpoint."""
    out = {}
    for k, v in strip(base, "unet").items():
        out["model.diffusion_model." + ldm_unet_name(k)] = v
    for k, v in strip(base, "text_encoder").items():
        out["cond_stage_model.transformer." + k] = v
    for k, v in strip(base, "vae").items():
        ldm = ldm_vae_name(k)
        if ".mid.attn_1." in ldm and k.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]  # LDM attention projections are 1×1 convs
        out["first_stage_model." + ldm] = v
    return out


# --- folders -----------------------------------------------------------------------------------------------

def test_pipeline_folder(tiny_pipeline_dir, base):
    sd = load_weights(tiny_pipeline_dir)
    assert {k.split(".")[0] for k in sd} == {"unet", "text_encoder"}
    same(strip(sd, "unet"), tiny_unet().state_dict())
    te = tiny_text_encoder().state_dict()
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight" in sd  # canonical, whatever transformers
    same(strip(sd, "text_encoder"), {("text_model." + k if not k.startswith("text_model.") else k): v
                                     for k, v in te.items() if not k.endswith("position_ids")})
    assert to_module_keys(strip(sd, "text_encoder"), te.keys()).keys() <= te.keys()
    assert set(load_weights(tiny_pipeline_dir, components="vae")) == {k for k in base if k.startswith("vae.")}


def test_pipeline_folder_missing_component(tiny_pipeline_dir):
    with pytest.raises(CheckpointError) as e:
        load_weights(tiny_pipeline_dir, components=("unet", "controlnet"))
    one_line_error(e, str(tiny_pipeline_dir), "controlnet/", "unet")


def test_model_folders(tmp_path, base):
    tiny_controlnet().save_pretrained(tmp_path / "cn")
    tiny_text_encoder().save_pretrained(tmp_path / "te")
    tiny_unet().save_pretrained(tmp_path / "unet_bin", safe_serialization=False)
    tiny_unet().save_pretrained(tmp_path / "unet_sharded", max_shard_size="20KB")
    assert (tmp_path / "unet_bin" / "diffusion_pytorch_model.bin").exists()
    assert (tmp_path / "unet_sharded" / "diffusion_pytorch_model.safetensors.index.json").exists()
    unet = {k: v for k, v in base.items() if k.startswith("unet.")}
    same(load_weights(tmp_path / "unet_bin"), unet)
    same(load_weights(tmp_path / "unet_sharded"), unet)
    same(load_weights(tmp_path / "te"), {k: v for k, v in base.items() if k.startswith("text_encoder.")})
    cn = load_weights(tmp_path / "cn", components="unet")  # a single-model folder ignores `components`
    assert all(k.startswith("controlnet.") for k in cn)
    assert "controlnet.controlnet_cond_embedding.conv_in.weight" in cn and "controlnet.conv_in.weight" in cn


def test_pipeline_with_controlnet(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionControlNetPipeline",
                                                          "controlnet": ["diffusers", "ControlNetModel"]}))
    tiny_controlnet().save_pretrained(tmp_path / "controlnet")
    sd = load_weights(tmp_path, components=["controlnet"])
    same(strip(sd, "controlnet"), tiny_controlnet().state_dict())


def test_folder_without_weights(tmp_path):
    tiny_unet().save_config(tmp_path / "unet")
    with pytest.raises(CheckpointError) as e:
        load_weights(tmp_path / "unet")
    one_line_error(e, str(tmp_path / "unet"), "no weights", "diffusion_pytorch_model.safetensors", "config.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError) as e:
        load_weights(tmp_path / "empty")
    one_line_error(e, str(tmp_path / "empty"), "model_index.json", "config.json")


# --- single files: diffusers layout ------------------------------------------------------------------------

def test_single_file_diffusers_layouts(tmp_path, base):
    unet, te = strip(base, "unet"), strip(base, "text_encoder")
    prefixed = {k: v for k, v in base.items() if not k.startswith("vae.")}
    save_file(base, tmp_path / "all.safetensors")
    same(load_weights(tmp_path / "all.safetensors"), prefixed)  # default components: unet + text_encoder
    same(load_weights(tmp_path / "all.safetensors", components=ALL), base)
    save_file(unet, tmp_path / "bare_unet.safetensors")
    same(load_weights(tmp_path / "bare_unet.safetensors"), {"unet." + k: v for k, v in unet.items()})
    save_file(te, tmp_path / "bare_te.safetensors")  # "text_model.…"
    save_file({k[len("text_model."):]: v for k, v in te.items()}, tmp_path / "te_v5.safetensors")  # transformers 5
    for name in ("bare_te.safetensors", "te_v5.safetensors"):
        same(load_weights(tmp_path / name), {"text_encoder." + k: v for k, v in te.items()})
    torch.save({"state_dict": prefixed, "global_step": 3}, tmp_path / "all.ckpt")
    same(load_weights(tmp_path / "all.ckpt"), prefixed)


def test_toy_ablation_checkpoint(tiny_pipeline_dir, base, kv_keys, tmp_path):
    """Our toy-world format: bare diffusers UNet names of the touched tensors only."""
    ft = perturbed(strip(base, "unet"), kv_keys, seed=1)
    save_file({k: ft[k] for k in kv_keys}, tmp_path / "ablation.safetensors")
    tv = TaskVector.from_pair(tiny_pipeline_dir, tmp_path / "ablation.safetensors")
    assert sorted(tv.keys()) == sorted("unet." + k for k in kv_keys)
    for k in kv_keys:
        torch.testing.assert_close(tv["unet." + k], ft[k] - base["unet." + k], rtol=0, atol=0)


# --- single files: LDM / CompVis layout --------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_ldm_full_file(tmp_path, base, fmt, caplog):
    ldm = ldm_state(base)
    assert len(ldm) == len(base)
    if fmt == "ckpt":
        path = tmp_path / "sd.ckpt"
        torch.save({"state_dict": {**ldm, "betas": torch.ones(3)}, "global_step": 7, "epoch": 1}, path)
    else:
        path = tmp_path / "sd.safetensors"
        save_file(ldm, path)
    with caplog.at_level(logging.INFO, logger="tad_demo.core.checkpoints"):
        same(load_weights(path, components=ALL), base)
    if fmt == "ckpt":
        assert "betas" in caplog.text and "global_step" in caplog.text  # dropped, but said so
    same(load_weights(path), {k: v for k, v in base.items() if not k.startswith("vae.")})


def test_sd1_kumari_names_map_as_documented():
    """The 32 CompVis names of a Kumari SD-1.x file map onto the 32 attn2 k/v weights of an SD-1.x UNet, with the
    LDM block mapping diffusers uses."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        sd_unet_keys = set(UNet2DConditionModel(cross_attention_dim=768).state_dict())
    ldm = [f"{blk}.1.transformer_blocks.0.attn2.to_{x}.weight"
           for blk in [f"input_blocks.{i}" for i in (1, 2, 4, 5, 7, 8)] + ["middle_block"]
           + [f"output_blocks.{i}" for i in range(3, 12)] for x in "kv"]
    m = ldm_unet_key_map(ldm, layers_per_block=2)
    assert len(ldm) == 32 and set(m.values()) == {k for k in sd_unet_keys if re.search(r"attn2\.to_[kv]\.", k)}
    blocks = {k.split(".transformer_blocks")[0]: v.split(".transformer_blocks")[0] for k, v in m.items()}
    assert blocks["input_blocks.1.1"] == "down_blocks.0.attentions.0"
    assert blocks["input_blocks.5.1"] == "down_blocks.1.attentions.1"
    assert blocks["input_blocks.8.1"] == "down_blocks.2.attentions.1"
    assert blocks["middle_block.1"] == "mid_block.attentions.0"
    assert blocks["output_blocks.3.1"] == "up_blocks.1.attentions.0"
    assert blocks["output_blocks.8.1"] == "up_blocks.2.attentions.2"
    assert blocks["output_blocks.11.1"] == "up_blocks.3.attentions.2"


@pytest.mark.parametrize("fmt", ["compvis", "delta_bin"])
def test_kumari_files_give_finetuned_minus_base(tiny_pipeline_dir, base, kv_keys, tmp_path, fmt):
    """Kumari files hold fine-tuned weights of the 2×(k, v) cross-attention tensors: τ = file − base there."""
    ft = perturbed(strip(base, "unet"), kv_keys, seed=2)
    if fmt == "compvis":
        path = tmp_path / "delta.ckpt"
        torch.save({"state_dict": {"model.diffusion_model." + ldm_unet_name(k): ft[k] for k in kv_keys}}, path)
    else:
        path = tmp_path / "delta.bin"
        torch.save({"unet": {k: ft[k] for k in kv_keys}}, path)
    assert len(safe_torch_load(path)[next(iter(safe_torch_load(path)))]) == len(kv_keys) == 2 * 2 * 3
    tv = TaskVector.from_pair(tiny_pipeline_dir, path)
    assert sorted(tv.keys()) == sorted("unet." + k for k in kv_keys)
    for k in kv_keys:
        assert torch.equal(tv["unet." + k], ft[k] - base["unet." + k])


def test_kumari_delta_bin_with_text_encoder(tiny_pipeline_dir, base, tmp_path):
    te = strip(base, "text_encoder")
    keys = [k for k in te if "layers.0.self_attn" in k]
    ft = perturbed(te, keys, seed=3)
    torch.save({"unet": {}, "text_encoder": {k: ft[k] for k in keys}, "modifier_token": {"<x>": torch.ones(4)}},
               tmp_path / "delta.bin")
    tv = TaskVector.from_pair(tiny_pipeline_dir, tmp_path / "delta.bin")
    assert sorted(tv.keys()) == sorted("text_encoder." + k for k in keys)


def test_ldm_partial_file_needs_layout(tmp_path, tiny_pipeline_dir, base):
    """Output-block-only LDM names do not reveal layers_per_block: the loader asks instead of guessing."""
    k = "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight"
    path = tmp_path / "out_only.ckpt"
    torch.save({"state_dict": {"model.diffusion_model." + ldm_unet_name(k): base["unet." + k]}}, path)
    with pytest.raises(CheckpointError) as e:
        load_weights(path)
    one_line_error(e, str(path), "layers_per_block", "unet_config=")
    assert list(load_weights(path, unet_config=tiny_pipeline_dir)) == ["unet." + k]


def test_ldm_file_without_requested_component(tmp_path, base):
    path = tmp_path / "vae.safetensors"
    save_file({k: v for k, v in ldm_state(base).items() if k.startswith("first_stage_model.")}, path)
    with pytest.raises(CheckpointError) as e:
        load_weights(path)
    one_line_error(e, str(path), "holds only vae", "components=")
    assert all(k.startswith("vae.") for k in load_weights(path, components="vae"))


def test_ldm_unknown_key(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file({"model.diffusion_model.input_blocks.1.0.in_layers.0.weight": torch.ones(4),
               "model.diffusion_model.zzz.weight": torch.ones(2)}, path)
    with pytest.raises(CheckpointError) as e:
        load_weights(path)
    one_line_error(e, str(path), "model.diffusion_model.zzz.weight")


# --- LoRA --------------------------------------------------------------------------------------------------

def _lr(out_f: int, in_f: int, rank: int = 2, kernel: tuple[int, ...] = (), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    down = torch.randn(rank, in_f, *kernel, generator=g)
    up = torch.randn(out_f, rank, *((1, 1) if kernel else ()), generator=g)
    return down, up


def test_kohya_lora_to_dense(tiny_pipeline_dir, base, tmp_path):
    targets = {  # kohya module name -> (canonical target, alpha)
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k":
            ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight", 1.0),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_out_0":
            ("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0.weight", 4.0),
        "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_ff_net_0_proj":
            ("unet.up_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj.weight", None),
        "lora_unet_down_blocks_1_attentions_0_proj_in": ("unet.down_blocks.1.attentions.0.proj_in.weight", 2.0),
        "lora_unet_down_blocks_0_resnets_0_conv1": ("unet.down_blocks.0.resnets.0.conv1.weight", 1.0),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj":
            ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight", 1.0),
        "lora_te_text_model_encoder_layers_1_mlp_fc1": ("text_encoder.text_model.encoder.layers.1.mlp.fc1.weight", 3.0),
    }
    sd, expected = {}, {}
    for i, (name, (target, alpha)) in enumerate(targets.items()):
        w = base[target]
        down, up = _lr(w.shape[0], w.shape[1], kernel=tuple(w.shape[2:]), seed=i)
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = down, up
        if alpha is not None:
            sd[f"{name}.alpha"] = torch.tensor(alpha)
        factor = 0.5 * (alpha if alpha is not None else 2) / 2  # scale · alpha / rank (rank 2)
        if w.ndim == 4:  # conv: out×r (1×1) times r×in×kh×kw
            expected[target] = factor * torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
        else:
            expected[target] = factor * up @ down
    save_file(sd, tmp_path / "kohya.safetensors")
    tv = load_lora(tmp_path / "kohya.safetensors", base=tiny_pipeline_dir, scale=0.5)
    assert sorted(tv.keys()) == sorted(expected)
    for k, v in expected.items():
        assert tv[k].shape == base[k].shape
        torch.testing.assert_close(tv[k], v)
    assert (base["unet.down_blocks.0.resnets.0.conv1.weight"].shape[2:]) == (3, 3)
    assert (base["unet.down_blocks.1.attentions.0.proj_in.weight"].shape[2:]) == (1, 1)


def test_kohya_lora_with_ldm_block_names(tiny_pipeline_dir, base, tmp_path):
    """kohya's SGM-style names (input_blocks_4_1_…) need the base's block layout, as in diffusers' loader."""
    target = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    name = "lora_unet_" + ldm_unet_name(target).replace(".weight", "").replace(".", "_")
    down, up = _lr(*base["unet." + target].shape)
    save_file({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}, tmp_path / "sgm.safetensors")
    tv = load_lora(tmp_path / "sgm.safetensors", base=tiny_pipeline_dir)
    assert name.startswith("lora_unet_input_blocks_4_1_") and tv.keys() == ["unet." + target]
    torch.testing.assert_close(tv["unet." + target], up @ down)
    with pytest.raises(CheckpointError) as e:
        load_lora(tmp_path / "sgm.safetensors")
    one_line_error(e, "sgm.safetensors", "base=")


def test_diffusers_lora_layouts_to_dense(tiny_pipeline_dir, base, tmp_path):
    k_to = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    k_out = "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0"
    q = "text_model.encoder.layers.2.self_attn.q_proj"
    d1, u1 = _lr(*base[f"unet.{k_to}.weight"].shape, seed=1)
    d2, u2 = _lr(*base[f"unet.{k_out}.weight"].shape, seed=2)
    d3, u3 = _lr(*base[f"text_encoder.{q}.weight"].shape, seed=3)
    # PEFT layout as diffusers saves it: alpha in the adapter metadata; a transformers-5 text-encoder name.
    peft = {f"unet.{k_to}.lora_A.weight": d1, f"unet.{k_to}.lora_B.weight": u1,
            f"text_encoder.{q[len('text_model.'):]}.lora_A.weight": d3, f"text_encoder.{q[len('text_model.'):]}"
            ".lora_B.weight": u3}
    meta = {"lora_adapter_metadata": json.dumps({"unet.r": 2, "unet.lora_alpha": 4, "text_encoder.r": 2,
                                                 "text_encoder.lora_alpha": 2})}
    save_file(peft, tmp_path / "peft.safetensors", metadata=meta)
    tv = load_lora(tmp_path / "peft.safetensors", base=base)
    torch.testing.assert_close(tv[f"unet.{k_to}.weight"], 2.0 * u1 @ d1)
    torch.testing.assert_close(tv[f"text_encoder.{q}.weight"], 1.0 * u3 @ d3)
    # Older attention-processor layout (bare UNet names, no alpha: factor 1) saved as a pickle.
    old = {f"{k_to.replace('attn2.to_k', 'attn2.processor.to_k_lora')}.down.weight": d1,
           f"{k_to.replace('attn2.to_k', 'attn2.processor.to_k_lora')}.up.weight": u1,
           f"{k_out.replace('attn2.to_out.0', 'attn2.processor.to_out_lora')}.down.weight": d2,
           f"{k_out.replace('attn2.to_out.0', 'attn2.processor.to_out_lora')}.up.weight": u2}
    torch.save(old, tmp_path / "pytorch_lora_weights.bin")
    tv = load_lora(tmp_path / "pytorch_lora_weights.bin", base=tiny_pipeline_dir, scale=-1.0)
    assert sorted(tv.keys()) == sorted([f"unet.{k_to}.weight", f"unet.{k_out}.weight"])
    torch.testing.assert_close(tv[f"unet.{k_out}.weight"], -(u2 @ d2))


def test_lora_bad_inputs(tiny_pipeline_dir, base, tmp_path):
    d, u = _lr(8, 32)
    save_file({"unet.down_blocks.7.attn2.to_k.lora_A.weight": d, "unet.down_blocks.7.attn2.to_k.lora_B.weight": u},
              tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_lora(tmp_path / "other.safetensors", base=tiny_pipeline_dir)
    one_line_error(e, "other.safetensors", "unet.down_blocks.7.attn2.to_k.weight", "not in the base")
    save_file({"lora_unet_down_blocks_0_resnets_0_conv1.hada_w1_a": d}, tmp_path / "loha.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_lora(tmp_path / "loha.safetensors")
    one_line_error(e, "loha.safetensors", "hada_w1_a", "unsupported")
    with pytest.raises(CheckpointError) as e:
        load_weights(tmp_path / "other.safetensors")
    one_line_error(e, "other.safetensors", "load_lora")


# --- bad inputs ------------------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    for fn in (load_weights, read_safetensors, safe_torch_load, load_lora):
        with pytest.raises(CheckpointError) as e:
            fn(tmp_path / "nope.safetensors")
        one_line_error(e, str(tmp_path / "nope.safetensors"), "no such file")


def test_truncated_safetensors(tmp_path, base):
    path = tmp_path / "t.safetensors"
    save_file(strip(base, "unet"), path)
    data = path.read_bytes()
    for cut in (len(data) // 2, 5, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as e:
            load_weights(path)
        one_line_error(e, str(path), "truncated")
        assert path.stat().st_size == cut  # nothing was "repaired"


def test_safetensors_that_is_a_pickle(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.save({"w": torch.ones(2)}, path)
    before = path.read_bytes()
    for fn in (read_safetensors, load_weights):
        with pytest.raises(CheckpointError) as e:
            fn(path)
        one_line_error(e, str(path), "is not a safetensors file (it looks like a PyTorch pickle)", "convert")
    assert path.read_bytes() == before


class _Evil:
    """Unpickling this creates a file: what a malicious checkpoint would do (with worse code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_is_refused(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"conv_in.weight": torch.ones(2)}, "x": _Evil(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    assert not marker.exists()
    for call in (lambda: safe_torch_load(path), lambda: load_weights(path), lambda: load_lora(path),
                 lambda: convert(path, tmp_path / "out.safetensors")):
        with pytest.raises(CheckpointError) as e:
            call()
        one_line_error(e, str(path), "refused", "arbitrary code", "open", "safetensors")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_nan_weights_are_reported_not_fixed(tiny_pipeline_dir, base, kv_keys, tmp_path):
    ft = {k: base["unet." + k].clone() for k in kv_keys}
    ft[kv_keys[0]][0, 0] = float("nan")
    save_file(ft, tmp_path / "nan.safetensors")
    assert torch.isnan(load_weights(tmp_path / "nan.safetensors")["unet." + kv_keys[0]]).any()
    with pytest.raises(TaskVectorError) as e:
        TaskVector.from_pair(tiny_pipeline_dir, tmp_path / "nan.safetensors")
    one_line_error(e, "nan.safetensors", kv_keys[0], "NaN")


def test_mismatched_architecture(tiny_pipeline_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    wide = UNet2DConditionModel(  # the tiny UNet but with cross_attention_dim 64 instead of 32
        block_out_channels=(4, 8), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, norm_num_groups=1)
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(TaskVectorError) as e:
        TaskVector.from_pair(tiny_pipeline_dir, tmp_path / "wide")
    msg = one_line_error(e, "attn2.to_k.weight", "(8, 64)", "(8, 32)")
    assert str(tmp_path / "wide") in msg


def test_key_only_in_finetuned(tiny_pipeline_dir, tmp_path):
    save_file({"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_kk.weight": torch.ones(8, 32)},
              tmp_path / "extra.safetensors")
    with pytest.raises(TaskVectorError) as e:
        TaskVector.from_pair(tiny_pipeline_dir, tmp_path / "extra.safetensors")
    one_line_error(e, "extra.safetensors", "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_kk.weight",
                   "not in the base")


def test_non_float_tensors_skipped(tiny_pipeline_dir, base, tmp_path):
    key = "text_model.encoder.layers.0.self_attn.q_proj.weight"
    save_file({key: base["text_encoder." + key] + 1, "text_model.embeddings.position_ids": torch.arange(77)[None]},
              tmp_path / "te.safetensors")
    assert load_weights(tmp_path / "te.safetensors")["text_encoder.text_model.embeddings.position_ids"].dtype \
        == torch.int64  # loaders keep it; the task vector skips it
    tv = TaskVector.from_pair(tiny_pipeline_dir, tmp_path / "te.safetensors")
    assert tv.keys() == ["text_encoder." + key]


def test_task_vector_file_is_not_weights(tmp_path, base):
    tv = TaskVector({"unet.conv_in.weight": torch.ones_like(base["unet.conv_in.weight"])})
    path = tv.save(tmp_path / "tv.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_weights(path)
    one_line_error(e, str(path), "task vector", "TaskVector.load")
    assert TaskVector.load(path).keys() == ["unet.conv_in.weight"]


# --- convert -----------------------------------------------------------------------------------------------

def test_convert_pickle_to_safetensors(tmp_path, base, caplog):
    unet = strip(base, "unet")
    tied = {**unet, "tied.weight": unet["conv_in.weight"]}  # shared storage: safetensors refuses it as is
    src = tmp_path / "model.ckpt"
    torch.save({"state_dict": tied, "global_step": 10, "optimizer_states": [{"lr": 1e-5}]}, src)
    with caplog.at_level(logging.INFO, logger="tad_demo.core.checkpoints"):
        dst = convert(src, tmp_path / "model.safetensors")
    assert "global_step" in caplog.text and "optimizer_states" in caplog.text
    same(read_safetensors(dst), tied)
    with pytest.raises(CheckpointError) as e:
        convert(src, dst)
    one_line_error(e, str(dst), "already exists")
    convert(src, dst, overwrite=True)


def test_convert_refuses_to_overwrite_source(tmp_path):
    src = tmp_path / "model.safetensors"  # really a pickle, so it needs converting, but not onto itself
    torch.save({"w": torch.ones(2)}, src)
    before = src.read_bytes()
    with pytest.raises(CheckpointError) as e:
        convert(src, src, overwrite=True)
    one_line_error(e, str(src), "source")
    assert src.read_bytes() == before


# --- files as other tools write them (issue 12) -------------------------------------------------------------

@pytest.mark.parametrize("rslora", [False, True])
def test_peft_lora_saved_by_diffusers_matches_peft(tmp_path, base, rslora):
    """A LoRA trained with PEFT and saved by diffusers: ΔW equals what PEFT itself merges into the weights —
    alpha/√r for rsLoRA, regex ``alpha_pattern`` keys matched as PEFT matches them, per-module ranks."""
    peft = pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet = tiny_unet()
    config = peft.LoraConfig(
        r=4, lora_alpha=8, use_rslora=rslora, init_lora_weights=False, target_modules=["to_k", "to_v", "to_q"],
        alpha_pattern={r"down_blocks\.1\.attentions\.\d+\.transformer_blocks\.0\.attn2\.to_k": 2, "attn1.to_q": 32},
        rank_pattern={"attn1.to_q": 2})
    unet.add_adapter(config)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=layers,
                                              unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    unet.fuse_lora()  # PEFT merges alpha/r (or alpha/√r) · B @ A into the base layers: the oracle
    fused = unet.state_dict()
    expect = {}
    for k, v in fused.items():
        if k.endswith(".base_layer.weight"):
            d = v - before[k]
            if torch.count_nonzero(d):
                expect["unet." + k.replace(".base_layer.", ".")] = d

    tv = load_lora(tmp_path / "lora" / "pytorch_lora_weights.safetensors", base=base)
    assert sorted(tv.keys()) == sorted(expect)
    assert len(expect) == 3 * 2 * 6  # q, k, v × (attn1, attn2) × 6 transformer blocks (2 down, 1 mid, 3 up)
    for k, d in expect.items():
        torch.testing.assert_close(tv[k], d, rtol=1e-4, atol=1e-6, msg=k)


def test_kumari_intermediate_delta_step_file(tiny_pipeline_dir, base, kv_keys, tmp_path, capsys):
    """Kumari's diffusers train.py saves ``delta-<step>`` (torch.save, no suffix) every checkpointing_steps."""
    from tad_demo.cli import main

    ft = perturbed(strip(base, "unet"), kv_keys, seed=5)
    path = tmp_path / "delta-250"
    torch.save({"unet": {k: ft[k] for k in kv_keys}}, path)
    tv = TaskVector.from_pair(tiny_pipeline_dir, path)
    assert sorted(tv.keys()) == sorted("unet." + k for k in kv_keys)
    assert main(["vector", "--base", str(tiny_pipeline_dir), "--finetuned", str(path),
                 "--out", str(tmp_path / "tau.safetensors"), "--json"]) == 0
    saved = TaskVector.load(tmp_path / "tau.safetensors")
    for k in kv_keys:
        assert torch.equal(saved["unet." + k], ft[k] - base["unet." + k])


def test_compvis_embed_entry_is_refused_unless_unet_only(tiny_pipeline_dir, base, kv_keys, tmp_path, capsys):
    """get_deltas.py --newtoken N adds the new tokens' embeddings as ``state_dict['embed']``: a task vector can't
    carry tokens the base lacks, so it says so in one line; the UNet part alone is still a valid vector."""
    from tad_demo.cli import main

    ft = perturbed(strip(base, "unet"), kv_keys, seed=6)
    sd = {"model.diffusion_model." + ldm_unet_name(k): ft[k] for k in kv_keys}
    sd["embed"] = torch.randn(1, 32)
    path = tmp_path / "delta_epoch=000004.ckpt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError) as e:
        TaskVector.from_pair(tiny_pipeline_dir, path)
    one_line_error(e, str(path), "'embed'", "1 token(s)", "--newtoken", "scope='unet'")
    assert main(["vector", "--base", str(tiny_pipeline_dir), "--finetuned", str(path),
                 "--out", str(tmp_path / "tau.safetensors")]) == 2
    assert "'embed'" in capsys.readouterr().err
    tv = TaskVector.from_pair(tiny_pipeline_dir, path, scope="unet")
    assert sorted(tv.keys()) == sorted("unet." + k for k in kv_keys)
    torch.save({"state_dict": {"embed": torch.randn(1, 32)}}, tmp_path / "embed_only.ckpt")
    with pytest.raises(CheckpointError) as e:
        load_weights(tmp_path / "embed_only.ckpt", components="unet")
    one_line_error(e, "embed_only.ckpt", "holds only 'embed'")


NOT_CHECKPOINTS = {
    "text": (b"step,loss\n1,0.5\n", "a text file"),
    "lfs": (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 3438167534\n",
            "a Git LFS pointer"),
    "html": (b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body></body></html>", "an HTML page"),
    "json": (b'{"error": "not found"}', "a JSON text file"),
    "random": (bytes(range(7, 256)) * 40, "unrecognised binary data"),
    "empty": (b"", "empty"),
}


@pytest.mark.parametrize("kind", sorted(NOT_CHECKPOINTS))
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors", ""])
def test_files_that_are_no_checkpoint_say_what_they_are(tmp_path, kind, suffix, capsys):
    from tad_demo.cli import main

    data, what = NOT_CHECKPOINTS[kind]
    path = tmp_path / f"model{suffix}"
    path.write_bytes(data)
    calls = [lambda: load_weights(path), lambda: load_lora(path),
             lambda: convert(path, tmp_path / "out.safetensors"), lambda: TaskVector.load(path)]
    for call in calls:
        with pytest.raises((CheckpointError, TaskVectorError)) as e:
            call()
        msg = one_line_error(e, str(path))
        if kind == "empty" and suffix == ".safetensors":
            assert "truncated (0 bytes)" in msg or "an empty file (0 bytes)" in msg, msg
        else:
            assert what in msg, msg
        assert "arbitrary code" not in msg and "pickle" not in msg.split(":", 1)[1].split(";")[0]
    for argv in (["convert", str(path), str(tmp_path / "o.safetensors")], ["inspect", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err, err
    assert path.read_bytes() == data


def test_truncated_zip_checkpoint(tmp_path, base):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": strip(base, "unet")}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for call in (lambda: load_weights(path), lambda: convert(path, tmp_path / "o.safetensors")):
        with pytest.raises(CheckpointError) as e:
            call()
        one_line_error(e, str(path), "truncated or corrupt", "incomplete PyTorch zip archive")


def test_convert_pickle_named_safetensors(tmp_path, base):
    """A pickle named .safetensors converts (read with weights_only=True; nothing runs) into a real one."""
    src = tmp_path / "model.safetensors"
    torch.save({"state_dict": strip(base, "unet")}, src)
    dst = convert(src, tmp_path / "real.safetensors")
    same(read_safetensors(dst), strip(base, "unet"))


def test_invalid_config_json_is_named(tmp_path, tiny_pipeline_dir):
    import shutil

    folder = tmp_path / "unet"
    shutil.copytree(tiny_pipeline_dir / "unet", folder)
    (folder / "config.json").write_text('{"_class_name": "UNet2DConditionModel",\n  "layers_per_block": 2,,}')
    with pytest.raises(CheckpointError) as e:
        load_weights(folder)
    one_line_error(e, str(folder / "config.json"), "invalid JSON", "line 2")
    (folder / "config.json").write_text("<html><body>rate limited</body></html>")
    with pytest.raises(CheckpointError) as e:
        TaskVector.from_pair(tiny_pipeline_dir, folder)
    one_line_error(e, str(folder / "config.json"), "invalid JSON", "an HTML page")


def test_task_vector_load_checks_the_format(tmp_path, base, kv_keys, capsys):
    """``inspect``/``TaskVector.load`` take only files written as task vectors; each other kind is named."""
    from tad_demo.cli import main

    save_file(strip(base, "unet"), tmp_path / "weights.safetensors")
    d, u = _lr(8, 32)
    save_file({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": d,
               "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": u},
              tmp_path / "lora.safetensors")
    torch.save({"unet": {k: base["unet." + k] for k in kv_keys}}, tmp_path / "delta.bin")
    for name, needles in (("weights.safetensors", ("model weights", "no format metadata", "vector --base")),
                          ("lora.safetensors", ("a LoRA", "vector --base")),
                          ("delta.bin", ("not a task vector file", "vector --base", "--finetuned delta.bin"))):
        with pytest.raises(TaskVectorError) as e:
            TaskVector.load(tmp_path / name)
        msg = one_line_error(e, str(tmp_path / name), *needles)
        assert "rename" not in msg
        assert main(["inspect", str(tmp_path / name)]) == 2
        assert needles[0] in capsys.readouterr().err


def test_vector_cli_takes_a_lora(tiny_pipeline_dir, base, tmp_path):
    from tad_demo.cli import main

    k = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    d, u = _lr(*base[f"unet.{k}.weight"].shape, seed=4)
    save_file({f"unet.{k}.lora_A.weight": d, f"unet.{k}.lora_B.weight": u}, tmp_path / "lora.safetensors",
              metadata={"lora_adapter_metadata": json.dumps({"unet.r": 2, "unet.lora_alpha": 1})})
    assert main(["vector", "--base", str(tiny_pipeline_dir), "--finetuned", str(tmp_path / "lora.safetensors"),
                 "--out", str(tmp_path / "tau.safetensors"), "--json"]) == 0
    tv = TaskVector.load(tmp_path / "tau.safetensors")
    assert tv.keys() == [f"unet.{k}.weight"]
    torch.testing.assert_close(tv[f"unet.{k}.weight"], 0.5 * u @ d)


def test_single_component_vector_applies_to_bare_state_dict(tmp_path, base, kv_keys):
    """``TaskVector.from_pair(unet_a, unet_b).apply(unet.state_dict())``: keys are ``unet.``-prefixed, the state
    dict's are not; a one-component vector applies anyway (text encoder: with or without ``text_model.``)."""
    unet_a, unet_b = tiny_unet(), tiny_unet()
    unet_b.load_state_dict(perturbed(unet_a.state_dict(), kv_keys, seed=7))
    unet_a.save_pretrained(tmp_path / "a")
    unet_b.save_pretrained(tmp_path / "b")
    tv = TaskVector.from_pair(tmp_path / "a", tmp_path / "b")
    assert all(k.startswith("unet.") for k in tv.keys())
    out = tv.apply(unet_a.state_dict())
    assert sorted(out) == sorted(unet_a.state_dict())
    for k, v in unet_b.state_dict().items():
        torch.testing.assert_close(out[k], v, rtol=0, atol=1e-6)
    te = tiny_text_encoder()
    key = next(k for k in te.state_dict() if k.endswith("q_proj.weight"))
    canonical = "text_encoder.text_model." + key.removeprefix("text_model.")
    tv_te = TaskVector({canonical: torch.ones_like(te.state_dict()[key])})
    assert torch.equal(tv_te.apply(te.state_dict())[key], te.state_dict()[key] + 1)
    both = tv + tv_te
    with pytest.raises(TaskVectorError) as e:
        both.apply(unet_a.state_dict())
    one_line_error(e, "component prefixes", "tv.component(")
