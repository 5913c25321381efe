"""The GPU check, one script for a machine with a CUDA GPU:

1. ``tests/test_cuda.py`` (fp16 pipelines on cuda, exact patch/restore on the device, the CPU-only traced UNet not
   taken, ControlNet on the GPU);
2. an SD-1.4-shaped 3×3 grid (random weights, ``bench/sd_v1_world.py``) through the app's service at 512 px,
   30 steps, fp16, without and with a canny ControlNet, timed: grid time against the sum of its UNet forwards
   (what is not UNet: text encoding, VAE, ControlNet, patching, CLIP, saving), the time of one weight switch
   (32 cross-attention k/v tensors), and the GPU's peak memory.

    python bench/gpu_check.py                         # writes bench/gpu_results.json and prints a summary
    python bench/gpu_check.py --skip-tests --out FILE

The SD-shaped world (~6 GB) is built once into ``$TAD_TEST_CACHE`` (default ``~/.cache/tad_demo_tests``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def run_tests() -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                          cwd=ROOT, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    print("\n".join(tail))
    return {"returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 1), "tail": tail}


class ForwardTimer:
    """Sum of a module's forward times, synchronised with the GPU at both ends of each call."""

    def __init__(self, module):
        import torch

        self.total, self.calls, self._t = 0.0, 0, 0.0
        self._sync = torch.cuda.synchronize

        def pre(*_):
            self._sync()
            self._t = time.perf_counter()

        def post(*_):
            self._sync()
            self.total += time.perf_counter() - self._t
            self.calls += 1

        self.handles = [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def reset(self) -> None:
        self.total, self.calls = 0.0, 0

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def grid_check(steps: int, side: int) -> dict:
    import torch
    from sd_v1_world import build_sd_v1_world

    from tad_demo.app.request import GridRequest
    from tad_demo.app.service import Service
    from tad_demo.app.settings import Settings
    from tad_demo.runtime.models import Models

    cache = Path(os.environ.get("TAD_TEST_CACHE") or Path.home() / ".cache" / "tad_demo_tests")
    t0 = time.perf_counter()
    world = build_sd_v1_world(cache / "sd_v1_world")
    built = time.perf_counter() - t0
    settings = Settings(catalog=world / "catalog.yaml", assets=ROOT / "assets" / "toyworld",
                        work_dir=cache / "gpu_check_runs", device="cuda")
    service = Service(settings, models=Models(device="cuda", dtype=torch.float16))
    out: dict = {"world_build_s": round(built, 1), "steps": steps, "side": side, "dtype": "float16",
                 "gpu": torch.cuda.get_device_name(0)}
    service.models.load_base(str(world / "base"))
    timer = ForwardTimer(service.models.pipe.unet)
    for controls in (["none"], ["none", "canny"]):
        req = GridRequest(base="sd-shaped", object="snoopy", style="van gogh", controls=controls, seeds="42",
                          steps=steps, height=side, width=side, condition_source="example")
        spec, normalized = service.build(req)
        service.compute(normalized, spec)  # warm-up: loads, cuDNN autotuning, CLIP
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        timer.reset()
        t0 = time.perf_counter()
        service.compute(normalized, spec)
        torch.cuda.synchronize()
        total = time.perf_counter() - t0
        out["+".join(controls)] = {"images": 9 * len(controls), "grid_s": round(total, 2),
                                   "unet_forwards": timer.calls, "unet_s": round(timer.total, 2),
                                   "not_unet_s": round(total - timer.total, 2),
                                   "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        print(f"grid {'+'.join(controls)}: {total:.2f} s, {timer.calls} UNet forwards in {timer.total:.2f} s "
              f"({100 * timer.total / total:.0f}% of the grid)")
    timer.remove()
    # one weight switch: the object vector at λ=+1, then at λ=−1 (32 k/v tensors, from the fp16 backups)
    models = service.models
    tv = models.vector(str(world / "ablations" / "snoopy_delta_epoch=000004.ckpt"), "ablation", None)
    times = []
    for lam in (1.0, -1.0, 0.5, -0.5, 1.0, 0.0):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        models.patcher.apply([(tv, lam)])
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    models.patcher.restore()
    out["patch_switch_ms"] = round(1000 * sorted(times)[len(times) // 2], 2)
    print(f"patch switch: {out['patch_switch_ms']} ms (median of {len(times)}); peak GPU memory "
          f"{out['none+canny']['peak_gpu_mem_gib']} GiB")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench" / "gpu_results.json"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--skip-tests", action="store_true")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU here: run this script on a machine with one", file=sys.stderr)
        return 2
    results = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if not args.skip_tests:
        results["tests"] = run_tests()
    results["grid"] = grid_check(args.steps, args.side)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0 if results.get("tests", {}).get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
