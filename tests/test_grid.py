"""The concept grid on tiny components written to disk (and on the trained toy world when its assets exist)."""

from __future__ import annotations

import gc
import hashlib
import json
import math
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from app_world import STEPS, build_tiny_world
from conftest import build_tiny_pipeline, perturbed
from PIL import Image
from safetensors.torch import load_file, save_file

from tad_demo.core.recipe import Recipe
from tad_demo.core.world import Concept
from tad_demo.grid import (
    REQUIRED_COLUMNS,
    Cancelled,
    ControlSpec,
    ExtraVector,
    GridError,
    GridSpec,
    run_grid,
    save,
    world_spec,
)
from tad_demo.runtime.models import ModelError, Models
from tad_demo.runtime.sampling import sample
from tad_demo.toyworld import world

TOY = Path("assets/toyworld")
TOY_READY = all((TOY / p).exists() for p in ("world.json", "base/model_index.json", "clip/open_clip_config.json",
                                             "ablations/smiley.safetensors", "ablations/striped.safetensors"))
SEEDS = [3, 5]


# One torch thread for the whole module (the fixture lives in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# --- a tiny world on disk: a world folder with tiny components (shared with the app tests) ------------------

@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Path:
    return build_tiny_world(tmp_path_factory.mktemp("tiny_world") / "world")


@pytest.fixture(scope="module")
def models() -> Models:
    return Models(device="cpu")


