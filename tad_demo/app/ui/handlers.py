"""Event handlers: widget values in, component values out. They call the injected service and never import
torch or the library (the service owns validation, models and files); ``edge.shown`` turns the service's errors
into ``gr.Error``."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from typing import Any

import gradio as gr

from ..request import EXAMPLE_FIELDS, RECIPE_FIELDS, REQUEST_FIELDS, GridRequest, request_defaults
from .edge import shown

# What a grid run returns (and the `grid` / `reproduce` API, in this order): one grid image per control kind, then
# these (`shown_controls` goes to a gr.State, not to the API's visible outputs).
AFTER_GRIDS = ("gallery", "table", "metrics_note", "dl_grid", "dl_zip", "dl_csv", "dl_recipe", "status",
               "dl_handout", "shown_controls", "last_run")
STATES = ("shown_controls", "last_run")  # gr.State outputs: not among the API's visible outputs


# The page's query parameters, read in the browser (the load event's own request is not the page's URL).
QUERY_JS = "() => [Object.fromEntries(new URLSearchParams(window.location.search))]"
HEARTBEAT_S = 1.0  # at most this long without a yield while a grid runs (Gradio checks for gone clients per yield)


def session_of(request: gr.Request | None) -> str:
    # gradio_client and browser tabs each get their own session hash; a request without one gets a fresh id.
    return getattr(request, "session_hash", None) or uuid.uuid4().hex


def page_url(request: gr.Request | None) -> str:
    """The page's address without its query (the browser's Referer, else the server's base URL)."""
    headers = getattr(request, "headers", None) or {}
    ref = headers.get("referer") if hasattr(headers, "get") else None
    if ref:
        return ref.split("?", 1)[0].split("#", 1)[0]
    inner = getattr(request, "request", None)
    return str(getattr(inner, "base_url", "") or "/")


def progress_reporter(progress: gr.Progress | None):
    """A ``progress(stage, i, n)`` callback for the service that moves a Gradio progress bar."""
    def report(stage: str, i: int, n: int) -> None:
        if progress is not None:
            desc = stage if "step" in stage or not n else f"{stage} ({i}/{n})"
            progress(i / n if n else 0.0, desc=desc)
    return report


def _grid_signature() -> inspect.Signature:
    """``grid``'s signature as Gradio and the API see it: the request and progress it fills in, then one keyword
    parameter per GridRequest field with the field's default (the one list of fields: ``REQUEST_FIELDS``)."""
    p = inspect.Parameter
    defaults = request_defaults()
    return inspect.Signature([
        p("self", p.POSITIONAL_OR_KEYWORD), p("request", p.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request),
        p("progress", p.POSITIONAL_OR_KEYWORD, default=gr.Progress()),
        *(p(name, p.KEYWORD_ONLY, default=defaults[name]) for name in REQUEST_FIELDS)])


