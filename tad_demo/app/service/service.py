"""The grid service: widget values → validated GridSpec → grid run → the files the UI and the API return.

    service = Service(Settings.from_env())
    spec, normalized = service.build(GridRequest(object_lambdas="0.5, 0, -1", steps=4))  # validation only (cheap)
    run_dir = service.compute(normalized, spec, progress=print)                # the heavy part → a run folder
    outputs = service.outputs(run_dir)                                          # what the UI/API shows

One instance per process, one :class:`~tad_demo.runtime.models.Models` cache (``run_grid`` holds its lock).
Every public method raises only the app's own errors (``app/errors.py``: one line, for a person); the UI edge
turns them into ``gr.Error``. The parts, one job each:

    choices.py     what the UI offers for a base (concepts, defaults, controls)
    sources.py     model references: local paths, Hub ids, uploads (and the Hub download at run time)
    build.py       a request → GridSpec (every value checked) and its normalized form
    conditions.py  ControlNet conditions of a request, previews
    runs.py        cancel flags, the run into a bounded run folder
    examples.py    the precomputed / lazily cached examples
    outputs.py     a run folder → grids, gallery, metrics table, downloads, status
    recipes.py     reproducing an uploaded recipe
    caps.py        the app's caps on a grid (the one check of the form, the API and recipes)
    stream.py      a running grid's finished cells, for the UI to show as they come
    history.py     a session's runs: history entries, compare, back into the inputs
    handout.py     the printable one-page HTML of a run
    share.py       share links: a run's values as a query string, and back
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ...core.limits import HARD
from ...core.merge_methods import describe as describe_merge_methods
from ...grid import GridSpec
from ...runtime.control import CONTROL_KINDS, RESIZE_MODES
from ...runtime.metrics import FORMULA, SCORE_SCALE
from ...runtime.models import Models
from ...runtime.pipelines import import_libraries
from ..catalog import BaseEntry, Catalog, app_world
from ..errors import ServiceError, UserError
from ..request import TOY, GridRequest
from ..settings import Settings
from . import outputs as run_outputs
from . import share
from .build import RequestBuilder
from .choices import Choices
from .conditions import CONDITION_SOURCES, Conditions
from .examples import Examples
from .guard import guard
from .history import History
from .recipes import Recipes
from .runs import Runs
from .sources import CHECKPOINT_SUFFIXES, Sources, short
from .stream import PartialGrid

log = logging.getLogger(__name__)


class Service:
    """Validation, model references, runs and their files, cancel flags. One instance per process."""

    def __init__(self, settings: Settings, models: Models | None = None):
        self.settings = settings
        self.catalog = Catalog.load(settings.catalog)
        self.world = app_world(settings.assets)
        # Hosted: Hub weights are read from safetensors only (a pickle can run code when unpickled).
        self.models = models or Models(device=settings.device, use_safetensors=True if settings.hosted else None,
                                        threads=settings.threads or None)
        self.choices = Choices(self.catalog, self.world)
        self.sources = Sources(settings)
        self.conditions = Conditions(self.world)
        self.budget = settings.budget(str(self.models.device))
        self.builder = RequestBuilder(settings, self.choices, self.sources, self.conditions, self.budget)
        self.runs = Runs(settings, self.models, self.sources)
        self.examples = Examples(settings, self.world, self.choices.defaults_for(TOY), self.build)
        self.recipes = Recipes(settings, self.choices, self.sources, self.budget)
        self.history = History(self.runs.runs_dir, settings.max_runs)
        try:  # Hugging Face ZeroGPU: the heavy call gets a GPU for its duration; elsewhere `spaces` is absent
            import spaces

            self.compute = spaces.GPU(duration=120)(self.compute)
        except ImportError:
            pass

    # --- what the UI offers --------------------------------------------------------------------------------
    def bases(self) -> list[BaseEntry]:
        return self.choices.bases()

    def base_choices(self) -> list[tuple[str, str]]:
        return self.choices.base_choices()

    def on_base_change(self, base: str) -> dict[str, Any]:
        return self.choices.on_base_change(base)

    def ui_config(self) -> dict[str, Any]:
        """Everything the UI builders need, as plain data (they don't import the library)."""
        s = self.settings
        base = self.choices.default_base()
        return {
            **self.choices.on_base_change(base), "hosted": s.hosted, "base": base,
            "base_choices": self.choices.base_choices(), "control_kinds": list(CONTROL_KINDS),
            "condition_sources": [(v, k) for k, v in CONDITION_SOURCES.items()],
            "examples": self.conditions.examples(), "resize_modes": list(RESIZE_MODES),
            "merge_methods": describe_merge_methods(),
            "limits": {"max_steps": s.max_steps, "max_side": s.max_side, "min_side": s.min_side,
                       "max_seeds": s.max_seeds, "max_images": s.max_images, "max_lambda": s.max_lambda,
                       "max_extra": s.max_extra, "max_guidance": s.max_guidance, "max_scale": s.max_scale,
                       "max_axis": HARD.axis, "budget": self.budget,
                       "max_upload_mb": s.max_upload_mb},
            "upload_types": [".safetensors"] if s.hosted else list(CHECKPOINT_SUFFIXES),
            "formula": FORMULA, "score_scale": SCORE_SCALE, "concept_page": self.catalog.concept_page,
            "example_rows": self.example_rows(),
        }

    @staticmethod
    def random_seeds(current: str | None = None) -> str:
        n = max(1, len([x for x in str(current or "").replace(";", ",").split(",") if x.strip()]))
        return ", ".join(str(random.randrange(0, 2**31)) for _ in range(n))

    def start_warm_up(self) -> Future | None:
        """Load and trace the default grid's models in the background (the app's default base: the toy world, else
        the catalog's first model), so the first grid runs as fast as the next ones; a grid clicked meanwhile
        waits. None when the default grid cannot be built here (e.g. its checkpoints are not on this machine)."""
        try:
            spec, _ = self.build(GridRequest(base=self.choices.default_base()))
        except ServiceError as e:
            log.warning("no warm start: %s", e)
            return None
        self.runs.warm.clear()
        import_libraries()  # ~3.7 s of imports before the page is served, so a first click waits ~1.5 s, not ~6 s
        return self.submit(self.runs.warm_up, spec)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn`` (``compute``, a research view) on the process's one compute thread; see Models.submit."""
        return self.models.submit(fn, *args, **kwargs)

    def status(self) -> str:
        """One line on what is loaded; never waits for a running grid (page loads call it)."""
        if not self.runs.warm.is_set():
            return "Warming up: loading and tracing the model in the background (a grid clicked now waits for it)."
        d = self.models.describe(wait=False)
        if d is None:
            return "A grid is running; models are loaded."
        if not d["base"]:
            return "No model loaded yet (the first run loads it)."
        return (f"Loaded: {short(d['base'])} on {d['device']}, {len(d['controlnets'])} ControlNet(s), "
                f"{d['vectors']} task vector(s), CLIP: {', '.join(short(c) for c in d['clip']) or 'none'}.")

    # --- requests ------------------------------------------------------------------------------------------
    @staticmethod
    def request_of(values: Mapping[str, Any]) -> GridRequest:
        """A GridRequest from widget values keyed by field name (other keys are ignored)."""
        return GridRequest.of(values)

    def build(self, req: GridRequest) -> tuple[GridSpec, dict[str, Any]]:
        """Validate a request into a GridSpec (no model is loaded; Hub ids stay ids) and its normalized form."""
        with guard("validation"):
            return self.builder.build(req)

    def add_model(self, role: str, ref: str | None, upload: str | None, name: str | None,
                  anchor: str | None) -> tuple[str, str, str]:
        """Check a user's model (a typed reference or an upload); returns (role, label, value) for a dropdown."""
        with guard("adding the model"):
            return self.sources.add_model(role, ref, upload, name, anchor)

    def preview(self, req: GridRequest) -> tuple[list, str]:
        """Condition previews (one per control) and a line with the final size."""
        kinds = [k for k in self.builder.controls(req.controls) if k != "none"]
        if not kinds:
            return [], "No control selected: the grid has no condition."
        d = self.choices.defaults_for(req.base or self.choices.default_base())
        try:
            width = self.builder.side(d["width"] if req.width is None else req.width, "width")
            height = self.builder.side(d["height"] if req.height is None else req.height, "height")
        except UserError as e:
            return [], str(e)
        return self.conditions.preview(req, kinds, width, height)

    # --- running -------------------------------------------------------------------------------------------
    def begin(self, session: str) -> threading.Event:
        return self.runs.begin(session)

    def end(self, session: str, flag: threading.Event) -> None:
        self.runs.end(session, flag)

    def cancel(self, session: str) -> bool:
        return self.runs.cancel(session)

    def compute(self, normalized: Mapping[str, Any], spec: GridSpec, *,
                progress: Callable[[str, int, int], None] | None = None,
                cancel: Callable[[], bool] | None = None, out_dir: Path | None = None,
                on_cells: Callable[[list], None] | None = None) -> Path:
        """Run the grid and write its folder (see runs.py); ``on_cells`` gets each call's finished cells."""
        return self.runs.compute(normalized, spec, progress=progress, cancel=cancel, out_dir=out_dir,
                                 on_cells=on_cells)

    @staticmethod
    def partial(spec: GridSpec) -> PartialGrid:
        """An empty view of a running grid, filled with the cells ``compute`` reports (``on_cells``)."""
        return PartialGrid(spec)

    def outputs(self, run_dir: Path, cached: bool = False) -> dict[str, Any]:
        """What the UI and the API show for a run folder (fresh or cached)."""
        with guard("showing the result"):
            return run_outputs.outputs(run_dir, cached)

    # --- history and compare -------------------------------------------------------------------------------
    def history_entry(self, run_id: str) -> dict[str, str]:
        """Thumbnail and summary of one of this app's runs (for a session's history gallery)."""
        with guard("history"):
            return self.history.entry(self.history.find(run_id))

    def compare_runs(self, a: str, b: str) -> dict[str, Any]:
        """Two runs side by side with per-cell metric deltas (B − A, same seeds)."""
        with guard("comparing runs"):
            return self.history.compare(a, b)

    def run_fields(self, run_id: str) -> dict[str, Any]:
        """Request field values that show a run in the inputs."""
        with guard("loading the run"):
            return self.history.fields(run_id)

    def share_query(self, run_id: str) -> str:
        """The query string of a share link that reproduces a run's grid."""
        return share.share_query(self.run_fields(run_id))

    @staticmethod
    def fields_from_query(params: Mapping[str, str]) -> dict[str, Any]:
        """Request field values from a share link's query parameters (checked when the grid runs)."""
        return share.fields_from_query(params)

    # --- examples and recipes ------------------------------------------------------------------------------
    @property
    def precomputed_dir(self) -> Path:
        return self.examples.precomputed_dir

    @property
    def example_cache(self) -> Path:
        return self.examples.example_cache

    def example_rows(self) -> list[dict[str, Any]]:
        return self.examples.rows()

    def cached_run(self, normalized: Mapping[str, Any]) -> Path | None:
        return self.examples.cached_run(normalized)

    def remember_example(self, normalized: Mapping[str, Any], run_dir: Path) -> None:
        self.examples.remember(normalized, run_dir)

    def fingerprint(self, normalized: Mapping[str, Any]) -> dict[str, str]:
        return self.examples.fingerprint(normalized)

    def recipe_spec(self, path: str) -> tuple[GridSpec, dict[str, Any]]:
        """A checked GridSpec from an uploaded recipe.yaml (or a run's zip with its conditions)."""
        with guard("reading the recipe"):
            return self.recipes.spec(path)

    def recipe_fields(self, spec: GridSpec) -> dict[str, Any]:
        return self.recipes.fields(spec)
