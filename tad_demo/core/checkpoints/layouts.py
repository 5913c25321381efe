"""Checkpoint layouts → flat state dicts keyed by component-prefixed diffusers parameter names.

    load_weights("pipe/")                      # diffusers pipeline folder -> {"unet.…", "text_encoder.text_model.…"}
    load_weights("unet/")                      # one model folder (config.json) -> {"unet.…"}
    load_weights("model.safetensors")          # single file, diffusers keys (prefixed or bare) or LDM/CompVis keys
    load_weights("kumari.ckpt")                # {'state_dict': {model.diffusion_model.…attn2.to_k.weight: …}}
    load_weights("delta.bin")                  # Kumari diffusers format {'unet': {name: tensor}}

Canonical keys: ``unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight``,
``text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight``, ``vae.…``, ``controlnet.…``. The text
encoder keeps the ``text_model.`` level that real SD checkpoints have, even though transformers >= 5 saves (and
names the live module's parameters) without it; ``to_module_keys`` maps back to a live module's names.

Values are returned exactly as stored (dtype kept, NaN/Inf untouched: ``TaskVector.from_pair`` reports them).
LDM names are converted with diffusers' own converters (``diffusers.loaders.single_file_utils``; partial files via
``ldm_unet_key_map``). Files are read by ``files.py`` (safetensors, or pickles with ``weights_only=True``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..errors import CheckpointError
from .files import COMPONENTS, PathLike, existing_path, listing, read_file, read_json

log = logging.getLogger(__name__)

V = TypeVar("V")

DEFAULT_COMPONENTS = ("unet", "text_encoder")  # what task vectors of SD fine-tunes touch
TASK_VECTOR_FORMAT = "tad_demo.task_vector"  # metadata written by TaskVector.save

# Weight files of a diffusers/transformers model folder, in order of preference (safetensors first).
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors", "model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json",
    "diffusion_pytorch_model.bin", "pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json", "pytorch_model.bin.index.json",
)
CLASS_TO_COMPONENT = {
    "UNet2DConditionModel": "unet", "ControlNetModel": "controlnet", "AutoencoderKL": "vae",
    "CLIPTextModel": "text_encoder", "CLIPTextModelWithProjection": "text_encoder",
}
# First name segment of bare (un-prefixed) diffusers/transformers keys -> component.
UNET_ROOTS = {"conv_in", "conv_out", "conv_norm_out", "time_embedding", "down_blocks", "mid_block", "up_blocks",
              "class_embedding", "add_embedding", "encoder_hid_proj"}
CONTROLNET_ROOTS = {"controlnet_cond_embedding", "controlnet_down_blocks", "controlnet_mid_block"}
VAE_ROOTS = {"encoder", "decoder", "quant_conv", "post_quant_conv"}
TEXT_ROOTS = {"text_model", "text_projection", "embeddings", "final_layer_norm"}  # + "encoder.layers."
CLIP_INNER_ROOTS = ("embeddings.", "encoder.", "final_layer_norm.")  # CLIPTextModel without its text_model level

# LDM/CompVis single-file prefixes: UNet, CLIP text encoder, VAE (as in diffusers' single_file_utils).
LDM_UNET, LDM_CLIP, LDM_VAE = "model.diffusion_model.", "cond_stage_model.", "first_stage_model."
# Kumari's CompVis get_deltas.py --newtoken N stores the N new tokens' embedding rows under this key.
KUMARI_EMBED = "embed"


# --- the entry point ---------------------------------------------------------------------------------------

def load_weights(path: PathLike, components: Iterable[str] | str | None = None, *,
                 unet_config: Mapping[str, Any] | PathLike | None = None) -> dict[str, torch.Tensor]:
    """Weights of a checkpoint as {component-prefixed diffusers name: tensor}, whatever the layout.

    ``components`` picks parts of multi-component sources (pipeline folders, prefixed or LDM single files;
    default unet + text_encoder); a single-model folder or a bare single-component file always gives its one
    model. ``unet_config`` (a dict, a diffusers folder or a config.json) tells the LDM converter the UNet's
    ``layers_per_block`` when it cannot be read off the file's keys.
    """
    p = existing_path(path)
    comps = _components(components)
    if p.is_dir():
        if (p / "model_index.json").is_file():
            return _load_pipeline_folder(p, comps)
        if (p / "config.json").is_file():
            return _load_model_folder(p)
        raise CheckpointError(f"{p}: neither a diffusers pipeline folder (model_index.json) nor a model folder "
                              f"(config.json); it has: {listing(p)}")
    tensors, meta = read_file(p)
    if meta.get("format") == TASK_VECTOR_FORMAT:
        raise CheckpointError(f"{p} is a task vector (differences), not model weights; use TaskVector.load()")
    if not tensors:
        raise CheckpointError(f"{p}: no tensors found")
    lora_key = next((k for k in tensors if is_lora_key(k)), None)
    if lora_key:
        raise CheckpointError(f"{p} is a LoRA (key {lora_key!r}), not model weights; read it with "
                              "tad_demo.load_lora(path, base=…) (CLI: `vector --base BASE --finetuned LORA`)")
    if KUMARI_EMBED in tensors:
        tensors = _kumari_embed(tensors, str(p), comps)
    if any(k.startswith((LDM_UNET, LDM_CLIP, LDM_VAE)) for k in tensors):
        return _convert_ldm(tensors, str(p), comps, unet_config)
    out, multi = _prefix_diffusers(tensors, str(p))
    return _select(out, comps, str(p)) if multi else out


def _components(components: Iterable[str] | str | None) -> tuple[str, ...]:
    if components is None:
        return DEFAULT_COMPONENTS
    comps = (components,) if isinstance(components, str) else tuple(components)
    bad = [c for c in comps if c not in COMPONENTS]
    if bad or not comps:
        raise CheckpointError(f"unknown component(s) {bad or comps!r}; choose from {', '.join(COMPONENTS)}")
    return comps


def _select(state: dict[str, torch.Tensor], comps: tuple[str, ...], origin: str) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in state.items() if k.split(".", 1)[0] in comps}
    if not out:
        has = sorted({k.split(".", 1)[0] for k in state})
        raise CheckpointError(f"{origin}: holds only {', '.join(has) or 'nothing'} weights, none of the requested "
                              f"components ({', '.join(comps)}); pass components={tuple(has)!r}")
    return out


# --- diffusers folders -------------------------------------------------------------------------------------

def _load_pipeline_folder(folder: Path, comps: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for comp in comps:
        sub = folder / comp
        if not sub.is_dir():
            index = read_json(folder / "model_index.json")
            present = [k for k, v in index.items() if isinstance(v, list) and v[0] and (folder / k).is_dir()]
            raise CheckpointError(f"{folder}: pipeline has no {comp}/ folder (it has: {', '.join(present)}); "
                                  f"request only components it has")
        out.update(with_prefix(comp, _read_model_weights(sub)))
    return out


def _load_model_folder(folder: Path) -> dict[str, torch.Tensor]:
    comp = _component_of_config(folder / "config.json")
    return with_prefix(comp, _read_model_weights(folder))


def _component_of_config(config_path: Path) -> str:
    cfg = read_json(config_path)
    names = [cfg.get("_class_name")] + list(cfg.get("architectures") or [])
    for name in names:
        if name in CLASS_TO_COMPONENT:
            return CLASS_TO_COMPONENT[name]
    raise CheckpointError(f"{config_path}: unsupported model class {next((n for n in names if n), None)!r}; "
                          f"supported: {', '.join(CLASS_TO_COMPONENT)}")


def _read_model_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of one diffusers/transformers model folder (single file or shards)."""
    found = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if found is None:
        # A variant (e.g. diffusion_pytorch_model.fp16.safetensors) is fine when it is the only candidate.
        for pattern in ("*.safetensors", "*.bin"):
            cands = [c for c in folder.glob(pattern) if not re.search(r"-\d{5}-of-\d{5}\.", c.name)]
            if len(cands) == 1:
                found = cands[0]
                log.info("%s: no standard weight file, using %s", folder, found.name)
                break
    if found is None:
        raise CheckpointError(f"{folder}: no weights found (looked for {', '.join(WEIGHT_FILES)}); it has: "
                              f"{listing(folder)}")
    if found.name.endswith(".index.json"):
        weight_map = read_json(found).get("weight_map", {})
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            out.update(read_file(existing_path(folder / shard))[0])
        return out
    return read_file(found)[0]


