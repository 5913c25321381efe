"""LoRA files → dense task vectors: ΔW = scale · (alpha / rank) · up @ down for every adapted weight
(rsLoRA files, ``use_rslora`` in the saved PEFT config: alpha / √rank).

    tv = load_lora("lora.safetensors", base="pipe/")   # keys and shapes checked against the base
    -tv, tv + other, ...                                # a TaskVector like any other

Layouts: diffusers/PEFT (``….lora_A.weight``/``lora_B.weight``, alpha from the file's adapter metadata), older
diffusers (``…processor.to_k_lora.down.weight``) and kohya (``lora_unet_…``/``lora_te_…`` with
``.lora_down``/``.lora_up``/``.alpha``). kohya names are converted with ``diffusers.loaders.lora_conversion_utils``;
the only local table turns older diffusers LoRA module names (``processor.to_k_lora``) back into parameter names.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, Union

import torch

from .checkpoints import (
    COMPONENTS,
    PathLike,
    bare_component,
    canonical_key,
    existing_path,
    is_lora_key,
    listing,
    load_weights,
    read_file,
    read_unet_config,
    safetensors_metadata,
    sniff,
)
from .errors import CheckpointError
from .task_vector import TaskVector, nearest_key

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
    p = existing_path(path)
    if p.is_dir():
        cands = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin"))
        if len(cands) != 1:
            raise CheckpointError(f"{p}: expected one LoRA weight file in the folder, found: {listing(p)}")
        p = cands[0]
    if not math.isfinite(scale):
        raise CheckpointError(f"LoRA scale {scale!r} is not a finite number")
    tensors, meta = read_file(p)
    if not tensors:
        raise CheckpointError(f"{p}: no tensors found")
    base_sd = base if isinstance(base, Mapping) else (load_weights(base) if base is not None else None)
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in tensors):
        modules = _kohya_modules(tensors, str(p), base)
    else:
        modules = _diffusers_modules(tensors, str(p), meta)
    deltas: dict[str, torch.Tensor] = {}
    for target, (down, up, alpha, rslora, origin_key) in modules.items():
        delta = _lora_delta(down, up, alpha, scale, f"{p}: {origin_key!r}", rslora=rslora)
        if base_sd is not None:
            delta = _fit_to_base(delta, target, base_sd, f"{p}: {origin_key!r}")
        if not torch.isfinite(delta).all():
            raise CheckpointError(f"{p}: LoRA {origin_key!r} gives NaN/Inf weights; the file is corrupt")
        deltas[target] = deltas[target] + delta if target in deltas else delta
    return TaskVector(deltas)


# Pickles are read to judge them: only below this size (a LoRA is MBs, a model GBs), so a model is never read twice.
LORA_PICKLE_MAX_BYTES = 512 * 2**20


def is_lora_file(path: PathLike) -> bool:
    """Whether a file (or a folder holding one weight file) is a LoRA, by its tensor names. Safetensors files are
    judged by their header; pickles only when small (``LORA_PICKLE_MAX_BYTES``)."""
    from safetensors import safe_open

    p = existing_path(path)
    if p.is_dir():
        cands = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin"))
        if len(cands) != 1 or (p / "config.json").exists() or (p / "model_index.json").exists():
            return False
        p = cands[0]
    kind = sniff(p)
    if kind == "safetensors":
        safetensors_metadata(p)  # a complete, valid header, else a one-line CheckpointError
        with safe_open(str(p), framework="pt") as f:
            keys = list(f.keys())
    elif kind in ("zip", "pickle") and p.stat().st_size < LORA_PICKLE_MAX_BYTES:
        keys = list(read_file(p)[0])
    else:
        return False
    return any(is_lora_key(k) for k in keys)


# down, up, alpha (None: alpha = rank), rsLoRA (alpha/√rank instead of alpha/rank), a key for messages
LoraModule = tuple[torch.Tensor, torch.Tensor, Union[float, None], bool, str]


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
        comp = target.split(".", 1)[0]
        bare = module[len(comp) + 1:] if module.startswith(comp + ".") else module  # the name PEFT matched
        alpha = float(d["alpha"]) if "alpha" in d else _peft_alpha(adapter, comp, bare, origin)
        out[target] = (d["down"], d["up"], alpha, bool(adapter.get(f"{comp}.use_rslora")), d["key"])
    return out


def _prefixed_target(name: str, origin: str) -> str:
    if name.split(".", 1)[0] in COMPONENTS:
        return canonical_key(*name.split(".", 1))
    comp = bare_component(name, controlnet=False)  # old attention-processor files have bare UNet names
    if comp is None:
        raise CheckpointError(f"{origin}: LoRA target {name!r} is not a UNet or text-encoder parameter name")
    return canonical_key(comp, name)


def _peft_alpha(adapter: Mapping[str, Any], comp: str, module: str, origin: str) -> float | None:
    r"""alpha from diffusers' saved PEFT config (``{'unet.lora_alpha': …, 'unet.alpha_pattern': {…}}``), if any.

    ``alpha_pattern`` keys are regular expressions matched against the module's name as PEFT matches them
    (``peft.utils.other.get_pattern_key``: ``re.match(rf"(.*\.)?({key})$", name)``, first matching key wins).
    """
    for pattern, a in (adapter.get(f"{comp}.alpha_pattern") or {}).items():
        try:
            hit = re.match(rf"(.*\.)?({pattern})$", module)
        except re.error as e:
            raise CheckpointError(f"{origin}: alpha_pattern key {pattern!r} in the file's metadata is not a valid "
                                  f"regular expression ({e})") from None
        if hit:
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
        lpb = int(read_unet_config(base)["layers_per_block"])
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
        target = canonical_key(comp, f"{part[0]}.weight")
        alpha = float(sd[alpha_key]) if alpha_key in sd else None
        out[target] = (sd[key], sd[up_key], alpha, False, key)
        used.update((key, up_key, alpha_key))
    leftover = next((k for k in sd if k not in used), None)
    if leftover:
        raise CheckpointError(f"{origin}: key {leftover!r} is not a kohya lora_down/lora_up/alpha tensor; "
                              "unsupported LoRA variant (LoHa/LoKr/DoRA?)")
    return out


def _lora_delta(down: torch.Tensor, up: torch.Tensor, alpha: float | None, scale: float, where: str, *,
                rslora: bool = False) -> torch.Tensor:
    """scale · (alpha/rank) · up @ down (rsLoRA: alpha/√rank), reshaped to the adapted weight (linear, or conv with
    the kernel on down). The rank is read off the tensors, so PEFT's ``rank_pattern`` needs no lookup."""
    rank = down.shape[0]
    if up.shape[1] != rank or (up.ndim == 4 and tuple(up.shape[2:]) != (1, 1)):
        raise CheckpointError(f"{where}: LoRA up {tuple(up.shape)} does not fit down {tuple(down.shape)}")
    if alpha is None:
        alpha = float(rank)  # no alpha stored: alpha = rank (diffusers' and PEFT's default for such files)
    factor = scale * alpha / (math.sqrt(rank) if rslora else rank)
    delta = up.flatten(1).to(torch.float32) @ down.flatten(1).to(torch.float32)
    if down.ndim == 4:  # conv LoRA: down carries the kernel (r, in, kh, kw), up is 1×1 (out, r, 1, 1)
        delta = delta.reshape(up.shape[0], *down.shape[1:])
    return delta * factor


def _fit_to_base(delta: torch.Tensor, target: str, base: Mapping[str, torch.Tensor], where: str) -> torch.Tensor:
    if target not in base:
        near = nearest_key(target, base.keys())
        raise CheckpointError(f"{where}: LoRA target {target!r} is not in the base model"
                              f"{f' (closest: {near!r})' if near else ''}; the LoRA is for a different model")
    shape = base[target].shape
    if delta.shape != shape:
        if delta.numel() != math.prod(shape):
            raise CheckpointError(f"{where}: LoRA gives shape {tuple(delta.shape)} for {target!r} but the base has "
                                  f"{tuple(shape)}; the LoRA is for a different model")
        delta = delta.reshape(shape)  # e.g. a linear LoRA on a 1×1 conv (proj_in/proj_out)
    return delta
