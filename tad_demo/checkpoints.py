"""Loading every checkpoint kind into flat state dicts keyed by component-prefixed diffusers parameter names.

    load_weights("pipe/")                      # diffusers pipeline folder -> {"unet.…", "text_encoder.text_model.…"}
    load_weights("unet/")                      # one model folder (config.json) -> {"unet.…"}
    load_weights("model.safetensors")          # single file, diffusers keys (prefixed or bare) or LDM/CompVis keys
    load_weights("kumari.ckpt")                # {'state_dict': {model.diffusion_model.…attn2.to_k.weight: …}}
    load_weights("delta.bin")                  # Kumari diffusers format {'unet': {name: tensor}}
    load_lora("lora.safetensors", base=...)    # PEFT / old diffusers / kohya LoRA -> dense TaskVector
    convert("model.ckpt", "model.safetensors") # pickle -> safetensors, loaded with weights_only=True

Canonical keys: ``unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight``,
``text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight``, ``vae.…``, ``controlnet.…``. The text
encoder keeps the ``text_model.`` level that real SD checkpoints have, even though transformers >= 5 saves (and
names the live module's parameters) without it; ``to_module_keys`` maps back to a live module's names.

Safety: pickles are only ever read with ``torch.load(..., weights_only=True)``; anything that needs more is refused.
Values are returned exactly as stored (dtype kept, NaN/Inf untouched: ``TaskVector.from_pair`` reports them).
LDM names are converted with diffusers' own converters (``diffusers.loaders.single_file_utils``; partial files via
``ldm_unet_key_map``), kohya LoRA names with ``diffusers.loaders.lora_conversion_utils``; the only local table turns
older diffusers LoRA module names (``processor.to_k_lora``) back into parameter names.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, Union

import torch

from .task_vector import TaskVector, TaskVectorError

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
V = TypeVar("V")

COMPONENTS = ("unet", "text_encoder", "vae", "controlnet")
DEFAULT_COMPONENTS = ("unet", "text_encoder")  # what task vectors of SD fine-tunes touch
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
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


class CheckpointError(TaskVectorError):
    """A checkpoint that cannot be read as asked; the one-line message names the file/key and what to do."""


# --- raw files ---------------------------------------------------------------------------------------------

def _existing(path: PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        parent = p.parent if p.parent.exists() else None
        hint = f" ({parent} has: {_listing(parent)})" if parent else ""
        raise CheckpointError(f"{p}: no such file or folder; check the path{hint}")
    return p


def _listing(folder: Path, limit: int = 8) -> str:
    names = sorted(x.name + ("/" if x.is_dir() else "") for x in folder.iterdir())
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "nothing"


def _sniff(path: Path) -> str:
    """'zip' (torch.save), 'pickle' (legacy torch.save / raw pickle), 'safetensors' or 'unknown', by content."""
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors first: its 8-byte header length may well start with 0x80, like a pickle.
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return "unknown"


def _one_line(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    return " ".join(text.split())


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The parsed JSON header, after checking that the file is a complete safetensors file."""
    size = path.stat().st_size
    kind = _sniff(path) if size else "empty"
    if kind in ("zip", "pickle"):
        raise CheckpointError(
            f"{path} is not a safetensors file (it looks like a PyTorch pickle); rename it to .ckpt/.bin and use "
            f"`python -m tad_demo convert`")
    if size < 8:
        raise CheckpointError(f"{path}: file is truncated ({size} bytes); download or write it again")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            if kind != "safetensors":
                raise CheckpointError(f"{path} is not a safetensors file (no valid header); check what the file is")
            raise CheckpointError(f"{path}: file is truncated (header of {n} bytes, file of {size}); "
                                  "download or write it again")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path} is not a safetensors file (header is not JSON: {e}); "
                                  "check what the file is") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (header is not a JSON object)")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, IndexError, TypeError, ValueError):
        raise CheckpointError(f"{path}: corrupt safetensors header (bad data_offsets); download or write it "
                              "again") from None
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: file is truncated (needs {8 + n + end} bytes, has {size}); "
                              "download or write it again")
    return header


