"""TAD Concept Grid: task arithmetic on Stable Diffusion models (library part).

Public API (contract ★1 in DESIGN.md)::

    from tad_demo import TaskVector, merge
    tv = TaskVector.from_pair(base, finetuned)
    merged = merge([tv_a, tv_b], method="ties", weights=[1.0, 1.0], density=0.2)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["TaskVector", "TaskVectorError", "merge", "__version__"]

if TYPE_CHECKING:
    from .merge_methods import merge
    from .task_vector import TaskVector, TaskVectorError


def __getattr__(name: str) -> Any:
    # Lazy: `import tad_demo` stays cheap (the UI layer imports it without pulling in torch).
    if name in ("TaskVector", "TaskVectorError"):
        from . import task_vector

        return getattr(task_vector, name)
    if name == "merge":
        # The registry lives in merge_methods.py: a submodule named `merge` would be shadowed by (or shadow)
        # this function on the package.
        from .merge_methods import merge

        return merge
    raise AttributeError(f"module 'tad_demo' has no attribute {name!r}")
