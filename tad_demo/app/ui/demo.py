"""The Blocks layout and its wiring.

Left: what to run (models, λ, prompt and sampling, control, multi-concept, recipe). Right: examples, the grid(s)
in one tab per control, the metrics table with its formula, downloads, the gallery of cells.

A second top-level tab, "Research" (research.py here), holds the sweep, multi-concept, analysis and adaptive views
when ``create_demo`` gets a research service.

The grid's inputs are wired by field name: ``REQUEST_FIELDS`` (from the GridRequest dataclass) names the widgets,
the handler's parameters and the API's parameters alike.

Serving rules: the heavy events (``grid``, ``reproduce`` and the research views) share ``concurrency_id="gpu"``
with a limit of 1; everything else is cheap and runs with ``queue=False``. API names: ``/grid``, ``/reproduce``,
``/cancel``, ``/sweep``, ``/multi``, ``/analysis``, ``/adaptive``.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..request import EXAMPLE_FIELDS, RECIPE_FIELDS, REQUEST_FIELDS
from .components import Image, Number, Slider
from .handlers import QUERY_JS, STATES, Handlers
from .research import create_research
from .theme import CSS, theme

GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}
CHEAP = {"queue": False, "api_visibility": "private", "show_progress": "hidden"}
TAB_LABELS = {"none": "Grid (no control)", "canny": "Canny", "depth": "Depth", "scribble": "Scribble"}


def launch_options(settings: Any) -> dict[str, Any]:
    """Keyword arguments of ``demo.launch`` (Gradio 6 takes the theme and CSS there)."""
    return {"server_name": settings.host, "server_port": settings.port, "share": False, "theme": theme(),
            "css": CSS, "max_file_size": f"{settings.max_upload_mb}mb",
            "allowed_paths": [str(settings.assets), str(settings.work_dir)], "footer_links": ["api", "gradio"]}


def create_demo(service: Any, research: Any = None) -> gr.Blocks:
    """The app's Blocks, wired to ``service`` (a :class:`tad_demo.app.service.Service`) and, when given, a
    "Research" tab wired to ``research`` (a :class:`tad_demo.app.research_service.ResearchService`)."""
    cfg = service.ui_config()
    h = Handlers(service)
    ttl = service.settings.cache_ttl
    with gr.Blocks(title="TAD Concept Grid", delete_cache=(ttl, ttl)) as demo:
        custom = gr.State({"bases": [], "concepts": []})   # this browser session's added models
        shown = gr.State(["none"])                         # controls of the result on screen (tabs)
        last_run = gr.State(None)                          # id of the run on screen
        history = gr.State([])                             # this session's run ids, oldest first
        # a new value when a share link's grid should run (a hidden Textbox: a State updated by a load event does
        # not fire its change event)
        shared = gr.Textbox(visible=False)
        gr.Markdown("# TAD Concept Grid\nTask arithmetic on diffusion models: rows edit the **object**, columns the "
                    "**style** — λ>0 ablates, 0 is the base model, λ<0 enhances. Same seed in every cell.",
                    elem_classes="tad-title")
        with gr.Tabs(selected="grid", elem_id="views"):
            with gr.Tab("Concept grid", id="grid"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=380):
                        w = _inputs(cfg)
                    with gr.Column(scale=5, min_width=600):
                        o = _outputs(cfg, w, h.kinds)
            if research is not None:
                with gr.Tab("Research", id="research"):
                    create_research(research, GPU, CHEAP)

        states = {"shown_controls": shown, "last_run": last_run}
        grid_outputs = [states[name] if name in STATES else o[name] for name in h.outputs]
        tabs_out = [o[f"tab_{k}"] for k in h.kinds] + [o["tabs"]]
        # 1. the heavy events: one queue, one at a time
        # the progress sits on the grid, minimal: the cells streaming into the grid stay visible under it
        progress_on = [o[f"grid_{k}"] for k in h.kinds]
        run = w["run"].click(h.grid, inputs_kwargs={k: w[k] for k in REQUEST_FIELDS}, outputs=grid_outputs,
                             api_name="grid", show_progress_on=progress_on, show_progress="minimal", **GPU)
        rep = w["reproduce"].click(h.reproduce, inputs=[w["recipe"]], outputs=grid_outputs, api_name="reproduce",
                                   show_progress_on=progress_on, show_progress="minimal", **GPU)
        history_out = [history, o["history"], o["run_a"], o["run_b"]]
        for event in (run, rep):
            event.then(h.show_tabs, inputs=shown, outputs=tabs_out, **CHEAP).then(h.status, outputs=w["loaded"],
                                                                                   **CHEAP)
            event.then(h.remember_run, inputs=[history, last_run], outputs=history_out, **CHEAP)
            event.then(h.share_link, inputs=last_run, outputs=o["share"], **CHEAP)
        # a share link (?object_lambdas=…&seeds=…): its values fill the inputs, then its grid runs
        query = gr.JSON({}, visible=False)
        demo.load(h.from_query, inputs=query, outputs=[w[f] for f in EXAMPLE_FIELDS] + [shared], js=QUERY_JS,
                  **CHEAP)
        from_link = shared.change(h.grid, inputs_kwargs={k: w[k] for k in REQUEST_FIELDS}, outputs=grid_outputs,
                                  show_progress_on=progress_on, show_progress="minimal", api_visibility="private",
                                  **GPU)
        from_link.then(h.show_tabs, inputs=shown, outputs=tabs_out, **CHEAP).then(h.status, outputs=w["loaded"],
                                                                                   **CHEAP)
        from_link.then(h.remember_run, inputs=[history, last_run], outputs=history_out, **CHEAP)
        from_link.then(h.share_link, inputs=last_run, outputs=o["share"], **CHEAP)
        o["compare"].click(h.compare, inputs=[o["run_a"], o["run_b"]],
                           outputs=[o["cmp_a"], o["cmp_b"], o["cmp_table"], o["cmp_note"]], **CHEAP)
        o["load_a"].click(h.load_run, inputs=o["run_a"], outputs=[w[f] for f in EXAMPLE_FIELDS] + [o["status"]],
                          **CHEAP)
        # 2. cancel: our flag stops the worker within a step; `cancels` drops queued/streaming work client-side
        w["cancel"].click(h.cancel, outputs=o["status"], cancels=[run, rep, from_link], queue=False,
                          api_name="cancel")
        # 3. examples: precomputed outputs load instantly, without the model
        w["examples"].load_input_event.then(h.example, inputs=[w["examples"].dataset], outputs=grid_outputs,
                                            **CHEAP).then(h.show_tabs, inputs=shown, outputs=tabs_out, **CHEAP)
        # 4. cheap helpers
        base_out = [w["object"], w["style"], w["extra1"], w["extra2"], w["extra3"], w["controls"],
                    w["controlnet_version"], w["steps"], w["guidance"], w["height"], w["width"], w["prompt_template"]]
        w["base"].input(h.base_changed, inputs=[w["base"], custom], outputs=base_out, **CHEAP)
        w["add"].click(h.add_model, inputs=[w["add_role"], w["add_ref"], w["add_file"], w["add_name"],
                                            w["add_anchor"], w["base"], custom],
                       outputs=[w["base"], w["object"], w["style"], w["extra1"], w["extra2"], w["extra3"], custom,
                                w["add_note"]], **CHEAP)
        w["randomize"].click(h.random_seeds, inputs=w["seeds"], outputs=w["seeds"], **CHEAP)
        w["condition_source"].change(h.source_visibility, inputs=w["condition_source"],
                                     outputs=[w["example"], w["condition_image"], w["sketch"]], **CHEAP)
        preview_in = [w[k] for k in ("controls", "condition_source", "example", "condition_image", "sketch",
                                     "resize_mode", "height", "width", "base")]
        gr.on([w[k].change for k in ("controls", "condition_source", "example", "condition_image", "sketch",
                                     "resize_mode", "height", "width")],
              h.preview, inputs=preview_in, outputs=[w["preview"], w["size_note"]], trigger_mode="always_last",
              **CHEAP)
        _wire_merge(cfg, w)
        w["recipe"].upload(h.recipe_loaded, inputs=w["recipe"], outputs=[w[k] for k in RECIPE_FIELDS] + [o["status"]],
                           **CHEAP)
        demo.load(h.status, outputs=w["loaded"], **CHEAP)
    return demo


# --- the left column --------------------------------------------------------------------------------------

def _inputs(cfg: dict[str, Any]) -> dict[str, Any]:
    """The left column, section by section; every widget in one dict by name (request fields by field name)."""
    w: dict[str, Any] = {}
    with gr.Row():
        w["run"] = gr.Button("Run grid", variant="primary", size="lg", elem_classes="tad-run", scale=3)
        w["cancel"] = gr.Button("Cancel", variant="stop", size="lg", scale=1)
    for section in (_models, _coefficients, _sampling, _control, _multi_concept, _recipe):
        section(cfg, w)
    return w


def _models(cfg: dict[str, Any], w: dict[str, Any]) -> None:
    """Base model, object and style concepts, and adding one's own models."""
    d = cfg["defaults"]
    with gr.Accordion("Models", open=True):
        w["base"] = gr.Dropdown(cfg["base_choices"], value=cfg["base"], label="Base model", allow_custom_value=True,
                                info="toy world: runs on a CPU in seconds; SD-1.x: needs a GPU and a download")
        w["object"] = gr.Dropdown(cfg["object_choices"], value=d["object"], label="Object concept (rows)",
                                  allow_custom_value=True, info="target → anchor the checkpoint ablates it to")
        w["style"] = gr.Dropdown(cfg["style_choices"], value=d["style"], label="Style concept (columns)",
                                 allow_custom_value=True)
        w["loaded"] = gr.Markdown()
        with gr.Accordion("Add a model", open=False):
            hosted = cfg["hosted"]
            w["add_role"] = gr.Radio(["base", "object", "style", "extra"], value="object", label="Use as")
            w["add_ref"] = gr.Textbox(label="Hub id" + ("" if hosted else " or local folder / file"),
                                      placeholder="owner/name" + ("" if hosted else "  or  /path/to/model"))
            w["add_file"] = gr.File(label="…or upload " + " / ".join(cfg["upload_types"]),
                                    file_types=cfg["upload_types"], type="filepath")
            with gr.Row():
                w["add_name"] = gr.Textbox(label="Target word", placeholder="snoopy")
                w["add_anchor"] = gr.Textbox(label="Anchor word", placeholder="dog")
            w["add"] = gr.Button("Add")
            w["add_note"] = gr.Markdown(
                ("Hosted: Hub ids and .safetensors uploads only. " if hosted else "") +
                (f"Concept-ablation checkpoints: [{cfg['concept_page']}]({cfg['concept_page']})."
                 if cfg["concept_page"] else ""))


