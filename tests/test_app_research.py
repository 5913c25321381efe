"""The app's research views: the service's validation, each view on the tiny world, and /sweep over the API.

The tiny world (tests/app_world.py) has the concepts smiley and striped, 2 steps, 32 px: fast, but its images mean
nothing, so these tests check plumbing and bookkeeping (shapes, files, messages), not directions.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from app_world import build_tiny_world, free_port
from PIL import Image

from tad_demo.app.errors import RunCancelled, UserError
from tad_demo.app.research_service import BUDGET, MAX_LAMBDAS, ResearchService
from tad_demo.app.service import Service
from tad_demo.app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    return build_tiny_world(tmp_path_factory.mktemp("research_app") / "world")


def _settings(world_dir: Path, work: Path) -> Settings:
    return Settings.from_env({"TAD_ASSETS": str(world_dir), "TAD_CATALOG": str(ROOT / "assets" / "catalog.yaml"),
                              "TAD_WORK_DIR": str(work), "TAD_MAX_RUNS": "3"})


@pytest.fixture(scope="module")
def research(world_dir, tmp_path_factory) -> ResearchService:
    return ResearchService(Service(_settings(world_dir, tmp_path_factory.mktemp("work"))))


def _refused(fn, match: str, **kwargs) -> str:
    with pytest.raises(UserError) as e:
        fn(**kwargs)
    msg = str(e.value)
    assert match in msg, msg
    assert "\n" not in msg
    return msg


def _image(path: str | None) -> Image.Image:
    assert path and Path(path).is_file(), path
    im = Image.open(path)
    assert im.width > 200 and im.height > 100, im.size  # a plot, not an empty placeholder
    return im


# --- validation: refused before any model is loaded -------------------------------------------------------------

def test_bad_values_are_refused_in_one_line(research):
    loads = dict(research.models.loads)
    sweep = dict(concept="smiley", lambdas="-1, 0, 1", n_prompts=1, steps=2)
    _refused(research.sweep, "λ list: 'nan' is not a finite number", **{**sweep, "lambdas": "1, nan"})
    _refused(research.sweep, "λ list: 1e+09 is outside [-3, 3]", **{**sweep, "lambdas": "1e9"})
    _refused(research.sweep, "λ list: 'x' is not a number", **{**sweep, "lambdas": "1, x"})
    _refused(research.sweep, f"give 1 to {MAX_LAMBDAS} values", **{**sweep, "lambdas": ", ".join(map(str, range(10)))})
    _refused(research.sweep, "λ list: 1 is given twice", **{**sweep, "lambdas": "1, 1.0"})
    _refused(research.sweep, "prompts: 1000000000 is outside 1..32", **{**sweep, "n_prompts": 1e9})
    _refused(research.sweep, "steps: 1000000000 is outside 1..50", **{**sweep, "steps": 1e9})
    _refused(research.sweep, "steps: 2.5 is not a whole number", **{**sweep, "steps": 2.5})
    _refused(research.sweep, "concept: unknown concept 'snoopy'; known: smiley, striped",
             **{**sweep, "concept": "snoopy"})
    _refused(research.sweep, f"budget of {BUDGET}", **{**sweep, "lambdas": "-3, -2, -1, 0, 1, 2, 3",
                                                        "n_prompts": 32, "steps": 50})
    _refused(research.analysis, "expression: unexpected character '$' at position 10",
             concepts=["smiley"], expression="smiley + $")
    _refused(research.analysis, "unknown vector 'snoopy'", concepts=["smiley"], expression="smiley - snoopy")
    _refused(research.analysis, "concepts: tick at least one concept", concepts=[], expression="")
    _refused(research.multi, "methods: unknown merge method 'magic'", concepts=["smiley"], methods=["magic"])
    _refused(research.multi, "concepts: each concept once", concepts=["smiley", "smiley"], methods=["linear"])
    adaptive = dict(prompt="a smiley in striped style", pool=["smiley", "striped"], t_switch=1, alpha=2.0, top_k=1,
                    seeds="0", steps=2)
    _refused(research.adaptive, "t_switch: 3 is outside 0..2", **{**adaptive, "t_switch": 3})
    _refused(research.adaptive, "top-k: 5 is outside 1..2", **{**adaptive, "top_k": 5})
    _refused(research.adaptive, "α: inf is outside", **{**adaptive, "alpha": float("inf")})
    _refused(research.adaptive, "α: 0 must be > 0", **{**adaptive, "alpha": 0})
    _refused(research.adaptive, "seeds: give 1 to 4", **{**adaptive, "seeds": "1,2,3,4,5"})
    _refused(research.adaptive, "prompt: write a prompt", **{**adaptive, "prompt": "  "})
    _refused(research.adaptive, "calibration prompts: 33 is outside 0..32", **{**adaptive, "calibration": 33})
    _refused(research.adaptive, "α: 0.5, 2 are several strengths, which compare only calibrated",
             **{**adaptive, "alpha": "0.5, 2"})
    _refused(research.adaptive, "α: give 1 to 3 strengths", **{**adaptive, "alpha": "1, 2, 3, 4"})
    _refused(research.adaptive, "α: 2 is given twice", **{**adaptive, "alpha": "2, 2", "calibration": 2})
    # the base: one the grid offers; its own concepts, whose checkpoints are here; a GPU model needs a GPU
    _refused(research.sweep, "base: unknown base model 'sd-xl'; known: toyworld, sd-v1-4, sd-v1-5",
             **{**sweep, "base": "sd-xl"})
    _refused(research.analysis, "concepts: unknown concept 'smiley'; known: snoopy, ", concepts=["smiley"],
             base="sd-v1-4")
    _refused(research.analysis, "concepts 'snoopy': checkpoint models/concept-ablation/snoopy.ckpt is not on this "
             "machine", concepts=["snoopy"], base="sd-v1-4")
    if research.cpu:
        _refused(research.multi, "base 'sd-v1-4': Stable Diffusion v1.4 (CompVis) needs a GPU", concepts=["snoopy"],
                 base="sd-v1-4")
    assert dict(research.models.loads) == loads  # nothing was loaded for a refused request


def test_the_concept_pickers_follow_the_base(research):
    """The tab's base dropdown offers the grid's bases; choosing one gives its concepts and defaults."""
    import gradio as gr

    from tad_demo.app.ui.research import FOLLOW_BASE, ResearchHandlers

    cfg = research.ui_config()
    assert cfg["base_choices"] == research.service.base_choices() and cfg["base"] == "toyworld"
    h = ResearchHandlers(research)
    sd = dict(zip(FOLLOW_BASE, h.base_changed("sd-v1-4")))
    picks = [v for _, v in sd["sweep_concept"]["choices"]]
    assert picks[0] == "snoopy" and "smiley" not in picks and sd["sweep_concept"]["value"] == "snoopy"
    assert sd["pool"]["choices"] == sd["multi_concepts"]["choices"] and "snoopy" in sd["prompt"]
    assert ("GPU" in sd["note"]) == research.cpu
    toy = dict(zip(FOLLOW_BASE, h.base_changed("toyworld")))
    assert [v for _, v in toy["pool"]["choices"]] == ["smiley", "striped"] and toy["note"] == ""
    # adaptive: the toy world probes at two strengths, calibrated; a base without a world cannot calibrate
    assert (toy["alpha"], toy["calibration"], sd["alpha"], sd["calibration"]) == ("0.5, 2", 16, "2", 0)
    with pytest.raises(gr.Error, match="base: unknown base model 'nope'"):
        h.base_changed("nope")


# --- each view on the tiny world --------------------------------------------------------------------------------

def test_sweep_gives_a_table_per_lambda_a_plot_and_the_csv(research):
    seen = []
    out = research.sweep("smiley", "1, -1, 0", n_prompts=2, steps=2, progress=lambda s, i, n: seen.append(s))
    table = out["table"]
    assert [row[0] for row in table["data"]] == ["-1", "0", "+1"]  # sorted λ
    assert table["headers"][1] == "acc smiley*" and "acc circle" in table["headers"]
    assert all(0.0 <= x <= 1.0 for row in table["data"] for x in row[1:len(table["headers"]) // 2 + 1])
    _image(out["plot"])
    rows = list(csv.DictReader(open(out["csv"])))
    roles = len({r["concept"] for r in rows})  # smiley, circle, cross, heart, star, striped
    assert roles == 6 and len(rows) == 3 * roles and {r["n"] for r in rows} == {"2"}
    assert seen[0] == "loading the model" and "λ = -1" in seen and seen[-1] == "saving"
    assert "3 λ × 6 concepts × 2 prompts = 36 images" in out["status"]


def test_multi_gives_rows_per_method_and_n_and_both_plots(research):
    out = research.multi(["striped", "smiley"], ["linear", "ties"], n_prompts=1, steps=2)
    data = out["table"]["data"]
    # the base line, 2 methods × N = 1, 2, the random baseline at N = 1, 2
    assert [(r[0], r[1]) for r in data] == [("base", 0), ("linear", 1), ("linear", 2), ("ties", 1), ("ties", 2),
                                            ("random", 1), ("random", 2)]
    assert data[1][2] == "striped" and data[2][2] == "striped+smiley"  # the order given is the ablation order
    _image(out["control_vs_n"])
    _image(out["tradeoff"])
    assert len(list(csv.DictReader(open(out["csv"])))) == 7 and Path(out["detail"]).is_file()
    # before a first run the table shows these columns (not Gradio's "1 2 3")
    assert out["table"]["headers"] == research.ui_config()["tables"]["multi"]


def test_analysis_gives_heatmaps_tables_and_the_expression(research):
    out = research.analysis(["smiley", "striped"], "smiley - 0.5*striped")
    _image(out["cosine"])
    _image(out["blocks"])
    vec = {r[0]: r for r in out["vectors"]["data"]}
    assert set(vec) == {"smiley", "striped", "= smiley - 0.5*striped"}
    pairs = out["pairs"]["data"]
    assert len(pairs) == 1 and pairs[0][0] == "smiley · striped"
    # the reported numbers are those of the vectors themselves
    from tad_demo.research.lab import Lab

    lab = Lab.from_world(research.settings.assets, models=research.models)
    a, b = lab.vector("smiley"), lab.vector("striped")
    assert vec["smiley"][3] == pytest.approx(a.norm(), abs=1e-4)
    assert pairs[0][1] == pytest.approx(a.cosine(b), abs=1e-3)
    expr = a - 0.5 * b
    assert vec["= smiley - 0.5*striped"][3] == pytest.approx(expr.norm(), abs=1e-4)
    assert f"smiley {expr.cosine(a):+.3f}" in out["status"]
    assert Path(out["csv"]).is_file() and Path(out["vectors_csv"]).is_file()
    empty = research.ui_config()["tables"]
    assert out["vectors"]["headers"] == empty["vectors"] and len(out["pairs"]["headers"]) == len(empty["pairs"])


def test_adaptive_gives_a_ranking_and_the_strip(research):
    out = research.adaptive("a smiley in striped style", ["smiley", "striped"], t_switch=1, alpha=2.0, top_k=1,
                            seeds="0, 1", steps=2)
    data = out["table"]["data"]
    assert [r[0] for r in data] == [1, 2] and {r[1] for r in data} == {"smiley", "striped"}
    assert [r[3] for r in data] == ["✓", ""]  # top-1 is the most relevant (lowest similarity)
    assert data[0][2] <= data[1][2]
    assert out["table"]["headers"][-2:] == ["similarity seed 0", "similarity seed 1"]
    strip = _image(out["strip"])
    assert strip.height > 200  # two seed rows
    assert Path(out["csv"]).is_file()


def test_adaptive_calibrated_ranks_by_relevance_and_measures_the_calibration_once(research):
    stages = []
    args = dict(prompt="a smiley in striped style", pool=["smiley", "striped"], t_switch=0, alpha=5.0, top_k=1,
                seeds="0", steps=2, calibration=2)
    out = research.adaptive(**args, progress=lambda stage, i, n: stages.append(stage))
    assert out["table"]["headers"][5] == "relevance (× usual)" and "Ranked by relevance" in out["status"]
    rel = [r[5] for r in out["table"]["data"]]
    assert rel == sorted(rel, reverse=True) and rel[0] > 0  # ranked by it, and the vectors moved the pictures
    n_cal = sum(st.startswith("calibration:") for st in stages)
    assert n_cal == 2 + 2 * 2  # UNet calls: 2 neutral prompts in one batch, base 2 steps + 2 candidates × 2
    stages.clear()
    again = research.adaptive(**args, progress=lambda stage, i, n: stages.append(stage))
    assert not any(st.startswith("calibration:") for st in stages) and again["table"]["data"] == out["table"]["data"]
    # Cancel inside a calibration: the weights come back, and no half-measured calibration is kept
    unet = research.models.pipe.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    stages.clear()
    with pytest.raises(RunCancelled, match="cancelled"):
        research.adaptive(**{**args, "calibration": 3}, progress=lambda stage, i, n: stages.append(stage),
                          cancel=lambda: sum(st.startswith("calibration:") for st in stages) >= 3)
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    assert [key[-1] for key in research.calibrations] == [2]  # only the finished calibration (2 prompts) is kept


def test_adaptive_at_two_strengths_ranks_by_the_larger_relevance_and_keeps_each_calibration(research):
    args = dict(prompt="a smiley in striped style", pool=["smiley", "striped"], t_switch=0, top_k=1, seeds="0",
                steps=2, calibration=2)
    stages: list[str] = []
    both = research.adaptive(**args, alpha="1, 4", progress=lambda stage, i, n: stages.append(stage))
    # one calibration run for both α (neither measured before in this process): 2 neutral prompts in one batch,
    # base 2 steps + 2 vectors × 2 α × 2 steps
    assert sum(st.startswith("calibration:") for st in stages) == 2 + 2 * 2 * 2
    headers = both["table"]["headers"]
    assert headers[2:4] == ["similarity α 1", "similarity α 4"] and headers[-1] == "relevance (× usual)"
    assert "the larger of its α" in both["status"] and "α 1, 4" in both["status"]
    stages.clear()
    singles = {a: research.adaptive(**args, alpha=a, progress=lambda stage, i, n: stages.append(stage))
               for a in ("1", "4")}
    assert not any(st.startswith("calibration:") for st in stages)  # each α's calibration was kept
    rel = {r[1]: r[-1] for r in both["table"]["data"]}
    one = {a: {r[1]: r[5] for r in out["table"]["data"]} for a, out in singles.items()}
    assert rel == {v: max(one["1"][v], one["4"][v]) for v in rel} and min(rel.values()) > 0


def test_cancel_stops_between_stages_and_restores_the_weights(research):
    with pytest.raises(RunCancelled, match="cancelled"):
        research.sweep("smiley", "0, 1", n_prompts=1, steps=2, cancel=lambda: True)
    assert research.models.lock.acquire(timeout=5)
    research.models.lock.release()
    assert not research.models.patcher or not research.models.patcher.current


def test_cancel_stops_adaptive_within_a_step_inside_a_patched_branch(research):
    """One adaptive call is long (base, N candidates, final): Cancel acts after the current denoising step, also
    while a candidate's weights are applied, and leaves the base weights and a free lock."""
    import hashlib

    research.adaptive("a smiley", ["smiley", "striped"], t_switch=1, steps=4, seeds="0")  # loads the model
    unet = research.models.pipe.unet

    def digest() -> str:
        return hashlib.sha256(b"".join(v.numpy().tobytes() for v in unet.state_dict().values())).hexdigest()

    before, stages = digest(), []

    def progress(stage, i, n):
        stages.append((stage, i, n))

    def cancel():  # after the base's 4 steps and 2 of the first candidate's 3 (it switched in at step 1)
        return sum("denoising step" in s for s, _, _ in stages) >= 6

    with pytest.raises(RunCancelled, match="cancelled"):
        research.adaptive("a smiley", ["smiley", "striped"], t_switch=1, steps=4, seeds="0", progress=progress,
                          cancel=cancel)
    steps = [(i, n) for s, i, n in stages if "denoising step" in s]
    assert steps == [(i, 4 + 2 * 3 + 4) for i in range(1, 7)], steps  # stopped at the first check after step 6
    assert digest() == before and not research.models.patcher.current
    assert research.models.lock.acquire(timeout=5)
    research.models.lock.release()