def safetensors_metadata(path: PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (empty if none)."""
    p = _existing(path)
    return dict(_safetensors_header(p).get("__metadata__") or {})


def read_safetensors(path: PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, as stored."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = _existing(path)
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder, not a safetensors file; use load_weights() for model folders")
    _safetensors_header(p)
    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{p}: cannot read safetensors file ({_one_line(e)}); the file may be corrupt: "
                              "download or write it again") from None


def safe_torch_load(path: PathLike) -> Any:
    """Unpickle a PyTorch checkpoint with ``weights_only=True``: tensors and plain containers only, no code runs."""
    p = _existing(path)
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder, not a checkpoint file; use load_weights() for model folders")
    if _sniff(p) == "safetensors":
        log.warning("%s is a safetensors file despite its name; reading it as safetensors", p)
        return read_safetensors(p)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = _one_line(e)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
        what = (f"contains objects of type {found.group(1)}" if found else
                f"needs more than tensors and plain containers ({_weights_only_reason(msg)})")
        raise CheckpointError(
            f"{p}: refused to load: the pickle {what}, and unpickling it would run arbitrary code; if you trust "
            "it, load it yourself in a trusted environment and save the weights with safetensors "
            "(safetensors.torch.save_file)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{p}: cannot read PyTorch checkpoint ({_one_line(e)[:200]}); the file may be "
                              "truncated or corrupt: download or write it again") from None


def _weights_only_reason(msg: str) -> str:
    m = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", msg)
    return m.group(1).strip() if m else msg[:200]


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flat tensors and safetensors metadata of a single checkpoint file (safetensors or pickle)."""
    if path.suffix == ".safetensors":
        return read_safetensors(path), safetensors_metadata(path)
    if path.suffix in PICKLE_SUFFIXES:
        return _flatten(safe_torch_load(path), str(path)), {}
    raise CheckpointError(f"{path}: unsupported file type {path.suffix!r}; expected .safetensors or one of "
                          f"{', '.join(PICKLE_SUFFIXES)}")


def _flatten(obj: Any, origin: str) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from what a pickle held: {'state_dict': …} is unwrapped, {'unet': {…}} (Kumari
    delta.bin) becomes 'unet.'-prefixed keys; other entries (step counters, optimizer state) are dropped."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{origin}: holds a {type(obj).__name__}, not a dict of tensors; save a state dict")
    if isinstance(obj.get("state_dict"), Mapping):
        others = [str(k) for k in obj if k != "state_dict"]
        if others:
            log.info("%s: using 'state_dict', ignoring %s", origin, ", ".join(others[:8]))
        obj = obj["state_dict"]
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[str(k)] = v
        elif k in COMPONENTS and isinstance(v, Mapping):
            for kk, vv in v.items():
                if isinstance(vv, torch.Tensor):
                    out[f"{k}.{kk}"] = vv
                else:
                    dropped.append(f"{k}.{kk}")
        else:
            dropped.append(str(k))
    if dropped:
        log.info("%s: ignoring %d non-tensor entries (%s)", origin, len(dropped), ", ".join(dropped[:8]))
    return out


# --- public entry point ------------------------------------------------------------------------------------

def load_weights(path: PathLike, components: Iterable[str] | str | None = None, *,
                 unet_config: Mapping[str, Any] | PathLike | None = None) -> dict[str, torch.Tensor]:
    """Weights of a checkpoint as {component-prefixed diffusers name: tensor}, whatever the layout.

    ``components`` picks parts of multi-component sources (pipeline folders, prefixed or LDM single files;
    default unet + text_encoder); a single-model folder or a bare single-component file always gives its one
    model. ``unet_config`` (a dict, a diffusers folder or a config.json) tells the LDM converter the UNet's
    ``layers_per_block`` when it cannot be read off the file's keys.
    """
    p = _existing(path)
    comps = _components(components)
    if p.is_dir():
        if (p / "model_index.json").is_file():
            return _load_pipeline_folder(p, comps)
        if (p / "config.json").is_file():
            return _load_model_folder(p)
        raise CheckpointError(f"{p}: neither a diffusers pipeline folder (model_index.json) nor a model folder "
                              f"(config.json); it has: {_listing(p)}")
    tensors, meta = _read_file(p)
    if meta.get("format") == TASK_VECTOR_FORMAT:
        raise CheckpointError(f"{p} is a task vector (differences), not model weights; use TaskVector.load()")
    if not tensors:
        raise CheckpointError(f"{p}: no tensors found")
    lora_key = next((k for k in tensors if _is_lora_key(k)), None)
    if lora_key:
        raise CheckpointError(f"{p} is a LoRA (key {lora_key!r}), not model weights; use load_lora()")
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
            index = json.loads((folder / "model_index.json").read_text())
            present = [k for k, v in index.items() if isinstance(v, list) and v[0] and (folder / k).is_dir()]
            raise CheckpointError(f"{folder}: pipeline has no {comp}/ folder (it has: {', '.join(present)}); "
                                  f"request only components it has")
        out.update(_with_prefix(comp, _read_model_weights(sub)))
    return out


