"""On a CUDA GPU (skipped elsewhere): fp16 pipelines, exact patch/restore on the device, the CPU-only fast path not
taken, ControlNet grids. ``bench/gpu_check.py`` runs this file, then times an SD-1.4-shaped grid.

Run: ``python -m pytest -q tests/test_cuda.py`` on a machine with a GPU (or ``python bench/gpu_check.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from app_world import build_tiny_world

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_tiny_world(tmp_path_factory.mktemp("cuda") / "world")


@pytest.fixture(scope="module")
def models():
    from tad_demo.runtime.models import Models

    return Models(device="cuda", dtype=torch.float16)


def _arr(img) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def test_fp16_grid_on_cuda_default_cell_is_the_base_models_image(world, models):
    from diffusers import StableDiffusionPipeline

    from tad_demo.grid import run_grid, world_spec
    from tad_demo.runtime.sampling import sample

    spec = world_spec(world, steps=4)
    result = run_grid(spec, models=models)
    pipe = models.pipe
    assert pipe.device.type == "cuda" and pipe.unet.dtype == torch.float16
    default = result.cell("none", 1, 1)
    ref_pipe = StableDiffusionPipeline.from_pretrained(spec.base, torch_dtype=torch.float16, safety_checker=None,
                                                       requires_safety_checker=False).to("cuda")
    ref_pipe.set_progress_bar_config(disable=True)
    ref = sample(ref_pipe, [spec.prompt], spec.seeds, steps=spec.steps, guidance=spec.guidance, height=spec.height,
                 width=spec.width)
    # GPU kernels may pick other algorithms for another process's pipeline: equal up to a few levels of 255
    assert np.abs(_arr(default.images[0]) - _arr(ref[0])).max() <= 3
    for cell in result.cells:
        img = _arr(cell.images[0])
        assert img.std() > 0, "a blank image: fp16 overflow (NaN) somewhere"
        if (cell.row, cell.col) != (1, 1):
            assert np.abs(img - _arr(default.images[0])).max() > 3, (cell.object_lambda, cell.style_lambda)


def test_patch_and_restore_are_exact_on_the_gpu(world, models):
    from tad_demo.core.patching import WeightPatcher
    from tad_demo.core.task_vector import TaskVector

    pipe = models.load_base(str(world / "base"))
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    keys = [k for k in before if "attn2.to_k" in k or "attn2.to_v" in k]
    tv = TaskVector({f"unet.{k}": 0.01 * torch.randn(before[k].shape, generator=g) for k in keys})
    patcher = WeightPatcher({"unet": pipe.unet})
    patcher.apply([(tv, 1.0)])
    want = tv.component("unet").apply({k: v.cpu() for k, v in before.items()}, 1.0)
    for k in keys:
        assert pipe.unet.state_dict()[k].device.type == "cuda"
        assert torch.equal(pipe.unet.state_dict()[k].cpu(), want[k]), k  # the CPU's bytes: fp32 math, one cast
    patcher.apply([(tv, -1.0)])
    patcher.restore()
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, before[k]), k
    patcher.release()


def test_cpu_fast_path_is_not_taken_on_the_gpu(world, models):
    from tad_demo.runtime.fast_unet import TracedForward

    pipe = models.load_base(str(world / "base"))
    assert not isinstance(pipe.unet.__dict__.get("forward"), TracedForward)


def test_controlnet_grid_on_the_gpu(world, models):
    from tad_demo.grid import run_grid, world_spec

    result = run_grid(world_spec(world, controls=("none", "canny"), steps=3), models=models)
    plain, canny = result.cell("none", 1, 1), result.cell("canny", 1, 1)
    assert next(models.controlnet_pipe(str(world / "controlnet" / "canny")).controlnet.parameters()).is_cuda
    assert np.abs(_arr(plain.images[0]) - _arr(canny.images[0])).max() > 3, "the control image changes nothing"
