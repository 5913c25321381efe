"""Every error the library raises, in one place.

A library error is a :class:`TadError`: bad input that the caller can fix, with a one-line message naming the
file, key, field or value and what to do. Callers that only want "the library refused this" catch ``TadError``
(the app's service turns it into its own user-facing error; the command line prints it and exits with 2).

    TadError (ValueError)
    ├── CheckpointError       a checkpoint file/folder that cannot be read as asked        core/checkpoints
    ├── TaskVectorError       bad input to task arithmetic                                 core/task_vector
    │   ├── MergeError        bad merge method, weights or parameters                      core/merge_methods
    │   └── PatchError        a combination that cannot be applied to a live model         core/patching
    ├── RecipeError           a recipe YAML that cannot be used                            core/recipe
    ├── WorldError            a world folder / world.json that cannot be used              core/world
    ├── ModelError            a model, ControlNet or vector that cannot be loaded          runtime/models
    ├── ClipUnavailable       CLIP weights that are not on this machine                    runtime/metrics
    ├── ControlError          a ControlNet condition that cannot be made                   runtime/control
    │   └── AnnotatorUnavailable   an annotator's weights are not on this machine
    ├── GridError             a grid that cannot run as specified                          grid
    └── LabError              a research request that cannot run                          research

    Cancelled (RuntimeError)  the user stopped a run; the model's weights are back at the base

Each module re-exports the errors it raises (``from tad_demo.grid import GridError`` works).
"""

from __future__ import annotations


class TadError(ValueError):
    """Bad input to the library; the one-line message names what is wrong and what to do."""


class CheckpointError(TadError):
    """A checkpoint that cannot be read as asked; the one-line message names the file/key and what to do."""


class TaskVectorError(TadError):
    """Bad input to task arithmetic; the message names the key/file and what to do."""


class MergeError(TaskVectorError):
    """Bad merge request (method, weights or parameters); the message says what to change."""


class PatchError(TaskVectorError):
    """A combination that cannot be applied; raised before any weight is written."""


class RecipeError(TadError):
    """A recipe that cannot be used; the message names the field and value."""


class WorldError(TadError):
    """A world folder that cannot be used (no or bad world.json); the message names the file and the field."""


class ModelError(TadError):
    """A model, ControlNet, CLIP or vector that cannot be loaded or does not fit; the message says which."""


class ClipUnavailable(TadError):
    """The requested CLIP weights are not on this machine."""


class ControlError(TadError):
    """A condition that cannot be made as asked; the one-line message says what to change."""


class AnnotatorUnavailable(ControlError):
    """An annotator's weights are not on this machine."""


class GridError(TadError):
    """A grid that cannot run as specified; the one-line message names the field and what to do."""


class LabError(TadError):
    """A research request that cannot run (unknown concept, bad λ list, ...); the message says which value."""


class Cancelled(RuntimeError):
    """The user cancelled the run; the model's weights are back at the base."""


__all__ = ["AnnotatorUnavailable", "Cancelled", "CheckpointError", "ClipUnavailable", "ControlError", "GridError",
           "LabError", "MergeError", "ModelError", "PatchError", "RecipeError", "TadError", "TaskVectorError",
           "WorldError"]