def _state_hash(*modules: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for m in modules:
        for k, v in m.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"))


class UNetCalls:
    """Counts a module's forward passes and their batch sizes (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module):
        self.batches: list[int] = []
        self._h = module.register_forward_pre_hook(lambda _m, args: self.batches.append(int(args[0].shape[0])))

    def remove(self) -> None:
        self._h.remove()


@pytest.fixture(scope="module")
def tiny_run(tiny_world: Path, models: Models):
    """One 3×3 grid with two controls (none, canny) and two seeds, with everything observed around it."""
    spec = world_spec(tiny_world, controls=("none", "canny"), seeds=SEEDS)
    models.load_base(spec.base)
    before = _state_hash(models.pipe.unet, models.pipe.text_encoder, models.pipe.vae)
    stages: list[tuple[str, int, int]] = []
    calls = UNetCalls(models.pipe.unet)
    encodes = UNetCalls(models.pipe.text_encoder)
    try:
        result = run_grid(spec, models=models, progress=lambda s, i, n: stages.append((s, i, n)))
    finally:
        calls.remove()
        encodes.remove()
    after = _state_hash(models.pipe.unet, models.pipe.text_encoder, models.pipe.vae)
    return {"spec": spec, "result": result, "stages": stages, "calls": calls.batches, "encodes": encodes.batches,
            "before": before, "after": after}


# --- the contract -------------------------------------------------------------------------------------------

WORLDS = ["tiny"] + (["toyworld"] if TOY_READY else [])


@pytest.mark.parametrize("which", WORLDS)
def test_default_cell_equals_the_base_models_image(which, tiny_world, tiny_run):
    from diffusers import StableDiffusionPipeline

    if which == "tiny":
        spec, result = tiny_run["spec"], tiny_run["result"]
    else:  # the trained toy world: the default 3×3 example, few steps
        spec = world_spec(TOY, seeds=SEEDS, steps=STEPS)
        result = run_grid(spec, models=Models(device="cpu"))
    pipe = StableDiffusionPipeline.from_pretrained(spec.base, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ref = sample(pipe, [spec.prompt] * len(SEEDS), SEEDS, steps=spec.steps, guidance=spec.guidance,
                 height=spec.height, width=spec.width)
    default = result.cell("none", 1, 1)
    assert (default.object_lambda, default.style_lambda) == (0.0, 0.0)
    assert default.prompt == spec.prompt == "a smiley in striped style"
    for got, want in zip(default.images, ref):
        assert np.array_equal(_arr(got), _arr(want)), "same seed ⇒ the default cell is the base model's image"
    # every ablate/enhance cell differs from the default, for every seed
    for cell in result.cells:
        if cell.control == "none" and (cell.row, cell.col) != (1, 1):
            for got, base in zip(cell.images, default.images):
                assert not np.array_equal(_arr(got), _arr(base)), (cell.object_lambda, cell.style_lambda)


def test_cells_share_seeds_and_recipes_follow_lambdas(tiny_run):
    result = tiny_run["result"]
    assert len(result.cells) == 9 * 2
    for cell in result.cells:
        assert cell.seeds == SEEDS and len(cell.images) == len(SEEDS)
        lams = {v.name: v.lam for v in cell.recipe.vectors}
        want = {k: v for k, v in (("smiley", cell.object_lambda), ("striped", cell.style_lambda)) if v}
        assert lams == want
    corner = result.cell("none", 0, 2)  # ablate the object, enhance the style
    assert (corner.object_lambda, corner.style_lambda) == (1.0, -1.0)
    assert corner.recipe.hashes, "cell recipes carry the sha256 of their inputs"


def test_metrics_rows_complete(tiny_run):
    result = tiny_run["result"]
    rows = result.rows
    assert len(rows) == 9 * len(SEEDS) * 2  # cells × seeds × controls
    assert len({(r["control"], r["row"], r["col"], r["seed"]) for r in rows}) == len(rows)
    for r in rows:
        assert set(REQUIRED_COLUMNS) <= set(r)
        for m in ("clip_score_object", "clip_accuracy_object", "clip_score_style", "clip_accuracy_style"):
            assert isinstance(r[m], float) and math.isfinite(r[m]), (m, r[m])
        assert r["clip_accuracy_object"] in (0.0, 1.0) and r["clip_score_object"] >= 0
        assert r["prompt"] == "a smiley in striped style" and r["object_anchor"] == "circle"
    header = result.csv_text().splitlines()[0].split(",")
    assert header[:len(REQUIRED_COLUMNS)] == list(REQUIRED_COLUMNS)
    assert len(result.summary()) == 18


def test_one_pipeline_call_per_cell_and_control(tiny_run):
    # 9 cells × 2 pipelines (plain, ControlNet) × STEPS UNet passes, each with all seeds (× 2 for guidance)
    assert tiny_run["calls"] == [2 * len(SEEDS)] * (9 * 2 * STEPS)
    # the prompt and the empty prompt are encoded once each for the whole grid (0 if already cached)
    assert tiny_run["encodes"] in ([], [1, 1])


def test_progress_names_every_stage(tiny_run):
    stages = [s for s, _, _ in tiny_run["stages"]]
    assert stages[0] == "loading" and "building vectors" in stages and stages[-1] == "scoring"
    denoise = [(s, i, n) for s, i, n in tiny_run["stages"] if s.startswith("denoising")]
    assert denoise[0] == ("denoising step 1/2 of cell 1/18", 1, 36)
    assert denoise[-1] == ("denoising step 2/2 of cell 18/18", 36, 36)


def test_weights_restored_bit_exactly_after_the_grid(tiny_run, models):
    assert tiny_run["before"] == tiny_run["after"]
    assert models.patcher.current == []


def test_cancel_stops_and_restores_weights(tiny_world, models):
    spec = world_spec(tiny_world, seeds=[1])
    models.load_base(spec.base)
    before = _state_hash(models.pipe.unet, models.pipe.text_encoder)
    seen: list[str] = []

    def progress(stage, i, n):
        seen.append(stage)

    def cancel():  # asked after the third denoising step (mid-grid, inside a patched cell)
        return sum(s.startswith("denoising") for s in seen) >= 3

    with pytest.raises(Cancelled, match="weights are restored"):
        run_grid(spec, models=models, progress=progress, cancel=cancel)
    assert sum(s.startswith("denoising") for s in seen) == 3, "stops at the next step"
    assert _state_hash(models.pipe.unet, models.pipe.text_encoder) == before
    assert models.patcher.current == []
    assert not models.lock._is_owned(), "the model lock is released"


def test_models_threads_setting_holds_while_generating(tiny_world):
    """TAD_TORCH_THREADS (Models.threads) is what the denoising runs with; the caller's count is back afterwards;
    a small UNet on CPU runs its traced forward (tad_demo/fast_unet.py)."""
    spec = world_spec(tiny_world, object=None, style="striped", seeds=[1], steps=2)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for threads, expected in ((None, 2), (1, 1)):
            seen: set[int] = set()
            m = Models(device="cpu", threads=threads)
            run_grid(spec, models=m, progress=lambda s, i, n, seen=seen: s.startswith("denoising") and seen.add(
                torch.get_num_threads()))
            assert seen == {expected}
            assert torch.get_num_threads() == 2
            assert m.pipe.unet.forward.calls["traced"] == 2 * 3  # steps × (3 columns: striped ablate/0/enhance)
    finally:
        torch.set_num_threads(prev)


def test_control_image_matters_and_pipelines_share_modules(tiny_world, models):
    spec = world_spec(tiny_world, controls=("canny",), seeds=[1], lambdas=(0.0,))
    a = run_grid(spec, models=models, hashes=False)
    spec.controls[0].image = world.condition("canny", world.Scene("die", "plain", "red", "black", "small", .3, .6, 0),
                                             32)
    b = run_grid(spec, models=models, hashes=False)
    assert not np.array_equal(_arr(a.cells[0].images[0]), _arr(b.cells[0].images[0]))
    cn = models.controlnet_pipe(spec.controls[0].model)
    assert cn.unet is models.pipe.unet and cn.vae is models.pipe.vae and cn.text_encoder is models.pipe.text_encoder


def test_save_writes_the_layout_and_png_chunks(tiny_run, tmp_path):
    result, spec = tiny_run["result"], tiny_run["spec"]
    files = save(result, tmp_path)
    for name in ("grid.png", "grid_none.png", "grid_canny.png", "metrics.csv", "recipe.yaml", "conditions/canny.png"):
        assert (tmp_path / name).is_file(), name
    pngs = sorted((tmp_path / "images").glob("*.png"))
    assert len(pngs) == len(files["images"]) == 9 * len(SEEDS) * 2
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + 9 * len(SEEDS) * 2
    # every image's chunks: a recipe that parses, and its λs/seed
    for row in result.rows:
        with Image.open(tmp_path / row["image"]) as im:
            text = dict(im.text)
        recipe = Recipe.from_yaml(text["tad_recipe"])
        cell = json.loads(text["tad_cell"])
        assert (cell["object_lambda"], cell["style_lambda"], cell["seed"], cell["control"]) == \
            (row["object_lambda"], row["style_lambda"], row["seed"], row["control"])
        assert {v.name: v.lam for v in recipe.vectors} == \
            {k: v for k, v in (("smiley", row["object_lambda"]), ("striped", row["style_lambda"])) if v}
        assert recipe.base == spec.base
    # recipe.yaml reproduces the run
    back = GridSpec.load(tmp_path / "recipe.yaml")
    assert back.to_dict(image_paths={"canny": "conditions/canny.png"}) == \
        result.spec.to_dict(image_paths={"canny": "conditions/canny.png"})
    assert back.hashes and back.hashes[spec.base] == result.spec.hashes[spec.base]
    assert np.array_equal(_arr(back.controls[1].image), _arr(result.conditions["canny"]))


def test_grid_pngs_carry_the_runs_recipe(tiny_run, tmp_path):
    result = tiny_run["result"]
    save(result, tmp_path, grid_text={"tad_note": "from the test"})
    paths = {"canny": "conditions/canny.png"}
    for name in ("grid.png", "grid_none.png", "grid_canny.png"):
        with Image.open(tmp_path / name) as im:
            text = dict(im.text)
        assert text["tad_note"] == "from the test", name
        # the chunk alone (plus the run folder for the condition images) reproduces the spec, hashes included
        back = GridSpec.from_yaml(text["tad_grid"], base_dir=tmp_path)
        assert back.to_dict(image_paths=paths) == result.spec.to_dict(image_paths=paths), name
        assert back.hashes == result.spec.hashes and back.hashes
        assert np.array_equal(_arr(back.controls[1].image), _arr(result.conditions["canny"]))
    assert text["tad_grid"] == (tmp_path / "recipe.yaml").read_text()


def test_grid_image_is_labelled_and_projector_sized(tiny_run):
    result = tiny_run["result"]
    assert set(result.grids) == {"none", "canny"}
    g = result.grids["none"]
    assert g.width >= 3 * 2 * 96 and g.height >= 3 * 96, "32-px cells are upscaled"
    # the cells are pasted unchanged (nearest-neighbour upscaling), so each cell image appears in the grid
    arr = np.asarray(g)
    assert (arr == 255).mean() > 0.2, "white margins with labels"


# --- variants -------------------------------------------------------------------------------------------------

def test_text_encoder_vectors_are_applied_and_reencoded(tiny_world, models, tmp_path):
    te = load_file(str(tiny_world / "base" / "text_encoder" / "model.safetensors"))
    keys = [k for k in te if "self_attn.v_proj.weight" in k]
    ft = perturbed(te, keys, seed=9, scale=0.5)
    path = tmp_path / "te_concept.safetensors"
    save_file({f"text_encoder.{k}": ft[k].contiguous() for k in keys}, str(path))
    spec = world_spec(tiny_world, seeds=[1], lambdas=(0.0,))
    base = run_grid(spec, models=models, hashes=False).cells[0].images[0]
    spec.extra = [ExtraVector("te_concept", str(path), 1.0)]
    edited = run_grid(spec, models=models, hashes=False).cells[0].images[0]
    assert not np.array_equal(_arr(base), _arr(edited)), "a text-encoder edit changes the prompt embedding"
    spec.extra = [ExtraVector("te_concept", str(path), 0.0)]
    assert np.array_equal(_arr(run_grid(spec, models=models, hashes=False).cells[0].images[0]), _arr(base))


def test_one_axis_grid_with_a_merge_method(tiny_world, models):
    spec = world_spec(tiny_world, style=None, seeds=[1], lambdas=(1.0, 0.0))
    spec.merge, spec.merge_params = "ties", {"density": 0.5}
    assert spec.prompt == "a smiley in plain style"
    result = run_grid(spec, models=models, hashes=False)
    assert [(c.row, c.col) for c in result.cells] == [(0, 0), (1, 0)]
    assert all(r["clip_score_style"] is None and r["style_lambda"] is None for r in result.rows)
    assert result.cells[0].recipe.method == "ties"
    assert not np.array_equal(_arr(result.cells[0].images[0]), _arr(result.cells[1].images[0]))


def test_models_cache_reuses_and_switches(tiny_world, models, tmp_path):
    spec = world_spec(tiny_world, seeds=[1], lambdas=(1.0,))
    run_grid(spec, models=models, hashes=False)
    loads, pipe = dict(models.loads), models.pipe
    run_grid(spec, models=models, hashes=False)
    assert dict(models.loads) == loads and models.pipe is pipe, "a repeated grid loads nothing"
    with pytest.raises(ModelError, match="previous model stays loaded"):
        models.load_base(str(tmp_path / "missing"))
    assert models.pipe is pipe and models.base == spec.base
    other = build_tiny_pipeline(tmp_path / "other", seed=1)
    old_unet = weakref.ref(pipe.unet)
    del pipe
    models.load_base(str(other))
    gc.collect()
    assert old_unet() is None, "switching frees the old model"
    assert models.describe()["vectors"] == 0 and models.describe()["controlnets"] == []
    assert models.loads["base"] == loads["base"] + 1
    models.load_base(spec.base)  # back for the other tests


@pytest.mark.parametrize(("change", "match"), [
    ({"object_lambdas": (1.0, float("nan"))}, "object_lambdas"),
    ({"style_lambdas": (1e9,)}, "style_lambdas"),
    ({"prompt_template": "a {object} on {background}"}, "unknown slot"),
    ({"seeds": []}, "seeds"),
    ({"steps": 0}, "steps"),
    ({"height": 30}, "height"),
    ({"controls": [ControlSpec("canny")]}, "needs a condition image"),
    ({"controls": [ControlSpec("pose")]}, "not one of"),
    ({"merge": "nope"}, "merge"),
])
def test_spec_validation(tiny_world, change, match):
    spec = world_spec(tiny_world)
    for k, v in change.items():
        setattr(spec, k, v)
    with pytest.raises(GridError, match=match):
        spec.validate()


def test_spec_template_needs_its_concepts(tiny_world):
    spec = world_spec(tiny_world)
    spec.style = None
    with pytest.raises(GridError, match="no style concept"):
        spec.validate()
    spec.prompt_template = "a free prompt"
    assert spec.validate().prompt == "a free prompt"


def test_spec_yaml_round_trip(tmp_path):
    cond = Image.new("RGB", (32, 32), "black")
    cond.save(tmp_path / "edge.png")
    spec = GridSpec(base="b", object=Concept("smiley", "object", "circle", "abl/smiley.safetensors"),
                    style=Concept("striped", "style", "plain", "abl/striped.safetensors"), object_lambdas=(2.0, 0.0),
                    extra=[ExtraVector("dotted", "abl/dotted.safetensors", -0.5)],
                    controls=[ControlSpec("none"), ControlSpec("canny", cond, "cn/canny", 0.7, "edge.png")],
                    seeds=[1, 2], steps=3, height=32, width=32, clip="clip")
    back = GridSpec.from_yaml(spec.to_yaml(), base_dir=tmp_path)
    assert back.to_dict() == spec.to_dict()
    assert np.array_equal(_arr(back.controls[1].image), _arr(cond))
    with pytest.raises(GridError, match="version header"):
        GridSpec.from_yaml("base: b\n")


# --- the command line ---------------------------------------------------------------------------------------------

def test_cli_grid_writes_the_outputs(tiny_world, tmp_path, capsys):
    from tad_demo.cli import main

    out = tmp_path / "run"
    assert main(["grid", "--out", str(out), "--assets", str(tiny_world), "--control", "canny", "--seeds", "7",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for name in ("grid.png", "grid_canny.png", "metrics.csv", "recipe.yaml"):
        assert (out / name).is_file(), name
    assert len(list((out / "images").glob("*.png"))) == 18 == report["images"]
    assert len(report["summary"]) == 18
    # recipe.yaml runs again as a config (human-readable table this time)
    out2 = tmp_path / "again"
    assert main(["grid", "--config", str(out / "recipe.yaml"), "--out", str(out2)]) == 0
    text = capsys.readouterr().out
    assert "score obj" in text and "canny" in text
    with Image.open(out / "images" / "canny_r0c0_obj+1_sty+1_seed7.png") as a, \
            Image.open(out2 / "images" / "canny_r0c0_obj+1_sty+1_seed7.png") as b:
        assert np.array_equal(_arr(a), _arr(b)), "the recipe reproduces the run"


def test_cli_grid_reports_missing_assets(tmp_path, capsys):
    from tad_demo.cli import main

    with pytest.raises(SystemExit, match="toy world assets not found"):
        main(["grid", "--out", str(tmp_path / "x"), "--assets", str(tmp_path / "nothing")])
