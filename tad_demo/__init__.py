"""TAD Concept Grid: task arithmetic on Stable Diffusion models (library part).

Public API::

    from tad_demo import TaskVector, merge
    tv = TaskVector.from_pair(base, finetuned)
    merged = merge([tv_a, tv_b], method="ties", weights=[1.0, 1.0], density=0.2)

The layers, from the bottom: ``core`` (task vectors, checkpoints, merging, patching, recipes, worlds), ``runtime``
(loaded models, sampling, metrics, conditions), ``grid`` and ``research`` (what runs on them), ``app`` (the Gradio
app) and ``cli``; ``toyworld`` produces the shipped world. See docs/architecture.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["TadError", "TaskVector", "TaskVectorError", "merge", "__version__"]

if TYPE_CHECKING:
    from .core.errors import TadError, TaskVectorError
    from .core.merge_methods import merge
    from .core.task_vector import TaskVector


def __getattr__(name: str) -> Any:
    # Lazy: `import tad_demo` stays cheap (the app's UI and the command line's --help import it without torch).
    if name in ("TadError", "TaskVectorError"):
        from .core import errors

        return getattr(errors, name)
    if name == "TaskVector":
        from .core.task_vector import TaskVector

        return TaskVector
    if name == "merge":
        # The registry lives in merge_methods.py: a submodule named `merge` would be shadowed by (or shadow)
        # this function on the package.
        from .core.merge_methods import merge

        return merge
    raise AttributeError(f"module 'tad_demo' has no attribute {name!r}")
