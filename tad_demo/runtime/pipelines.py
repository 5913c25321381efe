"""Building diffusers pipelines from model references, and saving edited models with their recipe."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..core.patching import WeightPatcher
from ..core.recipe import Recipe, metadata_for
from .loading import LOADING

log = logging.getLogger(__name__)


def import_libraries() -> None:
    """Import what loading a pipeline and a CLIP needs (diffusers' pipelines and open_clip: ~3.7 s on 2 cores), so
    a caller can pay it up front: the app does before it serves its page, and its background warm start then only
    loads and traces (~1.5 s)."""
    import open_clip  # noqa: F401
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline  # noqa: F401


def load_pipeline(base: str | Path, controlnet: str | Path | list | None = None, dtype: torch.dtype = torch.float32,
                  use_safetensors: bool | None = None):
    """A StableDiffusionPipeline (or its ControlNet variant) from a folder, a single file or a Hub id.

    ``use_safetensors``: None is diffusers' default (safetensors preferred, pickle weights as a fallback); True
    reads safetensors only (the hosted app: no pickle from the Hub is ever unpickled) and fails if there are none.

    1. base: a diffusers folder / Hub id via ``from_pretrained``; a ``.safetensors``/``.ckpt`` via
       ``from_single_file`` (diffusers' own converters; configs from the folder it sits in when that is a
       diffusers pipeline folder);
    2. controlnet(s): ``ControlNetModel.from_pretrained`` each, the pipeline class switched accordingly.
    """
    with LOADING:  # diffusers' loads swap process-wide functions (see loading.py)
        return _load(str(base), controlnet, dtype, use_safetensors)


def _load(base_s: str, controlnet, dtype: torch.dtype, use_safetensors: bool | None):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline

    if Path(base_s).suffix in (".safetensors", ".ckpt"):
        if use_safetensors and Path(base_s).suffix != ".safetensors":
            raise ValueError(f"{base_s}: a pickle checkpoint; only .safetensors weights are read here "
                             "(convert it with `python -m tad_demo convert`)")
        # The component configs: the diffusers folder the file sits in, if it is one (the layout of the SD Hub
        # repos, which ship the single file next to the diffusers folders), so no Hub access is needed; else
        # diffusers fetches the default configs of the checkpoint's type.
        folder = Path(base_s).expanduser().parent
        config = str(folder) if (folder / "model_index.json").is_file() else None
        pipe = StableDiffusionPipeline.from_single_file(base_s, torch_dtype=dtype, config=config)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(base_s, torch_dtype=dtype, safety_checker=None,
                                                       requires_safety_checker=False, use_safetensors=use_safetensors)
    if controlnet is None:
        return pipe
    refs = controlnet if isinstance(controlnet, list) else [controlnet]
    nets = [ControlNetModel.from_pretrained(str(r), torch_dtype=dtype, use_safetensors=use_safetensors)
            for r in refs]
    return StableDiffusionControlNetPipeline(**pipe.components, controlnet=nets[0] if len(nets) == 1 else nets)


def save_merged(recipe: Recipe, out: str | Path) -> Path:
    """Apply the recipe to its base and save: a diffusers folder, or one ``.safetensors`` (diffusers keys
    with component prefixes) when ``out`` ends in ``.safetensors``. Recipe + input hashes go with it."""
    from safetensors.torch import save_file

    recipe = recipe.with_hashes()
    merged = recipe.merged_vector()
    pipe = load_pipeline(recipe.base)
    patcher = WeightPatcher(pipe)
    patcher.apply([(merged, 1.0)])
    out = Path(out)
    if out.suffix == ".safetensors":
        state = {}
        for comp in ("unet", "text_encoder", "vae"):
            for k, v in getattr(pipe, comp).state_dict().items():
                state[f"{comp}.{k}"] = v.contiguous()
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out), metadata=metadata_for(recipe))
    else:
        pipe.save_pretrained(out)
        (out / "tad_recipe.yaml").write_text(recipe.to_yaml())
    patcher.restore()
    log.info("saved merged model to %s", out)
    return out
