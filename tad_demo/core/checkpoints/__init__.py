"""Checkpoint loading: any checkpoint file or folder → a flat state dict with canonical diffusers keys.

* ``files.py``   — reading bytes safely (safetensors headers, pickles only with ``weights_only=True``), convert;
* ``layouts.py`` — diffusers folders, single files in diffusers or LDM/CompVis layout, Kumari files → canonical
  component-prefixed keys (``unet.…``, ``text_encoder.text_model.…``).

LoRA files become task vectors in ``tad_demo/core/lora.py`` (they need :class:`~tad_demo.core.task_vector.TaskVector`,
which itself reads checkpoints through this package).
"""

from ..errors import CheckpointError
from .files import (
    COMPONENTS,
    PICKLE_SUFFIXES,
    PathLike,
    convert,
    describe,
    existing_path,
    listing,
    read_file,
    read_json,
    read_safetensors,
    safe_torch_load,
    safetensors_metadata,
    sniff,
)
from .layouts import (
    DEFAULT_COMPONENTS,
    TASK_VECTOR_FORMAT,
    bare_component,
    canonical_key,
    is_lora_key,
    ldm_unet_key_map,
    load_weights,
    read_unet_config,
    to_module_keys,
    with_prefix,
)

__all__ = ["COMPONENTS", "DEFAULT_COMPONENTS", "PICKLE_SUFFIXES", "TASK_VECTOR_FORMAT", "CheckpointError", "PathLike",
           "bare_component", "canonical_key", "convert", "describe", "existing_path", "is_lora_key",
           "ldm_unet_key_map", "listing", "load_weights", "read_file", "read_json", "read_safetensors",
           "read_unet_config", "safe_torch_load", "safetensors_metadata", "sniff", "to_module_keys", "with_prefix"]