def _load_model_folder(folder: Path) -> dict[str, torch.Tensor]:
    comp = _component_of_config(folder / "config.json")
    return _with_prefix(comp, _read_model_weights(folder))


def _component_of_config(config_path: Path) -> str:
    cfg = json.loads(config_path.read_text())
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
                              f"{_listing(folder)}")
    if found.name.endswith(".index.json"):
        weight_map = json.loads(found.read_text()).get("weight_map", {})
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            out.update(_read_file(_existing(folder / shard))[0])
        return out
    return _read_file(found)[0]


def _canonical(comp: str, key: str) -> str:
    """``comp.key``; text-encoder keys get the ``text_model.`` level if the file lacks it (transformers >= 5)."""
    if comp == "text_encoder" and key.startswith(CLIP_INNER_ROOTS):
        key = "text_model." + key
    return f"{comp}.{key}"


def _with_prefix(comp: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_canonical(comp, k): v for k, v in state.items()}


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

def _bare_component(key: str, controlnet: bool) -> str | None:
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
        return {_canonical(*k.split(".", 1)): v for k, v in tensors.items()}, True
    controlnet = any(k.split(".", 1)[0] in CONTROLNET_ROOTS for k in tensors)
    by_comp: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        comp = _bare_component(k, controlnet)
        if comp is None:
            raise CheckpointError(f"{origin}: key {k!r} is not a diffusers UNet/ControlNet/VAE or CLIP text encoder "
                                  "parameter name, nor an LDM (model.diffusion_model.…) name; unsupported layout")
        by_comp.setdefault(comp, {})[k] = v
    out = {}
    for comp, part in by_comp.items():
        out.update(_with_prefix(comp, part))
    # A bare file of one model is what the user pointed at: return it whatever ``components`` says.
    return out, len(by_comp) > 1


def _is_lora_key(key: str) -> bool:
    return bool(re.search(r"^lora_(unet|te\d?)_|\.lora_[AB]\.|lora_(down|up)\.|_lora\.(down|up)\.|\.lora\.(down|up)\."
                          r"|\.lora_linear_layer\.", key))


