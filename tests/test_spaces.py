"""Hugging Face Spaces: with the ``spaces`` package installed, the heavy calls get the ZeroGPU decorator (the grid's
``compute`` and the research views) and the decorator is a no-op off Spaces, so the same app runs everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

spaces = pytest.importorskip("spaces")

ROOT = Path(__file__).resolve().parents[1]


def test_the_real_decorator_is_a_no_op_off_spaces():
    def f(x):
        return x + 1

    assert spaces.GPU(duration=120)(f) is f
    assert spaces.GPU(f) is f


def test_heavy_calls_are_decorated_where_spaces_expects_them(monkeypatch, tmp_path):
    from tad_demo.app.research_service import ResearchService
    from tad_demo.app.service import Service
    from tad_demo.app.settings import Settings

    decorated: dict[str, int] = {}

    def gpu(duration=60):
        def wrap(fn):
            decorated[fn.__name__] = duration

            def on_gpu(*a, **kw):
                return fn(*a, **kw)

            on_gpu.zero_gpu = True
            return on_gpu
        return wrap

    monkeypatch.setattr(spaces, "GPU", gpu)
    service = Service(Settings(assets=ROOT / "assets" / "toyworld", catalog=ROOT / "assets" / "catalog.yaml",
                               work_dir=tmp_path, hosted=True))
    research = ResearchService(service)
    assert decorated == {"compute": 120, "sweep": 300, "multi": 300, "analysis": 300, "adaptive": 300}
    assert service.compute.zero_gpu and all(getattr(research, n).zero_gpu for n in ("sweep", "multi", "analysis",
                                                                                     "adaptive"))
    # nothing else that touches the GPU runs outside a decorated call: building a request loads no model
    spec, _ = service.build(service.request_of({"base": "toyworld"}))
    assert service.models.pipe is None and spec.base
