"""The "Research" tab group: Sweep, Multi-concept, Analysis, Adaptive — each a column of inputs beside its plots,
tables and CSV downloads.

Builders only: the events call an injected :class:`tad_demo.app.research_service.ResearchService` (no torch or
library import here; its errors become ``gr.Error`` in ``edge.shown``). The heavy events share the grid's
``concurrency_id`` (``gpu`` dict from demo.py); their API names are ``/sweep``, ``/multi``, ``/analysis``,
``/adaptive``. Cancel stops a run between its stages. A base model dropdown (the grid's list) sits above the four
tabs; every view takes its value (``base``) and the concept pickers follow it. The base and the concept pickers
pass their values on as sent (``components.py``): the service checks them against the chosen base's concepts.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from .components import CheckboxGroup, Dropdown
from .edge import shown
from .handlers import progress_reporter, session_of

IMAGE = {"type": "filepath", "format": "png", "interactive": False, "buttons": ["download", "fullscreen"]}
# the widgets that follow the base model, in the order of ResearchHandlers.base_changed's outputs
FOLLOW_BASE = ("note", "sweep_concept", "sweep_steps", "multi_concepts", "multi_order", "multi_steps",
               "analysis_concepts", "expression", "prompt", "pool", "t_switch", "adaptive_steps", "top_k",
               "alpha", "calibration")


class ResearchHandlers:
    """Widget values in, component values out; ``research`` does the validation and the work."""

    def __init__(self, research: Any):
        self.r = research

    def _run(self, method: Any, request: gr.Request | None, progress: Any, **kwargs: Any) -> dict[str, Any]:
        session = session_of(request)
        flag = self.r.begin(session)
        try:
            with shown(getattr(method, "__name__", "research view")):
                # on the compute thread (see Service.submit); this one waits for it
                return self.r.submit(method, **kwargs, progress=progress_reporter(progress),
                                     cancel=flag.is_set).result()
        finally:
            self.r.end(session, flag)

    def sweep(self, concept: str, lambdas: str = "-2, -1, 0, 0.5, 1", n_prompts: float = 4,
              steps: float | None = None, base: str | None = None, request: gr.Request = None,
              progress=gr.Progress()) -> tuple:  # noqa: B008
        """CLIP score and accuracy of a concept, its anchor and controls for each λ (λ>0 ablates, <0 enhances)."""
        out = self._run(self.r.sweep, request, progress, concept=concept, lambdas=lambdas, n_prompts=n_prompts,
                        steps=steps, base=base)
        return out["status"], out["plot"], out["table"], out["csv"]

    def multi(self, concepts: list[str], methods: list[str] | None = None, n_prompts: float = 2,
              steps: float | None = None, base: str | None = None, request: gr.Request = None,
              progress=gr.Progress()) -> tuple:  # noqa: B008
        """Ablate the first N concepts at once (N = 1 … all) with each merge method; target vs control accuracy."""
        out = self._run(self.r.multi, request, progress, concepts=concepts, methods=methods or ["linear"],
                        n_prompts=n_prompts, steps=steps, base=base)
        return out["status"], out["control_vs_n"], out["tradeoff"], out["table"], out["csv"], out["detail"]

    def analysis(self, concepts: list[str], expression: str = "", base: str | None = None, request: gr.Request = None,
                 progress=gr.Progress()) -> tuple:  # noqa: B008
        """Cosine heatmaps (global, per UNet block) and per-vector/per-pair measures; an analogy expression."""
        out = self._run(self.r.analysis, request, progress, concepts=concepts, expression=expression, base=base)
        return (out["status"], out["cosine"], out["blocks"], out["vectors"], out["pairs"], out["csv"],
                out["vectors_csv"])

    def adaptive(self, prompt: str, pool: list[str], t_switch: float = 10, alpha: str = "2", top_k: float = 2,
                 seeds: str = "0", steps: float | None = None, base: str | None = None, calibration: float = 0,
                 request: gr.Request = None, progress=gr.Progress()) -> tuple:  # noqa: B008
        """Rank the pool's vectors for a prompt (shared base prefix, CLIP similarity) and apply the top k."""
        out = self._run(self.r.adaptive, request, progress, prompt=prompt, pool=pool, t_switch=t_switch,
                        alpha=alpha, top_k=top_k, seeds=seeds, steps=steps, base=base, calibration=calibration)
        return out["status"], out["strip"], out["table"], out["csv"]

    def cancel(self, request: gr.Request = None) -> str:
        if self.r.cancel(session_of(request)):
            return "**Cancelling…** the run stops after its current stage."
        return "Nothing to cancel."

    def base_changed(self, base: str) -> tuple:
        """The concept pickers and the defaults of another base model (in FOLLOW_BASE order)."""
        with shown("choosing the base model"):
            c = self.r.base_config(base)
        d, picks = c["defaults"], c["concepts"]
        updates = {"note": c["note"], "sweep_concept": gr.update(choices=picks, value=d["concept"]),
                   "multi_concepts": gr.update(choices=picks, value=d["multi_concepts"]),
                   "multi_order": self.order(d["multi_concepts"]),
                   "analysis_concepts": gr.update(choices=picks, value=d["analysis_concepts"]),
                   "expression": d["expression"], "prompt": d["prompt"],
                   "pool": gr.update(choices=picks, value=d["pool"]), "t_switch": d["t_switch"],
                   "top_k": gr.update(maximum=max(1, len(picks)), value=d["top_k"]),
                   "alpha": d["alpha"], "calibration": d["calibration"],
                   **{f"{view}_steps": d["steps"] for view in ("sweep", "multi", "adaptive")}}
        return tuple(updates[k] for k in FOLLOW_BASE)

    @staticmethod
    def order(concepts: list[str] | None) -> str:
        return ("Ablation order (N = 1 … all): **" + " → ".join(concepts) + "**") if concepts else \
            "Tick the concepts in the order they are to be ablated."