def _coefficients(cfg: dict[str, Any], w: dict[str, Any]) -> None:
    """The λ values of each axis, as lists: λ > 0 ablates, 0 is the base, λ < 0 enhances."""
    lim = cfg["limits"]
    lam, n = lim["max_lambda"], lim["max_axis"]
    info = (f"1–{n} values, comma-separated, each within ±{lam:g} — λ>0 ablates, 0 is the base, λ<0 enhances "
            f"(grid ≤ {lim['max_images']} images)")
    with gr.Accordion("Coefficients λ", open=True):
        w["object_lambdas"] = gr.Textbox("1, 0, -1", label="Object λ (rows, top to bottom)", info=info,
                                         elem_id="object-lambdas")
        w["style_lambdas"] = gr.Textbox("1, 0, -1", label="Style λ (columns, left to right)", info=info,
                                        elem_id="style-lambdas")


def _sampling(cfg: dict[str, Any], w: dict[str, Any]) -> None:
    """The prompt template, seeds, steps, guidance, size, CLIP metrics."""
    lim = cfg["limits"]
    d = cfg["defaults"]
    with gr.Accordion("Prompt and sampling", open=True):
        w["prompt_template"] = gr.Textbox(d["template"], label="Prompt", info="slots {object} and {style} are filled "
                                          "with the target words (optional: any prompt works)")
        with gr.Row():
            w["seeds"] = gr.Textbox("42", label=f"Seeds (1–{lim['max_seeds']}, comma-separated)", scale=3)
            w["randomize"] = gr.Button("Random", scale=1, min_width=90)
        with gr.Row():
            w["steps"] = Number(d["steps"], label=f"Steps (1–{lim['max_steps']})", precision=0)
            w["guidance"] = Number(d["guidance"], label=f"Guidance (0–{lim['max_guidance']:g})", step=0.5)
        with gr.Row():
            w["height"] = Number(d["height"], label="Height (px, ×8)", precision=0, step=8)
            w["width"] = Number(d["width"], label="Width (px, ×8)", precision=0, step=8)
        w["clip_metrics"] = gr.Checkbox(True, label="CLIP score / accuracy per cell")


