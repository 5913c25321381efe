"""SD-1.x end to end: an SD-1.4-shaped pipeline (random weights, real layouts: diffusers folder with the real CLIP
tokenizer, a Kumari CompVis ``.ckpt``, a Kumari ``delta.bin``, an SD-1.5-shaped ControlNet, an OpenAI-ViT-B/32-shaped
open_clip folder) through the app's service, as the app runs it, at 64 px and 2 steps.

The world is built once (``bench/sd_v1_world.py``) into ``$TAD_TEST_CACHE`` (default ``~/.cache/tad_demo_tests``) and
reused while its configs and recipe are unchanged. By default it is the narrow variant (SD-1.x's topology, parameter
names and text conditioning; UNet/ControlNet/VAE at a tenth of the channels: ~1 GB, built in seconds);
``TAD_SD_V1=full`` runs the same tests on the full-size 6 GB world (minutes on 2 CPU cores).
"""

from __future__ import annotations

import csv
import importlib.util
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tad_demo.core.patching import torch_threads

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _bench_module():
    spec = importlib.util.spec_from_file_location("sd_v1_world", ROOT / "bench" / "sd_v1_world.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FULL = os.environ.get("TAD_SD_V1", "narrow") == "full"


@pytest.fixture(scope="session")
def sd_world() -> Path:
    cache = Path(os.environ.get("TAD_TEST_CACHE") or Path.home() / ".cache" / "tad_demo_tests")
    return _bench_module().build_sd_v1_world(cache / ("sd_v1_world" if FULL else "sd_v1_world_narrow"),
                                             narrow=not FULL)


@pytest.fixture(scope="module")
def service(sd_world, tmp_path_factory):
    from tad_demo.app.service import Service
    from tad_demo.app.settings import Settings

    settings = Settings(catalog=sd_world / "catalog.yaml", assets=ROOT / "assets" / "toyworld",
                        work_dir=tmp_path_factory.mktemp("runs"), device="cpu")
    return Service(settings)


@pytest.fixture(scope="module")
def run(service):
    from tad_demo.app.request import GridRequest

    req = GridRequest(base="sd-shaped", object="snoopy", style="van gogh", controls=["none", "canny"],
                      condition_source="example", seeds="42", steps=2, height=64, width=64)
    spec, normalized = service.build(req)
    return {"spec": spec, "dir": service.compute(normalized, spec)}


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_the_world_is_sd_v1_shaped(sd_world):
    """SD-1.4's UNet topology: the same parameter names and ranks as the full config (and its size when full);
    Kumari's CompVis file holds the 32 k/v tensors of its 16 cross-attention blocks; SD's real tokenizer."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTokenizer

    from tad_demo.core.checkpoints import safe_torch_load

    with torch.device("meta"):
        full = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(ROOT / "bench" / "sd_v1_configs"
                                                                                 / "unet.json"))
        built = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sd_world / "base" / "unet"))
    assert sum(p.numel() for p in full.parameters()) == 859_520_964
    assert {k: v.ndim for k, v in built.state_dict().items()} == {k: v.ndim for k, v in full.state_dict().items()}
    assert built.config.cross_attention_dim == 768
    if FULL:
        assert sum(p.numel() for p in built.parameters()) == 859_520_964
    compvis = safe_torch_load(next((sd_world / "ablations").glob("*.ckpt")))["state_dict"]
    assert len(compvis) == 32 and all(v.shape[1] == 768 for v in compvis.values())
    if FULL:
        assert sum(v.numel() for v in compvis.values()) == 19_169_280
    tok = CLIPTokenizer.from_pretrained(sd_world / "base" / "tokenizer")
    import open_clip

    prompt = "a painting of snoopy in van gogh style"
    ids = tok(prompt).input_ids
    assert len(ids) == 10 and ids == open_clip.get_tokenizer("ViT-B-32")([prompt])[0][:10].tolist()


def test_grid_through_the_service(service, run, sd_world):
    """The default cell is plain diffusers' image; λ ≠ 0 cells differ from it; metrics for every cell."""
    from diffusers import StableDiffusionPipeline

    spec, out = run["spec"], run["dir"]
    assert spec.prompt == "a snoopy in van gogh style" or "snoopy" in spec.prompt
    images = {p.name: _png(p) for p in (out / "images").glob("*.png")}
    assert len(images) == 2 * 9
    default = images["none_r1c1_obj0_sty0_seed42.png"]
    pipe = StableDiffusionPipeline.from_pretrained(sd_world / "base", safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    # bit for bit at the same number of torch CPU threads as the service's (TAD_TORCH_THREADS; torch's default)
    with torch_threads(service.models.threads):
        ref = pipe(spec.prompt, num_inference_steps=spec.steps, guidance_scale=spec.guidance, height=64, width=64,
                   generator=torch.Generator().manual_seed(42)).images[0]
    assert np.array_equal(default, np.asarray(ref)), "same seed ⇒ the default cell is plain diffusers' image"
    for name, img in images.items():
        if name.startswith("none_") and "obj0_sty0" not in name:
            assert not np.array_equal(img, default), name
    # the ControlNet changes the image
    assert not np.array_equal(images["canny_r1c1_obj0_sty0_seed42.png"], default)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 18
    for r in rows:
        for col in ("clip_score_object", "clip_accuracy_object", "clip_score_style", "clip_accuracy_style"):
            assert r[col] not in ("", None), (col, r)


def test_base_weights_bit_identical_after_the_grid(service, run, sd_world):
    from tad_demo.core.checkpoints import load_weights

    on_disk = load_weights(sd_world / "base")
    pipe = service.models.pipe
    for comp in ("unet", "text_encoder"):
        live = getattr(pipe, comp).state_dict()
        for k, v in live.items():
            key = f"{comp}.{k}" if f"{comp}.{k}" in on_disk else f"{comp}.text_model.{k}"
            if key in on_disk:
                assert torch.equal(v, on_disk[key]), key


def test_recipe_reproduces_the_run(service, run):
    from tad_demo.grid import GridSpec, run_grid

    spec = GridSpec.load(run["dir"] / "recipe.yaml")
    spec = replace(spec, controls=[c for c in spec.controls if c.kind == "none"])  # half the work, same weights
    result = run_grid(spec, models=service.models)
    for cell in result.cells:
        got = np.asarray(cell.images[0].convert("RGB"))
        assert np.array_equal(got, _png(run["dir"] / "images" / cell.image_name(42))), cell.image_name(42)


def test_research_views_on_the_sd_world(service, sd_world, tmp_path):
    """sweep, multi, analysis, adaptive and eval on the SD-shaped model with its own concepts, vocabulary and
    controls (its world.json), not the toy world's: one prompt, λ ∈ {0, 1}, 2 steps, 64 px."""
    from tad_demo.core.world import World
    from tad_demo.research.adaptive import select
    from tad_demo.research.analyze import analyze
    from tad_demo.research.batch_eval import EvalSpec, run_eval
    from tad_demo.research.lab import Lab
    from tad_demo.research.multi import run_multi
    from tad_demo.research.sweep import run_sweep

    world = World.load(sd_world)
    lab = Lab.from_world(world, models=service.models, steps=2)
    assert lab.base == str(sd_world / "base") and set(lab.concepts) == {"snoopy", "van gogh"}
    from tad_demo.research.sweep import default_controls

    assert default_controls(lab, "snoopy")[:2] == ["cat", "robot"]  # this world's never-ablated controls
    sweep = run_sweep(lab, "snoopy", [0.0, 1.0], controls=["cat"], n_prompts=1, seeds=[1])
    assert {r["concept"] for r in sweep.rows} == {"snoopy", "dog", "cat"}  # the concept, its anchor, a control
    assert "snoopy" in sweep.prompts["snoopy"][0] and "dog" in sweep.prompts["dog"][0]
    multi = run_multi(lab, ["snoopy", "van gogh"], methods=("linear",), n_prompts=1, seeds=[1], controls=["cat"],
                      random_baseline=False, base_line=False, ns=[2])
    assert [r["n"] for r in multi.rows] == [2] and multi.controls == ["cat"]
    result = analyze({n: lab.vector(n) for n in ("snoopy", "van gogh")})
    assert result.norms["snoopy"] > 0 and len(result.names) == 2
    sel = select(lab, "a snoopy in van gogh style", ["snoopy", "van gogh"], t_switch=1, alpha=2.0, seeds=[1],
                 top_k=1)
    assert len(sel.chosen) == 1 and sel.chosen[0] in ("snoopy", "van gogh")
    spec = EvalSpec(concepts=[world.concepts[0]], world=str(sd_world), lambdas=[1.0], n_prompts=1, seeds=[1],
                    steps=2, hard_negatives=True)
    res = run_eval(spec, tmp_path / "eval", lab=lab)
    assert [s["target"] for s in res["summary"]] == ["snoopy", "beagles", "basset hound", "harrier dog",
                                                     "english foxhound"]


def test_research_service_on_the_catalog_base(service, sd_world):
    """The app's research views on the catalog's base ``sd-shaped``: a Lab of that model with its catalog concepts,
    anchors and CLIP, prompts from DEFAULT_TEMPLATES and the other concepts (sweep) or the anchors (multi) as
    controls; not the toy world's (smiley, …) nor the world.json's (cat, robot). 1 prompt, 2 steps, 64 px."""
    from tad_demo.app.errors import UserError
    from tad_demo.app.research_service import ResearchService

    research = ResearchService(service)
    assert [v for _, v in research.base_config("sd-shaped")["concepts"]] == ["snoopy", "van gogh"]
    with pytest.raises(UserError, match="concept: unknown concept 'smiley'; known: snoopy, van gogh"):
        research.sweep("smiley", "0, 1", n_prompts=1, steps=2, base="sd-shaped")
    lab = research._lab(2, "sd-shaped")
    assert (lab.base, lab.world, lab.height, lab.width) == (str(sd_world / "base"), None, 64, 64)
    assert lab.prompts("snoopy", 1) == ["a photo of snoopy"]

    sweep = research.sweep("snoopy", "0, 1", n_prompts=1, steps=2, base="sd-shaped")
    rows = list(csv.DictReader(open(sweep["csv"])))
    assert {(r["concept"], r["role"]) for r in rows} == {("snoopy", "target"), ("dog", "anchor"),
                                                         ("van gogh", "control")}
    assert len(rows) == 2 * 3 and "2 λ × 3 concepts × 1 prompts = 6 images, 2 steps" in sweep["status"]

    multi = research.multi(["van gogh", "snoopy"], ["linear"], n_prompts=1, steps=2, base="sd-shaped")
    assert "Controls (never ablated): painting, dog." in multi["status"]
    data = multi["table"]["data"]
    assert [(r[0], r[1], r[2]) for r in data[:3]] == [("base", 0, "(none)"), ("linear", 1, "van gogh"),
                                                      ("linear", 2, "van gogh+snoopy")]
    assert {r[0] for r in data} == {"base", "linear", "random"}


@pytest.fixture(scope="module")
def single_file(sd_world) -> Path:
    """The base as one original-SD (LDM) checkpoint, where the SD Hub repos keep theirs: in a folder with the
    pipeline's configs and tokenizer (names from tests/test_checkpoints.py's independent LDM table; built once)."""
    import shutil

    from safetensors.torch import save_file
    from test_checkpoints import ldm_unet_name, ldm_vae_name

    from tad_demo.core.checkpoints import load_weights

    path = sd_world / "single" / "sd-v1-shaped.safetensors"
    if path.is_file():
        return path
    shutil.copytree(sd_world / "base", path.parent, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))  # configs only: no weights
    out = {}
    for key, v in load_weights(sd_world / "base", components=("unet", "text_encoder", "vae")).items():
        comp, name = key.split(".", 1)
        if comp == "unet":
            out["model.diffusion_model." + ldm_unet_name(name, cross_up=frozenset({1, 2, 3}))] = v
        elif comp == "text_encoder":
            out["cond_stage_model.transformer." + name] = v
        else:
            ldm = ldm_vae_name(name, n_blocks=4)
            if ".mid.attn_1." in ldm and name.endswith("weight") and v.ndim == 2:
                v = v[:, :, None, None]  # LDM attention projections are 1×1 convs
            out["first_stage_model." + ldm] = v.contiguous()
    tmp = path.with_name(path.name + ".tmp")
    save_file(out, str(tmp))
    tmp.replace(path)
    return path


def test_single_file_ldm_base_gives_the_same_grid(service, sd_world, single_file):
    """A whole SD-1.x model as one LDM ``.safetensors`` (converted by diffusers' single-file loader, configs from
    the folder it sits in, offline) gives the folder's cells bit for bit, base and ablated."""
    from tad_demo.app.request import GridRequest
    from tad_demo.grid import run_grid

    spec, _ = service.build(GridRequest(base="sd-shaped", object="snoopy", style="van gogh", seeds="42", steps=2,
                                        height=64, width=64, clip_metrics=False))
    spec = replace(spec, object_lambdas=(1.0, 0.0), style_lambdas=(0.0,))  # 2 cells: ablated, base
    folder = run_grid(spec, models=service.models)
    single = run_grid(replace(spec, base=str(single_file)), models=service.models)
    assert service.models.base == str(single_file)
    for a, b in zip(folder.cells, single.cells):
        assert (a.object_lambda, a.style_lambda) == (b.object_lambda, b.style_lambda)
        assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0])), a.image_name(42)