def create_research(research: Any, gpu: dict[str, Any], cheap: dict[str, Any]) -> None:
    """Build the tab group inside the current Blocks context and wire it (``gpu``/``cheap``: event kwargs)."""
    cfg = research.ui_config()
    if not cfg["available"]:
        gr.Markdown(cfg["note"])
        return
    h = ResearchHandlers(research)
    gr.Markdown("Measurements on a base model of the grid's list (same model cache, same queue as the grid): how "
                "CLIP score and accuracy move with λ, what ablating several concepts at once damages, how the task "
                "vectors relate, and which vectors a prompt needs. λ>0 ablates, 0 is the base, λ<0 enhances.")
    base = Dropdown(cfg["base_choices"], value=cfg["base"], label="Base model", elem_id="research-base",
                    info="its concept checkpoints are the choices below; a catalog model's prompts are 'a photo "
                         "of …' / 'a painting in … style'")
    w = {"note": gr.Markdown(cfg["note"], elem_classes="tad-note")}
    with gr.Tabs(selected="research_sweep"):
        with gr.Tab("Sweep", id="research_sweep"):
            w.update(_sweep(cfg, h, base, gpu))
        with gr.Tab("Multi-concept", id="research_multi"):
            w.update(_multi(cfg, h, base, gpu, cheap))
        with gr.Tab("Analysis", id="research_analysis"):
            w.update(_analysis(cfg, h, base, gpu))
        with gr.Tab("Adaptive", id="research_adaptive"):
            w.update(_adaptive(cfg, h, base, gpu))
    base.change(h.base_changed, inputs=base, outputs=[w[k] for k in FOLLOW_BASE], **cheap)


# --- shared pieces ----------------------------------------------------------------------------------------------

def _steps(cfg: dict[str, Any]) -> gr.Number:
    lim = cfg["limits"]
    where = " on a CPU" if lim["cpu"] else ""
    return gr.Number(cfg["defaults"]["steps"], label="Denoising steps", precision=0, minimum=1,
                     maximum=lim["max_steps"], info=f"1–{lim['max_steps']}{where}; fewer = faster, rougher images")


def _run_row(label: str) -> tuple[gr.Button, gr.Button]:
    with gr.Row():
        run = gr.Button(label, variant="primary", size="lg", elem_classes="tad-run", scale=3)
        stop = gr.Button("Cancel", variant="stop", size="lg", scale=1)
    return run, stop


def _budget_note(cfg: dict[str, Any]) -> gr.Markdown:
    return gr.Markdown(f"At most {cfg['limits']['budget']:,} image-steps (images × steps) per run; a larger request "
                       "is refused before anything runs.", elem_classes="tad-note")


def _wire(h: ResearchHandlers, run: gr.Button, stop: gr.Button, fn: Any, inputs: list, outputs: list, api: str,
          progress_on: list, gpu: dict[str, Any]) -> None:
    event = run.click(fn, inputs=inputs, outputs=outputs, api_name=api, show_progress_on=progress_on, **gpu)
    # our flag stops the worker between stages; `cancels` drops queued work client-side. An explicit private
    # api_name: the default one ("cancel", from the function) would take the grid's public /cancel.
    stop.click(h.cancel, outputs=outputs[0], cancels=[event], queue=False, api_name=f"{api}_cancel",
               api_visibility="private")