def _control(cfg: dict[str, Any], w: dict[str, Any]) -> None:
    """ControlNet controls, where their condition comes from, and its preview."""
    lim = cfg["limits"]
    d = cfg["defaults"]
    with gr.Accordion("Control (ControlNet)", open=True):
        w["controls"] = gr.CheckboxGroup([(k if k != "none" else "none (plain)", k) for k in cfg["control_kinds"]
                                          if k in cfg["available_controls"]], value=["none"],
                                         label="Controls: one grid per ticked box")
        w["condition_source"] = gr.Radio(cfg["condition_sources"], value="example", label="Condition from")
        w["example"] = gr.Dropdown(cfg["examples"], value=d["object"] if d["object"] in cfg["examples"] else
                                   (cfg["examples"][0] if cfg["examples"] else None), label="Toy-world example scene")
        w["condition_image"] = Image(type="filepath", label="Photo (annotator) or ready condition map",
                                        sources=["upload", "clipboard"], visible=False, height=260)
        w["sketch"] = gr.Sketchpad(type="pil", label="Sketch (becomes a white-on-black scribble)", visible=False,
                                   canvas_size=(512, 512), height=340,
                                   brush=gr.Brush(colors=["#000000"], default_size=10, color_mode="fixed"))
        with gr.Row():
            w["conditioning_scale"] = Slider(0, lim["max_scale"], value=1.0, step=0.05,
                                                label="Conditioning scale")
            w["resize_mode"] = gr.Radio(cfg["resize_modes"], value="resize", label="Resize mode",
                                        info="resize: stretch · crop: fill and cut · pad: fit, black bars")
        toy = cfg["controlnet_versions"] == ["toy world"]
        w["controlnet_version"] = gr.Dropdown(cfg["controlnet_versions"], value=cfg["controlnet_versions"][0],
                                              label="ControlNet version", visible=not toy)
        w["preview"] = gr.Gallery(label="Condition preview", columns=3, fit_columns=False, height="auto",
                                  object_fit="contain", allow_preview=False)
        w["size_note"] = gr.Markdown("No control selected: the grid has no condition.")