# --- single files in LDM / CompVis layout ------------------------------------------------------------------

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
            lpb = int(_read_unet_config(unet_config)["layers_per_block"])
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
        out.update(_with_prefix("text_encoder", te))
    if vae and "vae" in comps:
        n = len({m.group(1) for k in vae if (m := re.match(rf"{LDM_VAE}encoder\.down\.(\d+)\.", k))})
        cfg = {"down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n}
        converted = convert_ldm_vae_checkpoint(vae, cfg)
        converted = {k: v for k, v in converted.items() if v is not None}
        if len(converted) != len(vae):  # the converter drops names it does not know
            raise CheckpointError(f"{origin}: diffusers' VAE converter recognised {len(converted)} of {len(vae)} "
                                  "first_stage_model tensors; unsupported VAE architecture")
        out.update(_with_prefix("vae", converted))
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


def _read_unet_config(source: Mapping[str, Any] | PathLike) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        cfg = source
        where = "unet_config"
    else:
        p = _existing(source)
        if p.is_dir():
            p = p / "unet" / "config.json" if (p / "model_index.json").is_file() else p / "config.json"
        if not p.is_file():
            raise CheckpointError(f"{p}: no UNet config.json here; pass a diffusers pipeline or UNet folder")
        cfg = json.loads(p.read_text())
        where = str(p)
    if "layers_per_block" not in cfg:
        raise CheckpointError(f"{where}: no 'layers_per_block'; pass a diffusers UNet config")
    return cfg


# --- LoRA -> dense task vector -----------------------------------------------------------------------------

# Older diffusers LoRA names (attention processors, kohya conversion output) -> "<module>.lora.{down,up}.weight".
_OLD_LORA_NAMES = (
    (r"\.processor\.to_(q|k|v)_lora\.", r".to_\1.lora."),
    (r"\.processor\.to_out_lora\.", r".to_out.0.lora."),
    (r"\.self_attn\.to_(q|k|v)_lora\.", r".self_attn.\1_proj.lora."),
    (r"\.self_attn\.to_out_lora\.", r".self_attn.out_proj.lora."),
    (r"\.lora_linear_layer\.", r".lora."),
)
_LORA_PART = re.compile(r"^(?P<module>.+)\.(?:lora_(?P<ab>[AB])(?:\.default)?|lora\.(?P<du>down|up))\.weight$")


def _lora_part(name: str) -> tuple[str, str] | None:
    """(module name, 'down'|'up'|'alpha') of a diffusers-layout LoRA key, or None."""
    for pattern, repl in _OLD_LORA_NAMES:
        name = re.sub(pattern, repl, name)
    if name.endswith(".alpha"):
        return name[: -len(".alpha")], "alpha"
    m = _LORA_PART.match(name)
    if not m:
        return None
    role = m.group("du") or ("down" if m.group("ab") == "A" else "up")
    return m.group("module"), role


def load_lora(path: PathLike, base: PathLike | Mapping[str, torch.Tensor] | None = None,
              scale: float = 1.0) -> TaskVector:
    """A LoRA file as a dense task vector: ΔW = scale · (alpha / rank) · up @ down for every adapted weight.

    Layouts: diffusers/PEFT (``….lora_A.weight``/``lora_B.weight``, alpha from the file's adapter metadata),
    older diffusers (``…processor.to_k_lora.down.weight``) and kohya (``lora_unet_…``/``lora_te_…`` with
    ``.lora_down``/``.lora_up``/``.alpha``). Keys are the base model's names with component prefix
    (``unet.….to_k.weight``). With ``base`` (a path or a prefixed state dict) every key and shape is checked.
    """
    p = _existing(path)
    if p.is_dir():
        cands = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin"))
        if len(cands) != 1:
            raise CheckpointError(f"{p}: expected one LoRA weight file in the folder, found: {_listing(p)}")
        p = cands[0]
    if not math.isfinite(scale):
        raise CheckpointError(f"LoRA scale {scale!r} is not a finite number")
    tensors, meta = _read_file(p)
    if not tensors:
        raise CheckpointError(f"{p}: no tensors found")
    base_sd = base if isinstance(base, Mapping) else (load_weights(base) if base is not None else None)
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in tensors):
        modules = _kohya_modules(tensors, str(p), base)
    else:
        modules = _diffusers_modules(tensors, str(p), meta)
    deltas: dict[str, torch.Tensor] = {}
    for target, (down, up, alpha, origin_key) in modules.items():
        delta = _lora_delta(down, up, alpha, scale, f"{p}: {origin_key!r}")
        if base_sd is not None:
            delta = _fit_to_base(delta, target, base_sd, f"{p}: {origin_key!r}")
        if not torch.isfinite(delta).all():
            raise CheckpointError(f"{p}: LoRA {origin_key!r} gives NaN/Inf weights; the file is corrupt")
        deltas[target] = deltas[target] + delta if target in deltas else delta
    return TaskVector(deltas)


LoraModule = tuple[torch.Tensor, torch.Tensor, Union[float, None], str]  # down, up, alpha, a key for messages


