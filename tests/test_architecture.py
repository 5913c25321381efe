"""What the layout promises beyond import-linter's contracts (pyproject.toml, run by CI): the command line's help
loads no torch, the public import paths hold, and the one list of grid request fields drives the API."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


HEAVY = ("torch", "diffusers", "transformers", "open_clip", "gradio")


def _help(*args: str) -> tuple[str, set[str]]:
    """The help text of ``python -m tad_demo *args --help`` and the top-level packages it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "tad_demo", *args, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return proc.stdout, {m.split(".")[0] for m in modules}


def test_help_imports_no_torch():
    """`python -m tad_demo --help` builds every command's parser (library and research views) without torch or
    any model library: the heavy modules load when a command runs."""
    text, packages = _help()
    for command in ("vector", "inspect", "merge", "convert", "grid", "sweep", "multi", "analyze", "adaptive", "eval",
                    "ablate"):
        assert command in text, command
    assert not packages & set(HEAVY), sorted(packages & set(HEAVY))


def test_command_help_imports_no_torch():
    for command in ("grid", "sweep", "eval", "ablate"):
        text, packages = _help(command)
        assert text.startswith("usage:") and not packages & set(HEAVY), (command, sorted(packages & set(HEAVY)))


def test_public_import_paths():
    from tad_demo import TadError, TaskVector, TaskVectorError, merge
    from tad_demo.core.merge_methods import merge as core_merge
    from tad_demo.core.patching import WeightPatcher as CoreWeightPatcher
    from tad_demo.core.task_vector import TaskVector as CoreTaskVector
    from tad_demo.patching import WeightPatcher

    assert TaskVector is CoreTaskVector and merge is core_merge and WeightPatcher is CoreWeightPatcher
    assert issubclass(TaskVectorError, TadError) and issubclass(TadError, ValueError)


def test_the_grid_api_takes_exactly_the_request_fields():
    """One list of grid request fields: the dataclass's fields are the handler's (hence the API's) parameters."""
    from tad_demo.app.request import REQUEST_FIELDS, GridRequest, request_defaults
    from tad_demo.app.ui.handlers import Handlers

    params = inspect.signature(Handlers.grid).parameters
    keyword = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]
    assert keyword == list(REQUEST_FIELDS) and len(REQUEST_FIELDS) == 28  # axes: object_lambdas, style_lambdas
    assert {n: params[n].default for n in keyword} == request_defaults() == GridRequest().__dict__