def _multi_concept(cfg: dict[str, Any], w: dict[str, Any]) -> None:
    """Extra concepts added to every cell, and the merge method with its parameters."""
    lim = cfg["limits"]
    lam = lim["max_lambda"]
    with gr.Accordion("Multi-concept addition and merging", open=False):
        gr.Markdown("Extra concepts are added to **every** cell with their own λ.")
        for i in (1, 2, 3):
            with gr.Row(visible=i <= lim["max_extra"]):
                w[f"extra{i}"] = gr.Dropdown(cfg["extra_choices"], value="", label=f"Extra concept {i}",
                                             allow_custom_value=True, scale=3)
                # a number box, not a slider: a slider in the browser would silently clamp λ = 99 to the maximum
                w[f"extra{i}_lambda"] = Number(1.0, step=0.05, label=f"λ (within ±{lam:g})", scale=2)
        methods = cfg["merge_methods"]
        w["merge_method"] = gr.Dropdown([(m["name"], m["name"]) for m in methods], value="linear",
                                        label="Merge method (how the vectors of a cell combine)")
        w["merge_info"] = gr.Markdown(_method_info(methods[0]))
        w["merge_widgets"] = {}
        for p in _union_params(methods):
            w["merge_widgets"][p["name"]] = _param_widget(p)
        w["merge_params"] = gr.JSON({}, visible=False)


