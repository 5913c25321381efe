"""The app: settings, the service's validation, and the served API (gradio_client) on a tiny toy world."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
import yaml
from app_world import build_tiny_world, free_port
from PIL import Image

from tad_demo.app.errors import UserError
from tad_demo.app.service import GridRequest, Service
from tad_demo.app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # s per API call: generous, the CI machine may be busy


# One torch thread for the whole module (the fixture lives in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    return build_tiny_world(tmp_path_factory.mktemp("app") / "world")


def _settings(world_dir: Path, work: Path, **extra: str) -> Settings:
    env = {"TAD_ASSETS": str(world_dir), "TAD_CATALOG": str(ROOT / "assets" / "catalog.yaml"),
           "TAD_WORK_DIR": str(work), "TAD_QUEUE_SIZE": "64", "TAD_MAX_STEPS": "400", **extra}
    return Settings.from_env(env)


def _load_app():
    spec = importlib.util.spec_from_file_location("tad_app", ROOT / "app.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def served(world_dir, tmp_path_factory):
    """The app (app.build, as `python app.py` does) served from this process on a free port."""
    from tad_demo.app import ui

    settings = _settings(world_dir, tmp_path_factory.mktemp("work"))
    service, demo = _load_app().build(settings)
    opts = {**ui.launch_options(settings), "server_port": free_port()}
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **opts)
    yield url, service
    demo.close()


@pytest.fixture(scope="module")
def hosted(world_dir, tmp_path_factory) -> Service:
    return Service(_settings(world_dir, tmp_path_factory.mktemp("hosted"), SPACE_ID="someone/tad"))


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def _recipe(result) -> dict:
    return yaml.safe_load(Path(result[10]).read_text())


def _refused(service: Service, match: str, **fields) -> str:
    with pytest.raises(UserError) as e:
        service.build(GridRequest(**fields))
    msg = str(e.value)
    assert match in msg, msg
    assert "\n" not in msg
    return msg


# --- settings ------------------------------------------------------------------------------------------------

def test_settings_defaults_are_local_and_clamped():
    s = Settings.from_env({})
    assert (s.host, s.port, s.hosted) == ("127.0.0.1", 7860, False)
    s = Settings.from_env({"TAD_MAX_STEPS": "1e9", "TAD_MAX_SIDE": "100", "GRADIO_SERVER_PORT": "junk",
                           "TAD_MAX_LAMBDA": "nan", "SPACE_ID": "me/space", "TAD_MODEL_DIRS": "/"})
    assert s.max_steps == 1000 and s.max_side == 96 and s.port == 7860 and s.max_lambda == 3.0
    assert s.hosted and s.model_dirs == ()  # hosted: no local folders whatever TAD_MODEL_DIRS says


def test_ui_does_not_import_torch():
    code = "import sys, tad_demo.app.ui, tad_demo.app.settings; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=600)


# --- validation (no model is loaded) ---------------------------------------------------------------------------

def test_valid_request_builds_the_toy_grid(served):
    _, service = served
    spec, normalized = service.build(GridRequest(object_lambdas="0.5, 0, -1", seeds="7, 8"))
    assert spec.object.name == "smiley" and spec.style.name == "striped"
    assert spec.object_lambdas == (0.5, 0.0, -1.0) and spec.seeds == [7, 8] and spec.height == 32
    assert normalized["sources"] == ["assets:ablations/smiley.safetensors", "assets:ablations/striped.safetensors"]


def test_bad_numbers_are_refused_with_the_field_named(served):
    _, service = served
    _refused(service, "object λ: 1e+09 is outside", object_lambdas=[1e9, 0, -1])
    _refused(service, "style λ", style_lambdas=[1, 0, float("nan")])
    _refused(service, "steps: 1000000 is outside 1..400", steps=10**6)
    _refused(service, "steps", steps=2.5)
    _refused(service, "height: -64 is not a multiple of 8", height=-64)
    _refused(service, "width: 36 is not a multiple of 8", width=36)
    _refused(service, "guidance", guidance=1e6)
    _refused(service, "seeds: give 1 to 4", seeds="1,2,3,4,5")
    _refused(service, "seeds: '-3'", seeds="-3")
    _refused(service, "conditioning scale", conditioning_scale=-1)
    _refused(service, "unknown slot {color}", prompt_template="a {color} {object}")
    _refused(service, "merge ties", merge_method="ties", merge_params={"density": 7})
    _refused(service, "controls: 'lineart'", controls=["lineart"])


def test_bad_models_and_paths_are_refused(served, tmp_path):
    _, service = served
    _refused(service, "neither an existing path nor a Hub id", base="no-such-model")
    _refused(service, "unknown concept 'snoopy'", object="snoopy")
    _refused(service, "path traversal", object="x → y @ ../../etc/passwd")
    _refused(service, "path traversal", base="../../etc/passwd")
    _refused(service, "outside the folders models may be read from", object="x → y @ /etc/passwd")
    _refused(service, "URLs are not fetched", extra1="x → y @ https://example.com/model.safetensors")
    _refused(service, "the target word", object="{x} → y @ owner/repo")
    # a local checkpoint inside the allowed folders is fine (local mode), and so is a Hub id (checked at run time)
    spec, _ = service.build(GridRequest(object=f"snoopy → dog @ {service.world.concepts[0].source}",
                                        extra1="tiny → circle @ owner/tiny-vector"))
    assert spec.object.name == "snoopy" and spec.extra[0].source == "owner/tiny-vector"


def test_hosted_mode_refuses_local_paths_urls_and_pickles(hosted, tmp_path):
    from gradio.utils import get_upload_folder

    upload = Path(get_upload_folder()) / "test_app" / "model.ckpt"
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_bytes(b"not really a pickle")
    with pytest.raises(UserError, match="pickle checkpoints"):
        hosted.add_model("object", None, str(upload), "snoopy", "dog")
    with pytest.raises(UserError, match="local paths are disabled"):
        hosted.add_model("base", str(Path.home()), None, None, None)
    with pytest.raises(UserError, match="URLs are not fetched"):
        hosted.add_model("base", "https://example.com/sd.safetensors", None, None, None)
    with pytest.raises(UserError, match="pickle"):
        hosted.add_model("object", "owner/repo/delta.bin", None, "snoopy", "dog")
    assert hosted.add_model("base", "CompVis/stable-diffusion-v1-4", None, None, None)[2] == \
        "CompVis/stable-diffusion-v1-4"
    safe = upload.with_suffix(".safetensors")
    safe.write_bytes(b"x")
    assert hosted.add_model("object", None, str(safe), "snoopy", "dog")[2] == f"snoopy → dog @ {safe}"
    # the toy world itself still runs when hosted
    assert hosted.build(GridRequest())[0].base == str(hosted.world.base_path)


def test_hosted_mode_loads_weights_from_safetensors_only(hosted, world_dir, tmp_path, monkeypatch):
    """Settings (SPACE_ID) → Service → Models → diffusers: use_safetensors=True on every Hub load (no network:
    from_pretrained is wrapped; Hub ids fail like offline, local folders load for real)."""
    from diffusers import ControlNetModel, StableDiffusionPipeline

    from tad_demo.runtime.models import ModelError

    seen: list[tuple[str, str, object]] = []

    def wrap(what: str, real):
        def fake(cls, ref, *args, **kwargs):
            seen.append((what, str(ref), kwargs.get("use_safetensors", "not passed")))
            if not Path(str(ref)).exists():
                raise OSError(f"{ref} is not on this offline machine")
            return real(ref, *args, **kwargs)
        return classmethod(fake)

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained",
                        wrap("base", StableDiffusionPipeline.from_pretrained))
    monkeypatch.setattr(ControlNetModel, "from_pretrained", wrap("controlnet", ControlNetModel.from_pretrained))
    local = Service(_settings(world_dir, tmp_path / "local"))
    assert hosted.models.use_safetensors is True and local.models.use_safetensors is None
    try:
        for service in (hosted, local):
            with pytest.raises(ModelError, match="offline machine"):
                service.models.load_base("CompVis/stable-diffusion-v1-4")
            service.models.load_base(str(world_dir / "base"))  # the toy world's safetensors load as they are
            with pytest.raises(ModelError, match="offline machine"):
                service.models.controlnet_pipe("lllyasviel/control_v11p_sd15_canny")
        assert seen == [("base", "CompVis/stable-diffusion-v1-4", True), ("base", str(world_dir / "base"), True),
                        ("controlnet", "lllyasviel/control_v11p_sd15_canny", True),
                        ("base", "CompVis/stable-diffusion-v1-4", None), ("base", str(world_dir / "base"), None),
                        ("controlnet", "lllyasviel/control_v11p_sd15_canny", None)]
        # a single-file pickle is refused before anything reads it
        with pytest.raises(ModelError, match="pickle checkpoint"):
            hosted.models.load_base("owner/repo/model.ckpt")
    finally:
        hosted.models.clear()
        local.models.clear()


def test_conditions_from_sketch_map_and_example_at_the_generation_size(served, tmp_path):
    _, service = served
    sketch = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    for x in range(40, 160):
        for y in range(46, 54):
            sketch.putpixel((x, y), (0, 0, 0, 255))  # a black stroke on a transparent canvas, as gr.Sketchpad gives
    images, note = service.preview(GridRequest(controls=["canny", "scribble"], condition_source="sketch",
                                               sketch={"composite": sketch, "layers": [], "background": None},
                                               resize_mode="pad", width=64, height=32))
    assert [im.size for im, _ in images] == [(64, 32), (64, 32)] and "64×32" in note, note
    assert max(images[1][0].convert("L").getdata()) == 255  # white strokes on black
    cond_map = tmp_path / "depth.png"
    Image.new("RGB", (50, 50), "gray").save(cond_map)
    spec, normalized = service.build(GridRequest(controls=["canny"], condition_source="map",
                                                 condition_image=str(cond_map)))
    assert spec.controls[0].image.size == (32, 32) and normalized["condition"] is None  # uploads are not cached
    spec, normalized = service.build(GridRequest(controls=["canny"], example="die"))
    assert normalized["condition"] == "example:die"
    _refused(service, "draw a sketch first", controls=["canny"], condition_source="sketch")
    _refused(service, "no depth ControlNet", controls=["depth"])


def test_base_change_and_added_models_update_the_choices(served):
    from tad_demo.app.ui.handlers import Handlers

    _, service = served
    h = Handlers(service)
    obj, sty, *_rest = h.base_changed("sd-v1-4", None)
    assert ("snoopy → dog", "snoopy") in obj["choices"] and obj["value"] == "snoopy"
    assert _rest[-5:] == [30, 6.0, 512, 512, "a photo of {object} in the style of {style}"]
    source = service.world.concepts[0].source
    out = h.add_model("object", source, None, "snoopy", "dog", "toyworld", None)
    assert out[1]["value"] == f"snoopy → dog @ {source}" and out[6]["concepts"][0][1] == out[1]["value"]
    with pytest.raises(gr.Error, match="anchor word"):
        h.add_model("style", source, None, "monet", "", "toyworld", None)


# --- the served API ------------------------------------------------------------------------------------------

def test_api_grid_returns_grid_metrics_and_recipe(served):
    url, _ = served
    c = _client(url)
    r = c.predict(object_lambdas="0.75, 0, -1", seeds="3", api_name="/grid")
    assert len(r) == 13 and Path(r[12]).name == "handout.html"
    grid = Image.open(r[0])
    assert grid.width > 400 and r[1] is None  # only the plain grid
    request = json.loads(grid.text["tad_request"])
    assert request["object_lambdas"] == [0.75, 0.0, -1.0]
    assert yaml.safe_load(grid.text["tad_grid"])["object_lambdas"] == [0.75, 0.0, -1.0]
    table = r[5]
    assert len(table["data"]) == 9 and table["headers"][3].startswith("CLIP score")
    assert all(isinstance(row[3], float) for row in table["data"])
    assert "2.5" in r[6] and "CLIP model" in r[6]
    assert _recipe(r)["object_lambdas"] == [0.75, 0.0, -1.0]
    assert len(r[4]) == 9 and Path(r[8]).stat().st_size > 0  # gallery of cells, zip
    assert "9 image(s)" in r[11]


def test_two_concurrent_sessions_get_their_own_results(served):
    url, _ = served
    a, b = _client(url), _client(url)
    ja = a.submit(object_lambdas="0.5, 0, -1", style_lambdas="1, 0, -0.25", seeds="11", api_name="/grid")
    jb = b.submit(object_lambdas="1.5, 0, -1", style_lambdas="1, 0, -2", seeds="12", api_name="/grid")
    ra, rb = ja.result(timeout=TIMEOUT), jb.result(timeout=TIMEOUT)
    for r, lam, enh, seed in ((ra, 0.5, -0.25, 11), (rb, 1.5, -2.0, 12)):
        recipe = _recipe(r)
        assert recipe["object_lambdas"] == [lam, 0.0, -1.0] and recipe["style_lambdas"] == [1.0, 0.0, enh]
        assert recipe["seeds"] == [seed]
        assert json.loads(Image.open(r[0]).text["tad_request"])["object_lambdas"][0] == lam


def test_bad_inputs_through_the_api_then_it_keeps_serving(served):
    from gradio_client.exceptions import AppError

    url, _ = served
    c = _client(url)
    cases = [({"object_lambdas": "1e9, 0"}, "object λ: 1e.09 is outside"), ({"steps": 10**6}, "steps: 1000000"),
             ({"height": -64}, "height: -64"), ({"base": "no-such-model"}, "neither an existing path"),
             ({"object": "x → y @ ../../etc/passwd"}, "path traversal"), ({"object": "nope"}, "unknown concept")]
    for kwargs, match in cases:
        with pytest.raises(AppError, match=match.replace("(", r"\(")):
            c.predict(**kwargs, api_name="/grid")
    r = c.predict(seeds="5", api_name="/grid")
    assert _recipe(r)["seeds"] == [5]


def test_cancel_stops_within_two_steps_and_releases_the_lock(served, monkeypatch):
    url, service = served
    seen = {"after": 0}
    denoising, cancelled = threading.Event(), threading.Event()
    compute = service.compute

    def watched(normalized, spec, *, progress=None, cancel=None, **kw):
        def cancel_probe():
            if cancel():
                cancelled.set()
            return cancel()

        def progress_probe(stage, i, n):
            if stage.startswith("denoising"):
                denoising.set()
                seen["after"] += cancelled.is_set()
            progress(stage, i, n)
        return compute(normalized, spec, progress=progress_probe, cancel=cancel_probe, **kw)

    monkeypatch.setattr(service, "compute", watched)
    c = _client(url)
    job = c.submit(steps=400, seeds="1", clip_metrics=False, api_name="/grid")
    assert denoising.wait(TIMEOUT)
    t0 = time.perf_counter()
    assert "Cancelling" in c.predict(api_name="/cancel")
    with pytest.raises(Exception, match="[Cc]ancel"):
        job.result(timeout=TIMEOUT)
    assert seen["after"] <= 2, seen
    assert service.models.lock.acquire(timeout=10)  # released: a next run can start
    service.models.lock.release()
    assert not service.models.patcher.current  # weights back at the base
    assert time.perf_counter() - t0 < 60
    assert "Nothing to cancel" in c.predict(api_name="/cancel")


def test_soak_8_sessions_x_5_requests_lose_nothing(served):
    url, _ = served
    clients = [_client(url) for _ in range(8)]
    jobs = []
    for k in range(5):
        for i, c in enumerate(clients):
            lam = round(0.05 * (1 + i + 8 * k), 2)
            jobs.append((lam, c.submit(object_lambdas=f"{lam}, 0, -1", style="", seeds=str(i), clip_metrics=k % 2 == 0,
                                       api_name="/grid")))

    def check(item):
        lam, job = item
        recipe = _recipe(job.result(timeout=TIMEOUT * 4))
        return recipe["object_lambdas"][0], lam

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(check, jobs))
    assert len(got) == 40 and all(a == b for a, b in got), got


def test_examples_precomputed_and_lazily_cached(served, world_dir):
    from tad_demo.app.precompute import precompute
    from tad_demo.app.ui.handlers import Handlers

    url, service = served
    precompute(world_dir, only=["default"])
    h, loads = Handlers(service), dict(service.models.loads)
    out = h.example((0, None))
    assert "precomputed" in out[11] and Path(out[0]).is_file() and str(service.precomputed_dir) in out[0]
    assert len(out[5]["data"]) == 9 and dict(service.models.loads) == loads  # no model touched
    # the controls example is not precomputed: the click asks for Run; a Run with its values caches it for all
    assert "not precomputed" in h.example((1, None))[11]
    row = service.example_rows()[1]
    fields = {k: v for k, v in row.items() if k not in ("name", "label", "condition_image", "sketch")}
    _client(url).predict(**fields, api_name="/grid")
    out = h.example((1, None))
    assert "precomputed" in out[11] and out[1] and str(service.example_cache) in out[1]


def test_reproduce_a_recipe_gives_the_same_metrics(served, tmp_path):
    from gradio_client import handle_file

    url, _ = served
    c = _client(url)
    first = c.predict(object_lambdas="0.6, 0, -1", controls=["none", "canny"], seeds="9", api_name="/grid")
    assert first[0] and first[1]  # one grid per control
    again = c.predict(recipe=handle_file(first[8]), api_name="/reproduce")  # the zip carries the condition
    assert Path(again[9]).read_text() == Path(first[9]).read_text()
    with pytest.raises(Exception, match="cells.zip"):
        c.predict(recipe=handle_file(first[10]), api_name="/reproduce")  # YAML alone has no condition images


# --- hardened API: the defects found from outside, each with its test ----------------------------------------

def _recipe_file(service: Service, tmp_path: Path, name: str = "recipe.yaml", text: str | None = None,
                 **changes) -> Path:
    """A recipe.yaml of the default toy grid (no model runs), with ``changes`` applied to its fields."""
    spec, _ = service.build(GridRequest())
    d = {**spec.to_dict(), **changes}
    p = tmp_path / name
    p.write_text(text if text is not None else yaml.safe_dump(d, sort_keys=False, allow_unicode=True))
    return p


def _recipe_refused(service: Service, path: Path, match: str) -> str:
    with pytest.raises(UserError) as e:
        service.recipe_spec(str(path))
    msg = str(e.value)
    assert match in msg and "\n" not in msg, msg
    return msg


def test_scope_regex_is_checked_before_anything_matches(served, tmp_path):
    import torch

    from tad_demo.core.errors import TaskVectorError
    from tad_demo.core.scopes import check_scope, scope_matcher
    from tad_demo.core.task_vector import TaskVector

    _, service = served
    t0 = time.perf_counter()
    for evil in (r"^(?:[\w.]|[\w.])*!", r"(a+)+$", r"(\w|\d)*x", r"(.*)\1", "x" * 201):
        _recipe_refused(service, _recipe_file(service, tmp_path, scope=evil), "scope")
    assert time.perf_counter() - t0 < 10  # refused by shape, not by trying
    # named scopes and simple patterns still work, through the time-bounded matcher
    tv = TaskVector({"unet.a.attn2.to_k.weight": torch.ones(2), "unet.a.attn1.to_q.weight": torch.ones(2)})
    assert set(tv.restrict("cross_attn_kv").deltas) == {"unet.a.attn2.to_k.weight"}
    assert set(tv.restrict(r"attn1\.to_[qk]").deltas) == {"unet.a.attn1.to_q.weight"}
    assert scope_matcher("unet")("unet.x") and check_scope("cross_attn") == r"attn2\."
    with pytest.raises(TaskVectorError, match="exponential"):
        tv.restrict(r"^(?:[\w.]|[\w.])*!")
    spec, _ = service.recipe_spec(str(_recipe_file(service, tmp_path, scope="cross_attn_kv")))
    assert spec.scope == "cross_attn_kv"


def test_yaml_aliases_huge_recipes_and_bad_hashes_are_refused(served, tmp_path):
    from tad_demo.app.ui.handlers import Handlers

    _, service = served
    good = _recipe_file(service, tmp_path).read_text()
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    bomb = good.replace("hashes: {}", "hashes:\n  " + laughs.replace("\n", "\n  ").rstrip())
    assert bomb != good
    _recipe_refused(service, _recipe_file(service, tmp_path, text=bomb), "aliases")
    _recipe_refused(service, _recipe_file(service, tmp_path, hashes=["not", "a", "mapping"]), "hashes")
    _recipe_refused(service, _recipe_file(service, tmp_path, hashes={"x": "y" * 10_000}), "hashes")
    _recipe_refused(service, _recipe_file(service, tmp_path, hashes={f"k{i}": "0" for i in range(100)}), "hashes")
    _recipe_refused(service, _recipe_file(service, tmp_path, merge=[1, 2]), "merge must be a mapping")
    # a 21 MB recipe is refused by its size before it is parsed (the upload handler runs outside the queue)
    huge = tmp_path / "huge.yaml"
    huge.write_text("tad_grid: 1\nbase: x\n# " + "x" * (21 * 2**20) + "\n")
    t0 = time.perf_counter()
    out = Handlers(service).recipe_loaded(str(huge))
    assert time.perf_counter() - t0 < 2 and "Recipe refused" in out[-1] and "kB" in out[-1], out[-1]


def test_zip_bombs_are_capped_and_unpacked_folders_always_deleted(served, tmp_path):
    import zipfile

    _, service = served
    unpacked = service.settings.work_dir / "recipes"
    recipe = _recipe_file(service, tmp_path).read_text()

    def zipped(name: str, files: dict[str, bytes]) -> Path:
        p = tmp_path / name
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("recipe.yaml", recipe)
            for n, data in files.items():
                z.writestr(n, data)
        return p

    big = zipped("big.zip", {f"conditions/c{i}.png": bytes(19 * 2**20) for i in range(4)})  # 76 MB unpacked
    assert big.stat().st_size < 2**20
    _recipe_refused(service, big, "unpacks to")
    many = zipped("many.zip", {f"conditions/c{i}.png": b"x" for i in range(20)})
    _recipe_refused(service, many, "at most 16")
    not_png = zipped("bad.zip", {"conditions/canny.png": b"not an image"})
    spec, _ = service.recipe_spec(str(not_png))  # the recipe has no control: the stray file is not read
    assert spec.controls[0].kind == "none"
    bad_ref = yaml.safe_load(recipe)
    bad_ref["controls"] = [{"kind": "canny", "model": "x", "scale": 1.0, "image": "conditions/canny.png"}]
    recipe = yaml.safe_dump(bad_ref)
    _recipe_refused(service, zipped("bad2.zip", {"conditions/canny.png": b"not an image"}), "not a readable image")
    assert not unpacked.exists() or not any(unpacked.iterdir()), list(unpacked.iterdir())


def test_format_specs_in_the_prompt_template_are_refused(served, tmp_path):
    _, service = served
    _refused(service, "without a format", prompt_template="a {object:>10000000} in {style}")
    _refused(service, "without a format", prompt_template="a {object!r} in {style}")
    _recipe_refused(service, _recipe_file(service, tmp_path, prompt_template="a {object:>10000000} in {style}"),
                    "without a format")


def test_the_grid_has_a_compute_budget_that_says_what_to_lower(served):
    _, service = served
    msg = _refused(service, "megapixel-steps", height=768, width=768, steps=4, seeds="1")
    assert "lower the steps, the size" in msg
    service.build(GridRequest(height=64, width=64, steps=4))  # a small grid is within the budget


def test_recipes_are_held_to_the_form_s_limits(served, tmp_path):
    _, service = served
    spec, _ = service.build(GridRequest())
    obj = spec.to_dict()["object"]
    _recipe_refused(service, _recipe_file(service, tmp_path, guidance=45.0), "recipe guidance: 45 is outside [0, 30]")
    _recipe_refused(service, _recipe_file(service, tmp_path, object={**obj, "name": "x" * 10_000}), "name")
    _recipe_refused(service, _recipe_file(service, tmp_path, prompt_template="a {object} " + "y" * 400), "prompt:")
    _recipe_refused(service, _recipe_file(service, tmp_path, object_lambdas=[99, 0, -1]),
                    "recipe object λ: 99 is outside")
    _recipe_refused(service, _recipe_file(service, tmp_path, steps=4, height=768, width=768), "megapixel-steps")


def test_bad_values_get_one_line_naming_the_field(served, tmp_path):
    import pickle

    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    url, service = served
    c = _client(url)
    evil = service.settings.work_dir / "uploads" / "evil.ckpt"
    evil.parent.mkdir(parents=True, exist_ok=True)
    evil.write_bytes(pickle.dumps({"state_dict": {"x": print}}))  # a global: refused by weights_only
    text = tmp_path / "not_an_image.png"
    text.write_text("hello")
    for kwargs, match in (({"steps": float("nan")}, "steps: nan"), ({"height": float("inf")}, "height: inf")):
        msg = _raw_grid_error(url, c, **kwargs)  # NaN/∞ as raw JSON: gradio_client cannot even send them
        assert match in msg and "\n" not in msg, msg
    cases = [({"steps": "abc"}, "steps: 'abc'"), ({"object_lambdas": "1, abc"}, "object λ: 'abc'"),
             ({"object_lambdas": "99"}, "object λ: 99 is outside [-3, 3]"),
             ({"guidance": 31}, "guidance: 31 is outside"), ({"conditioning_scale": 9}, "conditioning scale: 9"),
             ({"extra1": "smiley", "extra1_lambda": "x"}, "extra concept 1 λ: 'x'"),
             ({"merge_params": [1, 2]}, "merge_params: expected a mapping"),
             ({"controls": ["none", "canny"], "condition_source": "map", "condition_image": handle_file(str(text))},
              "not an image"),
             ({"object": f"evil → dog @ {evil}", "style": ""}, "refused to load")]
    for kwargs, match in cases:
        with pytest.raises(AppError) as e:
            c.predict(**kwargs, api_name="/grid")
        msg = str(e.value)
        assert match in msg and "\n" not in msg.strip(), (kwargs, msg)
        assert "weights_only" not in msg and str(service.settings.work_dir) not in msg, msg
    assert _recipe(c.predict(seeds="4", style="", api_name="/grid"))["seeds"] == [4]  # still serving


def _raw_grid_error(url: str, client, **kwargs) -> str:
    """The error message of a /grid call sent as raw JSON (NaN and Infinity allowed), via the `call` routes."""
    import httpx

    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/grid"]["parameters"]
    data = [kwargs.get(p["parameter_name"], p.get("parameter_default")) for p in params]
    body = json.dumps({"data": data}, allow_nan=True)
    base = url.rstrip("/") + "/gradio_api/call/grid"
    event = httpx.post(base, content=body, headers={"Content-Type": "application/json"}, timeout=60).json()
    text = httpx.get(f"{base}/{event['event_id']}", timeout=TIMEOUT).text
    assert "event: error" in text, text[:500]
    return text.split("event: error", 1)[1].split("data:", 1)[1].strip().splitlines()[0]


def test_axes_take_lists_of_lambda_within_the_image_cap(served):
    url, service = served
    spec, normalized = service.build(GridRequest(object_lambdas="1, 0.5, 0, -0.5, -1", style=""))
    assert spec.object_lambdas == (1.0, 0.5, 0.0, -0.5, -1.0) and spec.n_images == 5
    assert normalized["object_lambdas"] == [1.0, 0.5, 0.0, -0.5, -1.0]
    _refused(service, "TAD_MAX_IMAGES", object_lambdas="3,2,1,0,-1,-2,-3,0.5,-0.5",
             style_lambdas="3,2,1,0,-1,-2,-3,0.5,-0.5", seeds="1,2")
    _refused(service, "give 1 to 9 values", object_lambdas=", ".join(str(i / 10) for i in range(10)))
    _refused(service, "each value once", object_lambdas="1, 1")
    r = _client(url).predict(object_lambdas="2, 0.5, -0.5", style="", seeds="1", api_name="/grid")
    assert _recipe(r)["object_lambdas"] == [2.0, 0.5, -0.5] and len(r[5]["data"]) == 3
    assert [row[1] for row in r[5]["data"]] == ["+2", "+0.5", "−0.5"]  # the table keeps the sign convention


def _drive(agen, stop_after: int | None = None):
    """Run an async generator handler to its end (or aclose it after ``stop_after`` partial yields, as Gradio does
    for a client that went away); returns the yields and the error it ended with."""
    import asyncio

    async def go():
        got, err = [], None
        try:
            async for out in agen:
                got.append(out)
                if stop_after is not None and sum(1 for o in got if not _is_heartbeat(o)) >= stop_after:
                    await agen.aclose()
                    break
        except Exception as e:  # noqa: BLE001
            err = e
        return got, err

    return asyncio.run(go())


def _is_heartbeat(out) -> bool:
    return all(isinstance(x, dict) and x.get("__type__") == "update" and len(x) == 1 for x in out)


def test_cells_stream_in_as_they_finish_then_the_full_outputs(served):
    from tad_demo.app.ui.handlers import Handlers

    _, service = served
    h = Handlers(service)
    got, err = _drive(h.grid(**{**GridRequest().__dict__, "seeds": "21", "style": "", "clip_metrics": True}))
    assert err is None, err
    partial = [o for o in got[:-1] if not _is_heartbeat(o)]
    assert partial, "no cell was shown before the end"
    first = partial[0]
    assert isinstance(first[0], Image.Image) and "of 3 cells" in first[11]
    assert first[4] == []  # the gallery fills at the end (re-encoding it per cell slows the generation)
    assert 1 <= len(first[5]["data"]) <= 3  # the metrics table's rows fill in with the cells
    final = got[-1]
    assert Path(final[0]).is_file() and len(final[5]["data"]) == 3 and len(final[4]) == 3
    # each finished cell comes with its CLIP numbers, the same as the finished grid's for that cell
    final_rows = {tuple(r[:3]): r for r in final[5]["data"]}
    for row in first[5]["data"]:
        assert isinstance(row[3], float) and isinstance(row[4], float), row
        assert row == final_rows[tuple(row[:3])]


def test_a_closed_or_cancelled_event_stops_the_run_and_keeps_finished_cells(served):
    import gradio as gr

    from tad_demo.app.ui.handlers import Handlers

    _, service = served
    h = Handlers(service)
    fields = {**GridRequest().__dict__, "seeds": "22", "steps": 300, "style": "", "clip_metrics": False}
    # 1. a client that went away: Gradio closes the generator; the worker stops within a step, the lock is free
    t0 = time.perf_counter()
    got, err = _drive(h.grid(**fields), stop_after=1)
    assert err is None and got
    assert service.models.lock.acquire(timeout=60), "the run went on after its event was closed"
    service.models.lock.release()
    assert not service.models.patcher.current and time.perf_counter() - t0 < 120
    # 2. Cancel: the finished cells were shown before the one-line "Cancelled"
    import asyncio

    me = SimpleNamespace(session_hash="cancel-test")  # what gr.Request gives the handlers

    async def cancel_after_first_cell():
        got, agen = [], h.grid(me, **fields)
        try:
            async for out in agen:
                got.append(out)
                if not _is_heartbeat(out):
                    assert "Cancelling" in h.cancel(me)
        except gr.Error as e:
            return got, e
        return got, None

    got, err = asyncio.run(cancel_after_first_cell())
    assert isinstance(err, gr.Error) and "ancel" in str(err), err
    assert any(isinstance(o[0], Image.Image) for o in got)  # what finished stayed on screen
    # 3. Job.cancel() / `cancels=`: Gradio cancels the event's task; the worker stops too
    async def cancel_the_task():
        first = asyncio.Event()

        async def consume():
            async for out in h.grid(**fields):
                if not _is_heartbeat(out):
                    first.set()

        task = asyncio.ensure_future(consume())
        await asyncio.wait_for(first.wait(), 120)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    t0 = time.perf_counter()
    asyncio.run(cancel_the_task())
    assert service.models.lock.acquire(timeout=60), "the run went on after its task was cancelled"
    service.models.lock.release()
    assert not service.models.patcher.current and time.perf_counter() - t0 < 180


def test_page_load_status_never_waits_for_the_model_lock(served):
    from tad_demo.app.ui.handlers import Handlers

    _, service = served
    h = Handlers(service)
    held, release = threading.Event(), threading.Event()

    def hold():
        with service.models.lock:
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)
        t0 = time.perf_counter()
        assert "running" in h.status()
        assert time.perf_counter() - t0 < 1
    finally:
        release.set()
        t.join()


def _run(service: Service, **fields) -> Path:
    spec, normalized = service.build(GridRequest(**fields))
    return service.compute(normalized, spec)


def test_history_compare_and_load_back(served):
    import gradio as gr

    from tad_demo.app.request import EXAMPLE_FIELDS
    from tad_demo.app.ui.handlers import Handlers

    _, service = served
    h = Handlers(service)
    a = _run(service, style="", seeds="5, 6", object_lambdas="1, 0, -1")
    b = _run(service, style="", seeds="6, 7", object_lambdas="1, 0.5, 0", merge_method="ties")
    hist, gallery, run_a, run_b = h.remember_run([], a.name)
    hist, gallery, run_a, run_b = h.remember_run(hist, b.name)
    hist2 = h.remember_run(hist, "default")[0]  # an example's folder is not a run of this session
    assert hist == hist2 == [a.name, b.name] and len(gallery) == 2 and "ties" in gallery[0][1]
    assert (run_a["value"], run_b["value"]) == (a.name, b.name)
    img_a, img_b, table, note = h.compare(a.name, b.name)
    assert Path(img_a).parent == a and Path(img_b).parent == b
    assert "seeds both runs used (6)" in note and "2 in one run only" in note
    # λ = 1 and 0 are in both runs: 2 cells matched; the deltas are B − A of the per-cell means at seed 6
    assert [row[1] for row in table["data"]] == ["+1", "0"]
    import csv

    def score(run, lam):
        with open(run / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        return next(float(r["clip_score_object"]) for r in rows
                    if r["seed"] == "6" and float(r["object_lambda"]) == lam)

    assert table["data"][0][3] == f"{score(b, 1.0) - score(a, 1.0):+.3f}"
    with pytest.raises(gr.Error, match="not a run of this app"):
        h.compare("../../etc", b.name)
    loaded = h.load_run(b.name)
    values = dict(zip(EXAMPLE_FIELDS, loaded))
    assert values["object_lambdas"] == "1, 0.5, 0" and values["seeds"] == "6, 7" and values["merge_method"] == "ties"
    assert values["style"] == ""
    # the handout: one self-contained printable page with the grid, the metrics table, the formula and the recipe
    page = (b / "handout.html").read_text()
    assert "data:image/png;base64," in page and "CLIP score" in page and "tad_grid: 1" in page
    assert "λ &gt; 0 ablates" in page and "@media print" in page


def test_share_link_reproduces_the_grid_s_request(served):
    import json as _json
    from urllib.parse import parse_qsl

    from tad_demo.app.request import EXAMPLE_FIELDS
    from tad_demo.app.ui.handlers import Handlers

    _, service = served
    h = Handlers(service)
    run = _run(service, style="", seeds="8", object_lambdas="1.5, 0, -0.5", steps=3)
    link = h.share_link(run.name, SimpleNamespace(headers={"referer": "http://example.org/app/?old=1"}))
    assert link.startswith("http://example.org/app/?") and "old=1" not in link
    params = dict(parse_qsl(link.split("?", 1)[1], keep_blank_values=True))  # as URLSearchParams does
    out = h.from_query(params)
    values = {k: v for k, v in zip(EXAMPLE_FIELDS, out) if not (isinstance(v, dict) and v.get("__type__"))}
    assert out[-1] and values["steps"] == 3 and values["object_lambdas"] == "1.5, 0, -0.5"
    # the other person's page builds exactly the request of the shared run (same key: same seeds, same images)
    _, normalized = service.build(GridRequest(**values))
    assert normalized == _json.loads((run / "request.json").read_text())["request"]
    # no query: the page stays as it is; junk in a query reaches the validation, which names the field
    assert all(isinstance(v, dict) for v in h.from_query({}))
    junk = dict(zip(EXAMPLE_FIELDS, h.from_query({"steps": "many", "nope": "1"})))
    assert junk["steps"] == "many" and "nope" not in junk
    _refused(service, "steps: 'many'", steps="many")


def test_file_routes_serve_a_run_s_files_and_nothing_outside_the_allowed_folders(served, tmp_path):
    """Gradio's file routes (``/gradio_api/file=…`` and the older ``/file/…``) give a run's own files and no other
    file, however its path is spelled: traversal, encoded slashes, home, the repository, a URL to proxy."""
    import urllib.error
    import urllib.parse
    import urllib.request

    url, service = served
    _client(url).predict(seeds="31", api_name="/grid")
    own = next(service.settings.work_dir.rglob("recipe.yaml"))
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    base = url.rstrip("/")

    def get(route: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(base + route, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    status, body = get(f"/gradio_api/file={own}")
    assert status == 200 and b"seeds" in body, status
    work, assets = service.settings.work_dir, service.settings.assets
    spelled = [str(secret), "/etc/passwd", f"{work}/../{secret.parent.name}/{secret.name}",
               f"{work}/..%2F..%2F..%2Fetc%2Fpasswd", urllib.parse.quote(str(secret), safe=""),
               f"{assets}/../../app.py", str(ROOT / "app.py"), str(ROOT / "README.md"), "~/.bashrc",
               "../../../../etc/passwd", f"{work}/%2e%2e/%2e%2e/etc/passwd",
               f"http://127.0.0.1:{urllib.parse.urlparse(url).port}/config"]
    for path in spelled:
        for route in (f"/gradio_api/file={path}", f"/gradio_api/file/{path}"):
            status, body = get(route)
            assert status >= 400, (route, status, body[:80])
            assert b"not for the web" not in body and b"root:" not in body and b"TAD Concept Grid" not in body
    assert get("/")[0] == 200  # and it keeps serving
