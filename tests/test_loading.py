"""Model loads in two threads at once (a warm start beside a request, two services in one process)."""

from __future__ import annotations

import threading

import torch

from tad_demo.runtime.pipelines import load_pipeline


def test_concurrent_loads_leave_torch_as_they_found_it(tiny_pipeline_dir):
    """diffusers' loads swap ``nn.Module.register_parameter`` and ``torch.nn.init`` for their length; loads that
    overlap must not leave a swap in place, or every module built later has its weights on the meta device."""
    register, init = torch.nn.Module.register_parameter, torch.nn.init.kaiming_uniform_
    errors: list[BaseException] = []

    def load() -> None:
        try:
            for _ in range(3):
                pipe = load_pipeline(tiny_pipeline_dir)
                assert all(p.device.type == "cpu" for p in pipe.unet.parameters())
        except BaseException as e:  # noqa: BLE001 - collected and reported below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert torch.nn.Module.register_parameter is register and torch.nn.init.kaiming_uniform_ is init
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"