def _table(label: str, elem_id: str, headers: list[str], max_height: int = 460) -> gr.Dataframe:
    """A results table; ``headers`` name its columns until the first run fills it (``ui_config()["tables"]``)."""
    return gr.Dataframe(label=label, headers=headers, interactive=False, wrap=True, elem_classes="tad-metrics",
                        elem_id=elem_id, max_height=max_height)


def _download(label: str) -> gr.DownloadButton:
    return gr.DownloadButton(label, value=None, size="md")


# --- the four tabs -------------------------------------------------------------------------------------------------

def _sweep(cfg: dict[str, Any], h: ResearchHandlers, base: gr.Dropdown, gpu: dict[str, Any]) -> dict[str, Any]:
    lim, d = cfg["limits"], cfg["defaults"]
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=360):
            run, stop = _run_row("Run sweep")
            concept = Dropdown(cfg["concepts"], value=d["concept"], label="Concept (target → anchor)",
                               info="its anchor and the never-ablated controls are measured too")
            lambdas = gr.Textbox(d["lambdas"], label="λ values",
                                 info=f"1–{lim['max_lambdas']} values, comma-separated, each within "
                                      f"±{lim['max_lambda']:g}; λ>0 ablates, 0 is the base, λ<0 enhances")
            n_prompts = gr.Number(d["sweep_prompts"], label="Prompts per concept and λ", precision=0, minimum=1,
                                  maximum=lim["max_prompts"],
                                  info=f"1–{lim['max_prompts']}; the same prompts and seeds at every λ")
            steps = _steps(cfg)
            _budget_note(cfg)
        with gr.Column(scale=5, min_width=600):
            status = gr.Markdown("Set the concept and the λ values, then **Run sweep**.", elem_classes="tad-status",
                                 elem_id="sweep-status")
            plot = gr.Image(label="CLIP accuracy and score vs λ", elem_id="sweep-plot", height=480, **IMAGE)
            table = _table("Per λ: CLIP accuracy and score of each concept (* = target)", "sweep-table",
                           cfg["tables"]["sweep"])
            csv = _download("Sweep CSV")
    _wire(h, run, stop, h.sweep, [concept, lambdas, n_prompts, steps, base], [status, plot, table, csv], "sweep",
          [plot], gpu)
    return {"sweep_concept": concept, "sweep_steps": steps}


def _multi(cfg: dict[str, Any], h: ResearchHandlers, base: gr.Dropdown, gpu: dict[str, Any],
           cheap: dict[str, Any]) -> dict[str, Any]:
    lim, d = cfg["limits"], cfg["defaults"]
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=360):
            run, stop = _run_row("Run multi")
            concepts = CheckboxGroup(cfg["concepts"], value=d["multi_concepts"], label="Concepts to ablate",
                                     info="in the order you tick them: run N ablates the first N at once")
            order = gr.Markdown(h.order(d["multi_concepts"]))
            methods = gr.CheckboxGroup(cfg["methods"], value=d["methods"], label="Merge methods",
                                       info="each merges the first N vectors (default parameters); the base model "
                                            "and a random-vector baseline are added")
            n_prompts = gr.Number(d["multi_prompts"], label="Prompts per concept and run", precision=0, minimum=1,
                                  maximum=lim["max_prompts"], info=f"1–{lim['max_prompts']}")
            steps = _steps(cfg)
            _budget_note(cfg)
        with gr.Column(scale=5, min_width=600):
            status = gr.Markdown("Tick the concepts and methods, then **Run multi-concept**.",
                                 elem_classes="tad-status", elem_id="multi-status")
            # stacked, each at full width: the figures carry small print (legends, N labels)
            control = gr.Image(label="Control and target accuracy vs N", elem_id="multi-control", height=480,
                               **IMAGE)
            table = _table("Per method and N (means over concepts)", "multi-table", cfg["tables"]["multi"],
                           max_height=640)
            # taller than the figure (572 px): the label badge then sits above its title, not on it
            trade = gr.Image(label="Trade-off: target vs control accuracy", elem_id="multi-tradeoff", height=640,
                             **IMAGE)
            with gr.Row():
                csv = _download("Multi CSV")
                detail = _download("Per-concept CSV")
    concepts.change(h.order, inputs=concepts, outputs=order, **cheap)
    _wire(h, run, stop, h.multi, [concepts, methods, n_prompts, steps, base],
          [status, control, trade, table, csv, detail], "multi", [control, trade], gpu)
    return {"multi_concepts": concepts, "multi_order": order, "multi_steps": steps}