def _diffusers_modules(tensors: dict[str, torch.Tensor], origin: str, meta: dict[str, str]) -> dict[str, LoraModule]:
    parts: dict[str, dict[str, Any]] = {}
    for k, v in tensors.items():
        part = _lora_part(k)
        if part is None:
            raise CheckpointError(f"{origin}: key {k!r} is not a LoRA down/up/alpha tensor in diffusers, PEFT or "
                                  "kohya layout; unsupported LoRA variant (LoHa/LoKr/DoRA?)")
        module, role = part
        parts.setdefault(module, {"key": k})[role] = v
    adapter = json.loads(meta["lora_adapter_metadata"]) if meta.get("lora_adapter_metadata") else {}
    out: dict[str, LoraModule] = {}
    for module, d in parts.items():
        if "down" not in d or "up" not in d:
            raise CheckpointError(f"{origin}: LoRA module {module!r} lacks its "
                                  f"{'down (lora_A)' if 'down' not in d else 'up (lora_B)'} weight; file is incomplete")
        target = _prefixed_target(module + ".weight", origin)
        alpha = float(d["alpha"]) if "alpha" in d else _peft_alpha(adapter, target)
        out[target] = (d["down"], d["up"], alpha, d["key"])
    return out


def _prefixed_target(name: str, origin: str) -> str:
    if name.split(".", 1)[0] in COMPONENTS:
        return _canonical(*name.split(".", 1))
    comp = _bare_component(name, controlnet=False)  # old attention-processor files have bare UNet names
    if comp is None:
        raise CheckpointError(f"{origin}: LoRA target {name!r} is not a UNet or text-encoder parameter name")
    return _canonical(comp, name)


def _peft_alpha(adapter: Mapping[str, Any], target: str) -> float | None:
    """alpha from diffusers' saved PEFT config ({'unet.lora_alpha': …, 'unet.alpha_pattern': {…}}), if any."""
    comp, name = target.split(".", 1)
    module = name.rsplit(".", 1)[0]
    for pattern, a in (adapter.get(f"{comp}.alpha_pattern") or {}).items():
        if module == pattern or module.endswith("." + pattern):
            return float(a)
    a = adapter.get(f"{comp}.lora_alpha")
    return float(a) if a is not None else None


