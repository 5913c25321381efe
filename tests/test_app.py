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
    assert len(r) == 12
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
    cases = [({"object_lambdas": "1e9, 0"}, "1e+09 is outside"), ({"steps": 10**6}, "steps: 1000000"),
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