def test_output_folders_are_bounded(research):
    for _ in range(4):
        research._new_dir("probe")
    assert len(list(research.out_root.iterdir())) <= research.settings.max_runs


def test_research_ui_does_not_import_torch():
    code = ("import sys, tad_demo.app.ui.research, tad_demo.app.ui.demo; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=600)


# --- the served API -----------------------------------------------------------------------------------------------

def test_api_sweep_on_the_launched_app(world_dir, tmp_path_factory):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from tad_demo.app import ui

    settings = _settings(world_dir, tmp_path_factory.mktemp("served"))
    spec = importlib.util.spec_from_file_location("tad_app", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    _, demo = app.build(settings)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True,
                            **{**ui.launch_options(settings), "server_port": free_port()})
    try:
        c = Client(url, verbose=False)
        names = set(c.view_api(print_info=False, return_format="dict")["named_endpoints"])
        assert {"/grid", "/cancel", "/sweep", "/multi", "/analysis", "/adaptive"} <= names, names
        status, plot, table, csv_path = c.predict(concept="striped", lambdas="0, 1", n_prompts=1, steps=2,
                                                  api_name="/sweep")
        assert "Sweep of τ(striped)" in status and [r[0] for r in table["data"]] == ["0", "+1"]
        assert Image.open(plot).width > 400
        assert Path(csv_path).read_text().startswith("lambda,concept,role")
        with pytest.raises(AppError, match="λ list: 'nan'"):
            c.predict(concept="striped", lambdas="1, nan", n_prompts=1, steps=2, api_name="/sweep")
        with pytest.raises(AppError, match="base: unknown base model 'nope'"):
            c.predict(concept="striped", lambdas="0, 1", n_prompts=1, steps=2, base="nope", api_name="/sweep")
        # another base's concepts reach the service (not refused by the page's toy-world choices)
        with pytest.raises(AppError, match="concepts 'snoopy': checkpoint models/concept-ablation/snoopy.ckpt"):
            c.predict(concepts=["snoopy"], expression="", base="sd-v1-4", api_name="/analysis")
    finally:
        demo.close()