def _analysis(cfg: dict[str, Any], h: ResearchHandlers, base: gr.Dropdown, gpu: dict[str, Any]) -> dict[str, Any]:
    d = cfg["defaults"]
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=360):
            run, stop = _run_row("Run analysis")
            concepts = CheckboxGroup(cfg["concepts"], value=d["analysis_concepts"], label="Task vectors",
                                     info="τ = θ_ablated − θ_base of each concept (no image is generated)")
            expression = gr.Textbox(d["expression"], label="Analogy expression (optional)",
                                    info="its norm and its cosine with each ticked vector are reported")
            # in Markdown, not the info line: the info renderer takes '*' for emphasis even inside backticks
            gr.Markdown("Expressions: concept names (any of the base's), numbers, `+`, `-`, `*` and parentheses, "
                        "e.g. `kite + striped - smiley` or `smiley - 0.5*die`.", elem_classes="tad-note")
            gr.Markdown("Angles > 75°: layers where two vectors are nearly orthogonal or opposed (multi-concept "
                        "paper); sign agreement: share of entries with the same sign where both are non-zero.",
                        elem_classes="tad-note")
        with gr.Column(scale=5, min_width=600):
            status = gr.Markdown("Tick the vectors, then **Run analysis**.", elem_classes="tad-status",
                                 elem_id="analysis-status")
            # stacked at full width: a heatmap's numbers are only readable large
            cosine = gr.Image(label="Global cosine similarity", elem_id="analysis-cosine", height=560, **IMAGE)
            vectors = _table("Per vector: norm and sparsity", "analysis-vectors", cfg["tables"]["vectors"])
            blocks = gr.Image(label="Cosine per UNet block", elem_id="analysis-blocks", height=720, **IMAGE)
            pairs = _table("Per pair: cosine, angle, sign agreement, layers over 75°", "analysis-pairs",
                           cfg["tables"]["pairs"], max_height=640)
            with gr.Row():
                csv = _download("Pairs CSV")
                vcsv = _download("Vectors CSV")
    _wire(h, run, stop, h.analysis, [concepts, expression, base], [status, cosine, blocks, vectors, pairs, csv, vcsv],
          "analysis", [cosine, blocks], gpu)
    return {"analysis_concepts": concepts, "expression": expression}


def _adaptive(cfg: dict[str, Any], h: ResearchHandlers, base: gr.Dropdown, gpu: dict[str, Any]) -> dict[str, Any]:
    lim, d = cfg["limits"], cfg["defaults"]
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=360):
            run, stop = _run_row("Run selection")
            prompt = gr.Textbox(d["prompt"], label="Prompt", info="the vectors are ranked for this prompt")
            pool = CheckboxGroup(cfg["concepts"], value=d["pool"], label="Pool of task vectors")
            with gr.Row():
                t_switch = gr.Number(d["t_switch"], label="t_switch", precision=0, minimum=0,
                                     maximum=lim["max_steps"], info="0 … steps: steps with the base model before "
                                                                    "the candidates branch")
                steps = _steps(cfg)
            alpha = gr.Textbox(d["alpha"], label=f"α (candidate strength; 1–{lim['max_strengths']}, comma-separated)",
                               info=f"θ + α·τ, 0 < α ≤ {lim['max_alpha']:g}; several α (e.g. 0.5, 2) probe each "
                                    "vector at each and need calibration prompts")
            top_k = gr.Slider(1, max(1, len(cfg["concepts"])), value=d["top_k"], step=1, label="top-k",
                              info="the k most relevant vectors are applied (λ = 1)")
            seeds = gr.Textbox(d["seeds"], label=f"Seeds (1–{lim['max_seeds']}, comma-separated)",
                               info="one strip row each; similarities are averaged over them")
            calibration = gr.Slider(0, lim["max_calibration"], value=d["calibration"], step=1,
                                    label="Calibration prompts (toy world)",
                                    info="0: rank by similarity (the paper). N: rank by each vector's movement over "
                                         "its usual one on N prompts that name none of the pool (measured once)")
        with gr.Column(scale=5, min_width=600):
            status = gr.Markdown("Write a prompt, pick the pool, then **Run selection**.", elem_classes="tad-status",
                                 elem_id="adaptive-status")
            strip = gr.Image(label="base | candidates, most relevant first | final", elem_id="adaptive-strip",
                             height=320, **IMAGE)
            table = _table("Ranking, most relevant first (lowest similarity to the base; calibrated: highest "
                           "relevance)", "adaptive-table",
                           cfg["tables"]["adaptive"])
            csv = _download("Ranking CSV")
    _wire(h, run, stop, h.adaptive, [prompt, pool, t_switch, alpha, top_k, seeds, steps, base, calibration],
          [status, strip, table, csv], "adaptive", [strip], gpu)
    return {"prompt": prompt, "pool": pool, "t_switch": t_switch, "adaptive_steps": steps, "top_k": top_k,
            "alpha": alpha, "calibration": calibration}
