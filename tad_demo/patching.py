"""Kept for ``from tad_demo.patching import WeightPatcher`` (the path older READMEs show): the module is
``tad_demo.core.patching``."""

from .core.patching import PatchError, WeightPatcher, torch_threads

__all__ = ["PatchError", "WeightPatcher", "torch_threads"]