def _recipe(cfg: dict[str, Any], w: dict[str, Any]) -> None:
    """Upload a run's recipe (or zip) to reproduce it."""
    with gr.Accordion("Reproduce a recipe", open=False):
        w["recipe"] = gr.File(label="recipe.yaml (or the run's cells.zip, which carries the conditions)",
                              file_types=[".yaml", ".yml", ".zip"], type="filepath")
        w["reproduce"] = gr.Button("Reproduce")

def _method_info(m: dict[str, Any]) -> str:
    return f"*{m['description']}* — [{m.get('citation') or m['reference']}]({m['reference']})"


def _union_params(methods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for m in methods:
        for p in m["params"]:
            seen.setdefault(p["name"], p)
    return list(seen.values())


def _param_widget(p: dict[str, Any]) -> gr.components.Component:
    label = f"{p['name'].rstrip('_')} {p['range']}"
    if p["kind"] == "choice":
        return gr.Dropdown(list(p["choices"]), value=p["default"], label=label, info=p["description"], visible=False)
    if p["kind"] == "int":
        return gr.Number(p["default"], label=label, info=p["description"], precision=0, visible=False)
    lo, hi = p["low"], p["high"]
    if p.get("slider"):
        lo, hi = (p["slider"][0] if lo is None else lo), (p["slider"][1] if hi is None else hi)
    if lo is None or hi is None:
        return gr.Number(p["default"], label=label, info=p["description"], visible=False)
    eps = (hi - lo) / 100
    lo = lo if p["low_inclusive"] else lo + eps
    hi = hi if p["high_inclusive"] else hi - eps
    return gr.Slider(lo, hi, value=p["default"], step=eps, label=label, info=p["description"], visible=False)


def _wire_merge(cfg: dict[str, Any], w: dict[str, Any]) -> None:
    """Method change shows its parameters (at their defaults); any change rewrites the hidden merge_params."""
    methods = {m["name"]: m for m in cfg["merge_methods"]}
    names = list(w["merge_widgets"])
    widgets = [w["merge_widgets"][n] for n in names]

    def on_method(method: str) -> tuple:
        m = methods.get(method, methods["linear"])
        own = {p["name"]: p for p in m["params"]}
        ups = [gr.update(visible=n in own, value=own[n]["default"]) if n in own else gr.update(visible=False)
               for n in names]
        return (_method_info(m), *ups, {n: p["default"] for n, p in own.items()})

    def on_param(method: str, *values: Any) -> dict[str, Any]:
        own = {p["name"] for p in methods.get(method, methods["linear"])["params"]}
        return {n: v for n, v in zip(names, values) if n in own}

    w["merge_method"].change(on_method, inputs=w["merge_method"],
                             outputs=[w["merge_info"], *widgets, w["merge_params"]], **CHEAP)
    for wid in widgets:
        wid.change(on_param, inputs=[w["merge_method"], *widgets], outputs=w["merge_params"], **CHEAP)


# --- the right column -------------------------------------------------------------------------------------

def _outputs(cfg: dict[str, Any], w: dict[str, Any], kinds: tuple[str, ...]) -> dict[str, Any]:
    o: dict[str, Any] = {}
    o["status"] = gr.Markdown("Pick an example, or set the inputs and press **Run grid**.",
                              elem_classes="tad-status", elem_id="status")
    w["examples"] = _examples(cfg, w)
    with gr.Tabs(selected="tab_none") as o["tabs"]:
        for k in kinds:
            with gr.Tab(TAB_LABELS.get(k, k), id=f"tab_{k}", visible=k == "none") as o[f"tab_{k}"]:
                # 70vh: the whole grid fits on a 16:9 screen under the header, however large the PNG is
                o[f"grid_{k}"] = gr.Image(label=TAB_LABELS.get(k, k), show_label=False, type="filepath", format="png",
                                          interactive=False, elem_classes="tad-grid", elem_id=f"grid-{k}",
                                          height="70vh", buttons=["download", "fullscreen"])
    o["metrics_note"] = gr.Markdown(f"`{cfg['formula']}`", elem_id="metrics-note")
    o["table"] = gr.Dataframe(headers=["control", "object λ", "style λ", "CLIP score (object)",
                                       "CLIP acc (object)", "CLIP score (style)", "CLIP acc (style)", "seeds"],
                              label="Metrics per cell (mean over seeds)", interactive=False, wrap=True,
                              column_widths=["11%", "9%", "9%", "17%", "14%", "17%", "14%", "9%"],
                              elem_classes="tad-metrics", elem_id="metrics-table")
    with gr.Row():
        o["dl_grid"] = gr.DownloadButton("Grid PNG", value=None)
        o["dl_zip"] = gr.DownloadButton("All images (zip)", value=None)
        o["dl_csv"] = gr.DownloadButton("Metrics CSV", value=None)
        o["dl_recipe"] = gr.DownloadButton("Recipe YAML", value=None)
        o["dl_handout"] = gr.DownloadButton("Handout (HTML, printable)", value=None)
    o["share"] = gr.Textbox(label="Share link: opens this page with these inputs and runs the same grid",
                            interactive=False, buttons=["copy"], elem_id="share-link")
    with gr.Accordion("Cells", open=False):
        o["gallery"] = gr.Gallery(label="Every image (recipe in its PNG text chunks)", columns=6, height=420,
                                  object_fit="contain")
    _history(o)
    return o


def _history(o: dict[str, Any]) -> None:
    """This session's runs, and two of them side by side with the per-cell metric deltas."""
    with gr.Accordion("History and compare (this session's runs)", open=False, elem_id="history"):
        o["history"] = gr.Gallery(label="Runs of this session, newest first", columns=5, height=240,
                                  object_fit="contain", allow_preview=False, elem_id="history-gallery")
        with gr.Row():
            o["run_a"] = gr.Dropdown([], label="Run A", scale=3)
            o["run_b"] = gr.Dropdown([], label="Run B", scale=3)
        with gr.Row():
            o["compare"] = gr.Button("Compare A and B", variant="secondary")
            o["load_a"] = gr.Button("Load run A into the inputs")
        with gr.Row():
            o["cmp_a"] = gr.Image(label="A", type="filepath", interactive=False, height=360, elem_id="compare-a")
            o["cmp_b"] = gr.Image(label="B", type="filepath", interactive=False, height=360, elem_id="compare-b")
        o["cmp_note"] = gr.Markdown()
        o["cmp_table"] = gr.Dataframe(label="Per cell: Δ = B − A (same seeds)", interactive=False, wrap=True,
                                      elem_id="compare-table")


def _examples(cfg: dict[str, Any], w: dict[str, Any]) -> gr.Examples:
    """Examples that fill every input; their outputs come precomputed (the handler chained to the click)."""
    rows = cfg["example_rows"]
    values = [[r[f] for f in EXAMPLE_FIELDS] for r in rows] or [[None] * len(EXAMPLE_FIELDS)]
    return gr.Examples(values, inputs=[w[f] for f in EXAMPLE_FIELDS], example_labels=[r["label"] for r in rows] or
                       ["(no toy world installed)"], label="Examples — precomputed, load instantly",
                       cache_examples=False, run_on_click=False, elem_id="examples")