class Handlers:
    """The app's events; ``service`` is a :class:`tad_demo.app.service.Service` (duck-typed here)."""

    def __init__(self, service: Any):
        self.s = service
        self.kinds: tuple[str, ...] = tuple(service.ui_config()["control_kinds"])  # one grid tab per kind
        self.outputs: tuple[str, ...] = (*(f"grid_{k}" for k in self.kinds), *AFTER_GRIDS)

    # --- the heavy events (queued, concurrency_id="gpu") --------------------------------------------------
    # Both are async generators: cells appear as they finish, and when Gradio stops the event (Job.cancel, the
    # Cancel button's `cancels`, a client that went away) the generator is cancelled or closed, which sets the
    # run's cancel flag: the worker stops within one denoising step and restores the weights.
    async def grid(self, request: gr.Request = None, progress=gr.Progress(), **values: Any):  # noqa: B008
        """Run a concept grid. Parameters left at None take the base model's defaults (world.json/catalog)."""
        with shown("grid"):
            spec, normalized = self.s.build(GridRequest.of(values))
            async with contextlib.aclosing(self._stream(normalized, spec, request, progress, remember=True)) as run:
                async for out in run:
                    yield out

    grid.__signature__ = _grid_signature()  # type: ignore[attr-defined]

    async def reproduce(self, recipe: str | None, request: gr.Request = None, progress=gr.Progress()):  # noqa: B008
        """Run an uploaded recipe.yaml (or a run's cells.zip, which carries its condition images)."""
        with shown("reproduce"):
            if not recipe:
                raise gr.Error("upload the recipe.yaml or cells.zip of a run first", title="Cannot run this")
            spec, normalized = self.s.recipe_spec(recipe)
            async with contextlib.aclosing(self._stream(normalized, spec, request, progress)) as run:
                async for out in run:
                    yield out

    async def _stream(self, normalized, spec, request, progress, remember: bool = False):
        """Run the grid in a worker thread; yield the finished cells as they come, then the full outputs."""
        session = session_of(request)
        flag = self.s.begin(session)
        loop = asyncio.get_running_loop()
        finished: asyncio.Queue = asyncio.Queue()
        view = self.s.partial(spec)

        def on_cells(cells: list) -> None:  # worker thread → event loop
            loop.call_soon_threadsafe(finished.put_nowait, cells)

        # on the process's compute thread, with this context (gr.Progress keeps working from there)
        work = asyncio.wrap_future(self.s.submit(
            self.s.compute, normalized, spec, progress=progress_reporter(progress), cancel=flag.is_set,
            on_cells=on_cells))
        try:
            while not work.done() or not finished.empty():
                getter = asyncio.ensure_future(finished.get())
                done, _ = await asyncio.wait({getter, work}, timeout=HEARTBEAT_S,
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    view.add(getter.result())
                    while not finished.empty():
                        view.add(finished.get_nowait())
                    yield self._partial(view)
                else:
                    getter.cancel()
                    if not done:  # nothing new: a heartbeat lets Gradio notice a client that went away
                        yield tuple(gr.skip() for _ in self.outputs)
            run_dir = work.result()  # the service's errors (cancelled, refused, failed) are raised here
        finally:
            if not work.done():  # the event was cancelled or closed: stop the worker within one step
                flag.set()
            self.s.end(session, flag)
        if remember:
            self.s.remember_example(normalized, run_dir)
        yield self._pack(self.s.outputs(run_dir))

    def _partial(self, view: Any) -> tuple:
        """The outputs while a grid runs: the finished cells in place, their metrics rows, a status line. The
        gallery stays empty until the end: Gradio re-encodes every image of a gallery on each update, on the cores
        the generation beside it uses."""
        mosaics = view.mosaics()
        skip = gr.skip()
        grids = tuple(mosaics.get(k, skip) for k in self.kinds)
        after = {"gallery": [], "table": view.table(), "status": view.status()}
        return (*grids, *(after.get(name, skip) for name in AFTER_GRIDS))

    def _pack(self, out: dict[str, Any]) -> tuple:
        files = out["files"]
        return (*(out["grids"][k] for k in self.kinds), out["gallery"], out["table"], out["metrics_note"],
                files["grid"], files["zip"], files["csv"], files["recipe"], out["status"], files["handout"],
                out["controls"], out["run_id"])

    # --- cheap events (queue=False) -----------------------------------------------------------------------
    def cancel(self, request: gr.Request = None) -> str:
        """Stop this session's running grid (within one denoising step; the weights are restored)."""
        if self.s.cancel(session_of(request)):
            return "**Cancelling…** the grid stops after the current denoising step."
        return "Nothing to cancel."

    def example(self, example: Any) -> tuple:
        """Show an example's precomputed (or lazily cached) outputs; otherwise ask for Run."""
        index = example[0] if isinstance(example, (list, tuple)) else example
        rows = self.s.example_rows()
        with shown("example"):
            if not isinstance(index, int) or not 0 <= index < len(rows):
                raise gr.Error("unknown example", title="Cannot show this")
            _, normalized = self.s.build(GridRequest.of(rows[index]))
            run_dir = self.s.cached_run(normalized)
            if run_dir is None:
                note = (f"Example “{rows[index]['label']}” is not precomputed: press **Run** (its result is then "
                        "cached).")
                return tuple(note if name == "status" else gr.skip() for name in self.outputs)
            return self._pack(self.s.outputs(run_dir, cached=True))

    def show_tabs(self, controls: list[str] | None) -> tuple:
        """One tab per control of the shown result; the first one selected."""
        shown_kinds = [k for k in self.kinds if k in (controls or ["none"])] or ["none"]
        return (*(gr.Tab(visible=k in shown_kinds) for k in self.kinds), gr.Tabs(selected=f"tab_{shown_kinds[0]}"))

    def preview(self, controls, condition_source, example, condition_image, sketch, resize_mode, height, width,
                base) -> tuple:
        req = GridRequest.of(dict(controls=controls, condition_source=condition_source, example=example,
                                  condition_image=condition_image, sketch=sketch, resize_mode=resize_mode,
                                  height=height, width=width, base=base))
        try:
            with shown("preview"):
                return self.s.preview(req)
        except gr.Error as e:
            return [], str(e)

    @staticmethod
    def source_visibility(source: str) -> tuple:
        return (gr.update(visible=source == "example"), gr.update(visible=source in ("image", "map")),
                gr.update(visible=source == "sketch"))

    def base_changed(self, base: str, custom: dict | None) -> tuple:
        """New concept lists, defaults and controls for another base model."""
        c = self.s.on_base_change(base)
        d = c["defaults"]
        mine = list((custom or {}).get("concepts", []))
        toy = c["controlnet_versions"] == ["toy world"]
        return (gr.update(choices=c["object_choices"] + mine, value=d["object"]),
                gr.update(choices=c["style_choices"] + mine, value=d["style"]),
                *(gr.update(choices=c["extra_choices"] + mine, value="") for _ in range(3)),
                gr.update(choices=[("none (plain)" if k == "none" else k, k) for k in c["available_controls"]],
                          value=["none"]),
                gr.update(choices=c["controlnet_versions"], value=c["controlnet_versions"][0], visible=not toy),
                d["steps"], d["guidance"], d["height"], d["width"], d["template"])

    def add_model(self, role: str, ref: str | None, upload: str | None, name: str | None, anchor: str | None,
                  base: str, custom: dict | None) -> tuple:
        """Check a user's model and add it to the dropdown of its role (kept in this browser session only)."""
        with shown("adding the model"):
            role, label, value = self.s.add_model(role, ref, upload, name, anchor)
        custom = {"bases": list((custom or {}).get("bases", [])), "concepts": list((custom or {}).get("concepts", []))}
        skip = gr.skip()
        if role == "base":
            custom["bases"] = [*custom["bases"], (label, value)]
            base_update = gr.update(choices=self.s.base_choices() + custom["bases"], value=value)
            return (base_update, *self.base_changed(value, custom)[:5], custom, f"Added base model {label}.")
        custom["concepts"] = [*custom["concepts"], (label, value)]
        c = self.s.on_base_change(base)
        mine = custom["concepts"]
        pick = lambda r: value if role == r else skip  # noqa: E731
        return (skip, gr.update(choices=c["object_choices"] + mine, value=pick("object")),
                gr.update(choices=c["style_choices"] + mine, value=pick("style")),
                gr.update(choices=c["extra_choices"] + mine, value=pick("extra")),
                gr.update(choices=c["extra_choices"] + mine), gr.update(choices=c["extra_choices"] + mine),
                custom, f"Added {label} ({role}).")

    def recipe_loaded(self, recipe: str | None) -> tuple:
        """Show an uploaded recipe's numbers in the widgets (the Reproduce button runs the recipe itself)."""
        n = len(RECIPE_FIELDS)
        if not recipe:
            return (*(gr.skip() for _ in range(n)), "")
        try:
            with shown("reading the recipe"):
                spec, _ = self.s.recipe_spec(recipe)
        except gr.Error as e:
            return (*(gr.skip() for _ in range(n)), f"Recipe refused: {e}")
        f = self.s.recipe_fields(spec)
        return (*(f[k] for k in RECIPE_FIELDS),
                f"Recipe read: {spec.n_images} image(s). Press **Reproduce** to run it.")

    # --- history and compare (cheap: files only) ----------------------------------------------------------
    def remember_run(self, history: list[str] | None, run_id: str | None) -> tuple:
        """Add the run just shown to this session's history: (history, gallery, run A and run B choices)."""
        history = list(history or [])
        if run_id and run_id not in history:
            try:
                with shown("history"):
                    self.s.history_entry(run_id)  # one of this app's runs (not an example's folder)
                history.append(run_id)
            except gr.Error:
                pass
        return self._history_view(history)

    def _history_view(self, history: list[str]) -> tuple:
        entries = []
        for run_id in history:
            try:
                with shown("history"):
                    entries.append(self.s.history_entry(run_id))
            except gr.Error:
                continue  # gone from the server (TAD_MAX_RUNS): dropped from the view
        history = [e["id"] for e in entries]
        choices = [(e["caption"], e["id"]) for e in reversed(entries)]
        gallery = [(e["thumb"], e["caption"]) for e in reversed(entries)]
        a = history[-2] if len(history) > 1 else (history[-1] if history else None)
        b = history[-1] if history else None
        return history, gallery, gr.update(choices=choices, value=a), gr.update(choices=choices, value=b)

    def compare(self, a: str | None, b: str | None) -> tuple:
        """Runs A and B side by side and the per-cell metric deltas."""
        with shown("compare"):
            if not a or not b:
                raise gr.Error("pick two runs of this session (run a grid twice first)", title="Cannot compare")
            c = self.s.compare_runs(a, b)
        return c["a"], c["b"], c["table"], c["note"]

    def load_run(self, run_id: str | None) -> tuple:
        """A run's values back into the inputs (the fields of EXAMPLE_FIELDS it recorded)."""
        with shown("loading the run"):
            if not run_id:
                raise gr.Error("pick a run first", title="Cannot load")
            f = self.s.run_fields(run_id)
        return (*(f.get(k, gr.skip()) for k in EXAMPLE_FIELDS), "Run loaded into the inputs: press **Run grid**.")

    def share_link(self, run_id: str | None, request: gr.Request = None) -> str:
        """The URL of this page with the run's values in its query string (opens and runs the same grid)."""
        if not run_id:
            return ""
        try:
            with shown("share link"):
                query = self.s.share_query(run_id)
        except gr.Error:
            return ""
        return f"{page_url(request)}?{query}"

    def from_query(self, params: dict | None, request: gr.Request = None) -> tuple:
        """On page load: a share link's values (the page's query, read by the browser: ``QUERY_JS``) into the
        inputs, and a new token that starts its grid; without a query the page stays as it is."""
        if not isinstance(params, dict) or not params:
            params = dict(getattr(request, "query_params", None) or {})
        f = self.s.fields_from_query({str(k): str(v) for k, v in params.items()})
        if not f:
            return (*(gr.skip() for _ in EXAMPLE_FIELDS), gr.skip())
        return (*(f.get(k, gr.skip()) for k in EXAMPLE_FIELDS), uuid.uuid4().hex)

    def random_seeds(self, seeds: str | None) -> str:
        return self.s.random_seeds(seeds)

    def status(self) -> str:
        return self.s.status()