def _kohya_modules(tensors: dict[str, torch.Tensor], origin: str,
                   base: PathLike | Mapping[str, torch.Tensor] | None) -> dict[str, LoraModule]:
    from diffusers.loaders.lora_conversion_utils import (
        _convert_text_encoder_lora_key,
        _convert_unet_lora_key,
        _maybe_map_sgm_blocks_to_diffusers,
    )

    sd = dict(tensors)
    if any(re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_", k) for k in sd):
        # kohya's SGM/LDM-style UNet names need the block layout, as in diffusers' own loader.
        if base is None or isinstance(base, Mapping):
            raise CheckpointError(f"{origin}: kohya LoRA with LDM-style block names (input_blocks_…); pass base= "
                                  "as the base model's diffusers folder so the block layout is known")
        lpb = int(_read_unet_config(base)["layers_per_block"])
        sd = _maybe_map_sgm_blocks_to_diffusers(sd, SimpleNamespace(layers_per_block=lpb))
    out: dict[str, LoraModule] = {}
    used: set[str] = set()
    for key in list(sd):
        if not key.endswith(".lora_down.weight"):
            continue
        name = key.split(".", 1)[0]
        up_key, alpha_key = name + ".lora_up.weight", name + ".alpha"
        if up_key not in sd:
            raise CheckpointError(f"{origin}: kohya LoRA {name!r} has lora_down but no lora_up; file is incomplete")
        if name.startswith("lora_unet_"):
            converted, comp = _convert_unet_lora_key(key), "unet"
        else:
            converted, comp = _convert_text_encoder_lora_key(key, name), "text_encoder"
            if name.startswith("lora_te2_"):
                comp = "text_encoder_2"
        part = _lora_part(converted)
        if part is None or part[1] != "down":
            raise CheckpointError(f"{origin}: cannot map kohya LoRA {name!r} to a diffusers name (got {converted!r})")
        target = _canonical(comp, f"{part[0]}.weight")
        alpha = float(sd[alpha_key]) if alpha_key in sd else None
        out[target] = (sd[key], sd[up_key], alpha, key)
        used.update((key, up_key, alpha_key))
    leftover = next((k for k in sd if k not in used), None)
    if leftover:
        raise CheckpointError(f"{origin}: key {leftover!r} is not a kohya lora_down/lora_up/alpha tensor; "
                              "unsupported LoRA variant (LoHa/LoKr/DoRA?)")
    return out


def _lora_delta(down: torch.Tensor, up: torch.Tensor, alpha: float | None, scale: float, where: str) -> torch.Tensor:
    """scale · (alpha/rank) · up @ down, reshaped to the adapted weight (linear, or conv with kernel on down)."""
    rank = down.shape[0]
    if up.shape[1] != rank or (up.ndim == 4 and tuple(up.shape[2:]) != (1, 1)):
        raise CheckpointError(f"{where}: LoRA up {tuple(up.shape)} does not fit down {tuple(down.shape)}")
    factor = scale * (alpha / rank if alpha is not None else 1.0)  # no alpha stored: alpha = rank
    delta = up.flatten(1).to(torch.float32) @ down.flatten(1).to(torch.float32)
    if down.ndim == 4:  # conv LoRA: down carries the kernel (r, in, kh, kw), up is 1×1 (out, r, 1, 1)
        delta = delta.reshape(up.shape[0], *down.shape[1:])
    return delta * factor


def _fit_to_base(delta: torch.Tensor, target: str, base: Mapping[str, torch.Tensor], where: str) -> torch.Tensor:
    if target not in base:
        from .task_vector import _nearest

        near = _nearest(target, base.keys())
        raise CheckpointError(f"{where}: LoRA target {target!r} is not in the base model"
                              f"{f' (closest: {near!r})' if near else ''}; the LoRA is for a different model")
    shape = base[target].shape
    if delta.shape != shape:
        if delta.numel() != math.prod(shape):
            raise CheckpointError(f"{where}: LoRA gives shape {tuple(delta.shape)} for {target!r} but the base has "
                                  f"{tuple(shape)}; the LoRA is for a different model")
        delta = delta.reshape(shape)  # e.g. a linear LoRA on a 1×1 conv (proj_in/proj_out)
    return delta


# --- pickle -> safetensors ---------------------------------------------------------------------------------

def convert(src: PathLike, dst: PathLike, *, overwrite: bool = False) -> Path:
    """Convert a pickled checkpoint to safetensors (loaded with ``weights_only=True``; names kept as stored).

    ``{'state_dict': …}`` is unwrapped, ``{'unet': {…}}`` becomes ``unet.``-prefixed keys, non-tensor entries
    are dropped (logged). Never overwrites ``src``; overwrites an existing ``dst`` only with ``overwrite=True``.
    """
    from safetensors.torch import save_file

    s, d = _existing(src), Path(dst).expanduser()
    if s.is_dir():
        raise CheckpointError(f"{s} is a folder; convert takes one checkpoint file")
    if _sniff(s) == "safetensors":
        raise CheckpointError(f"{s} is already a safetensors file; nothing to convert")
    if d.suffix != ".safetensors":
        raise CheckpointError(f"{d}: the output name must end in .safetensors")
    if d.exists() and d.resolve() == s.resolve():
        raise CheckpointError(f"{d}: refusing to overwrite the source checkpoint; choose another output path")
    if d.exists() and not overwrite:
        raise CheckpointError(f"{d} already exists; choose another output path or pass overwrite=True")
    tensors = _flatten(safe_torch_load(s), str(s))
    if not tensors:
        raise CheckpointError(f"{s}: no tensors found")
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        v = v.detach().contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen and v.numel():
            v = v.clone()  # safetensors refuses tensors sharing memory (tied weights, views)
        seen.add(ptr)
        out[k] = v
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = d.with_name(d.name + ".tmp")
    save_file(out, str(tmp), metadata={"format": "pt", "converted_from": s.name})
    tmp.replace(d)
    log.info("converted %s -> %s (%d tensors)", s, d, len(out))
    return d