def canonical_key(comp: str, key: str) -> str:
    """``comp.key``; text-encoder keys get the ``text_model.`` level if the file lacks it (transformers >= 5)."""
    if comp == "text_encoder" and key.startswith(CLIP_INNER_ROOTS):
        key = "text_model." + key
    return f"{comp}.{key}"


def with_prefix(comp: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {canonical_key(comp, k): v for k, v in state.items()}


def to_module_keys(state: Mapping[str, V], module_keys: Collection[str]) -> dict[str, V]:
    """Rename one component's keys (prefix already removed) to a live module's parameter names.

    Canonical text-encoder keys carry ``text_model.``; a transformers >= 5 ``CLIPTextModel`` has no such level.
    Keys that match neither form are returned unchanged (the caller reports them).
    """
    out = {}
    for k, v in state.items():
        if k not in module_keys and k.startswith("text_model.") and k[len("text_model."):] in module_keys:
            k = k[len("text_model."):]
        elif k not in module_keys and "text_model." + k in module_keys:
            k = "text_model." + k
        out[k] = v
    return out


# --- single files in diffusers layout ----------------------------------------------------------------------

def bare_component(key: str, controlnet: bool) -> str | None:
    root = key.split(".", 1)[0]
    if key.startswith("encoder.layers."):
        return "text_encoder"  # CLIP encoder layers; a VAE encoder has down_blocks/mid_block instead
    if root in TEXT_ROOTS:
        return "text_encoder"
    if root in VAE_ROOTS:
        return "vae"
    if root in CONTROLNET_ROOTS or (controlnet and root in UNET_ROOTS):
        return "controlnet"  # a ControlNet shares conv_in/down_blocks/… names with the UNet
    if root in UNET_ROOTS:
        return "unet"
    return None


def _prefix_diffusers(tensors: dict[str, torch.Tensor], origin: str) -> tuple[dict[str, torch.Tensor], bool]:
    """(component-prefixed dict, whether ``components`` applies): prefixed keys are kept, bare keys classified."""
    prefixed = [k for k in tensors if k.split(".", 1)[0] in COMPONENTS]
    if prefixed:
        bare = next((k for k in tensors if k.split(".", 1)[0] not in COMPONENTS), None)
        if bare is not None:
            raise CheckpointError(f"{origin}: key {bare!r} has no component prefix while others do "
                                  f"(e.g. {prefixed[0]!r}); the file mixes layouts")
        return {canonical_key(*k.split(".", 1)): v for k, v in tensors.items()}, True
    controlnet = any(k.split(".", 1)[0] in CONTROLNET_ROOTS for k in tensors)
    by_comp: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        comp = bare_component(k, controlnet)
        if comp is None:
            raise CheckpointError(f"{origin}: key {k!r} is not a diffusers UNet/ControlNet/VAE or CLIP text encoder "
                                  "parameter name, nor an LDM (model.diffusion_model.…) name; unsupported layout")
        by_comp.setdefault(comp, {})[k] = v
    out = {}
    for comp, part in by_comp.items():
        out.update(with_prefix(comp, part))
    # A bare file of one model is what the user pointed at: return it whatever ``components`` says.
    return out, len(by_comp) > 1


def is_lora_key(key: str) -> bool:
    return bool(re.search(r"^lora_(unet|te\d?)_|\.lora_[AB]\.|lora_(down|up)\.|_lora\.(down|up)\.|\.lora\.(down|up)\."
                          r"|\.lora_linear_layer\.", key))


# --- single files in LDM / CompVis layout ------------------------------------------------------------------

def _kumari_embed(tensors: dict[str, torch.Tensor], origin: str, comps: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A Kumari CompVis file's ``embed`` entry: the embeddings of tokens the fine-tune *added* to the vocabulary.

    A task vector is a difference of same-shaped weights, and the base's tokenizer has no such tokens, so the entry
    cannot be applied. It is refused when the text encoder is requested; the UNet part alone is a valid vector.
    """
    embed = tensors[KUMARI_EMBED]
    if "text_encoder" in comps:
        n = embed.shape[0] if embed.ndim == 2 else "?"
        raise CheckpointError(
            f"{origin}: entry 'embed' holds the embeddings of {n} token(s) that the fine-tune added to the vocabulary "
            "(Kumari's --newtoken); the base's tokenizer has no such tokens, so a task vector cannot carry them; use "
            "the UNet part only: scope='unet' (CLI: --scope unet) or components=('unet',)")
    rest = {k: v for k, v in tensors.items() if k != KUMARI_EMBED}
    if not rest:
        raise CheckpointError(f"{origin}: holds only 'embed' (new-token embeddings, Kumari's --newtoken), no weights "
                              "of the requested components")
    log.info("%s: leaving out 'embed' (new-token embeddings; the text encoder was not requested)", origin)
    return rest


def _convert_ldm(tensors: dict[str, torch.Tensor], origin: str, comps: tuple[str, ...],
                 unet_config: Mapping[str, Any] | PathLike | None) -> dict[str, torch.Tensor]:
    """Convert LDM names with diffusers' converters; works on partial files (Kumari: 32 k/v tensors)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_ldm_vae_checkpoint

    unet = {k[len(LDM_UNET):]: v for k, v in tensors.items() if k.startswith(LDM_UNET)}
    clip = {k: v for k, v in tensors.items() if k.startswith(LDM_CLIP)}
    vae = {k: v for k, v in tensors.items() if k.startswith(LDM_VAE)}
    rest = [k for k in tensors if not k.startswith((LDM_UNET, LDM_CLIP, LDM_VAE))]
    if rest:  # EMA copies (model_ema.*), noise-schedule buffers (betas, alphas_cumprod, …)
        log.info("%s: ignoring %d non-model entries (e.g. %s)", origin, len(rest), ", ".join(rest[:3]))
    out: dict[str, torch.Tensor] = {}
    if unet and "unet" in comps:
        if unet_config is not None:
            lpb = int(read_unet_config(unet_config)["layers_per_block"])
        else:
            lpb = _infer_layers_per_block(unet, origin)
        mapping = ldm_unet_key_map(unet, lpb)
        unknown = next((k for k in unet if k not in mapping), None)
        if unknown:
            raise CheckpointError(f"{origin}: LDM UNet key {LDM_UNET + unknown!r} is not recognised by diffusers' "
                                  "SD converter; the checkpoint is of an unsupported architecture")
        out.update({f"unet.{mapping[k]}": v for k, v in unet.items()})
    if clip and "text_encoder" in comps:
        openclip = next((k for k in clip if not k.startswith(LDM_CLIP + "transformer.")), None)
        if openclip:
            raise CheckpointError(f"{origin}: text-encoder key {openclip!r} is not a CLIP transformer (SD-1.x) "
                                  "key; OpenCLIP text encoders (SD-2.x) are not supported")
        te = convert_ldm_clip_checkpoint(clip)
        out.update(with_prefix("text_encoder", te))
    if vae and "vae" in comps:
        n = len({m.group(1) for k in vae if (m := re.match(rf"{LDM_VAE}encoder\.down\.(\d+)\.", k))})
        cfg = {"down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n}
        converted = convert_ldm_vae_checkpoint(vae, cfg)
        converted = {k: v for k, v in converted.items() if v is not None}
        if len(converted) != len(vae):  # the converter drops names it does not know
            raise CheckpointError(f"{origin}: diffusers' VAE converter recognised {len(converted)} of {len(vae)} "
                                  "first_stage_model tensors; unsupported VAE architecture")
        out.update(with_prefix("vae", converted))
    if not out:
        has = [c for c, part in (("unet", unet), ("text_encoder", clip), ("vae", vae)) if part]
        raise CheckpointError(f"{origin}: holds only {', '.join(has) or 'no model'} weights, none of the requested "
                              f"components ({', '.join(comps)}); pass components={tuple(has)!r}")
    return out


_PROBE = "__probe__"


def ldm_unet_key_map(ldm_keys: Iterable[str], layers_per_block: int) -> dict[str, str]:
    """{LDM UNet name (without ``model.diffusion_model.``): diffusers name}, as diffusers' converter maps it.

    ``convert_ldm_unet_checkpoint`` expects a full checkpoint: it counts blocks by the distinct indices it sees,
    so a partial file (Kumari: attention weights only) would be miscounted. We pad every block index up to the
    largest present with a placeholder, run the converter on a dict whose values are the LDM names themselves and
    read the map off its output (placeholders dropped). Names the converter does not know are absent from the map.
    """
    from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint

    keys = list(ldm_keys)
    probe: dict[str, str] = {LDM_UNET_KEY + k: k for k in keys}
    for kind, inner in (("input_blocks", ".0"), ("middle_block", ""), ("output_blocks", ".0")):
        ids = [int(m.group(1)) for k in keys if (m := re.match(rf"{kind}\.(\d+)\.", k))]
        for i in range(max(ids, default=-1) + 1):
            probe.setdefault(f"{LDM_UNET_KEY}{kind}.{i}{inner}.{_PROBE}", _PROBE)
    converted = convert_ldm_unet_checkpoint(probe, {"layers_per_block": layers_per_block})
    mapping: dict[str, str] = {}
    for new, old in converted.items():
        if isinstance(old, str) and old != _PROBE:
            if old in mapping:
                raise CheckpointError(f"LDM key {old!r} maps to both {mapping[old]!r} and {new!r}; cannot convert")
            mapping[old] = new
    return mapping


def _infer_layers_per_block(unet_keys: Iterable[str], origin: str) -> int:
    """``layers_per_block`` from LDM UNet names: the first downsampler sits at input_blocks.{L+1}; a
    cross-attention down block puts attention on every one of its L layers (runs of L consecutive indices)."""
    keys = list(unet_keys)
    ops = sorted(int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k)))
    if ops:
        return ops[0] - 1
    attn = sorted({int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.1\.", k))})
    if attn:
        runs: list[list[int]] = [[attn[0]]]
        for i in attn[1:]:
            if i == runs[-1][-1] + 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        lpb = len(runs[0])
        if all(len(r) == lpb and (r[0] - 1) % (lpb + 1) == 0 for r in runs):
            return lpb
    elif not any(k.startswith("output_blocks.") for k in keys):
        return 1  # only fixed layers / middle block: the block layout does not matter
    raise CheckpointError(f"{origin}: cannot tell the UNet's layers_per_block from its LDM keys; pass "
                          "unet_config= (the base model's diffusers folder or UNet config)")


def read_unet_config(source: Mapping[str, Any] | PathLike) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        cfg = source
        where = "unet_config"
    else:
        p = existing_path(source)
        if p.is_dir():
            p = p / "unet" / "config.json" if (p / "model_index.json").is_file() else p / "config.json"
        if not p.is_file():
            raise CheckpointError(f"{p}: no UNet config.json here; pass a diffusers pipeline or UNet folder")
        cfg = read_json(p)
        where = str(p)
    if "layers_per_block" not in cfg:
        raise CheckpointError(f"{where}: no 'layers_per_block'; pass a diffusers UNet config")
    return cfg
