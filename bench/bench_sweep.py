#!/usr/bin/env python
"""Sweep batching benchmark: run_sweep's one batch per λ vs one pipeline call per image, side by side (toy world).

    python bench/bench_sweep.py                     # smiley, λ ∈ {-1, 0, 0.5, 1}, 8 prompts per role, 3 cycles;
                                                    # writes its section of bench/RESULTS.md
    python bench/bench_sweep.py --quick --no-write  # a dry run: 2 λ, 2 prompts, 1 cycle, only prints

A script, not a timed unit test ("sweep batching as in the grid"). Everything runs in one
process, on the trained toy world, after a warm-up (one λ of each way: loads the models, builds τ, traces the UNet
for both batch shapes, fills the prompt and CLIP text caches):
  batched  ``run_sweep(lab, concept, lambdas)`` with its default controls: every λ is one ``lab.generate`` call
           with all roles' prompts (split only at sampling's ``batch_size``), as the grid batches the cells that
           share weights
  naive    the same images one pipeline call per image: for each λ and each (prompt, seed) of the sweep's plan,
           ``lab.generate([prompt], [seed], combo)`` under the same combination, then the same CLIP features and
           metrics (``SweepPlan.measure``); only the batching differs (each call also switches the weights in and
           out, which is what a per-image loop over ``lab.generate`` costs)
  UNet     every UNet forward pass, timed by forward pre-/post-hooks on ``lab.pipe.unet`` (bench_grid's Clock):
           (a) = batched sweep wall time / sum of its UNet forwards (the grid's target: ≤ 1.10×)
  ratios   naive / batched wall and CPU time per image, within each of ``--repeats`` alternating cycles
           [batched, naive]; medians
  equal?   the largest |difference| of CLIP score and accuracy over the rows, and the largest per-pixel difference
           of the images (a batch's composition may change the last float bits of a convolution; reported, not
           assumed zero)
CPU time is this process's (``time.process_time``): on a loaded machine it is the steadier of the two.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench_grid import TARGET_RATIO, Clock, cpu_name, fmt_s, load_note  # noqa: E402  (shared report helpers)
from results_md import publish  # noqa: E402  (bench/ is on sys.path: run as a script)

log = logging.getLogger("bench_sweep")
HEADING = "## Sweep batching (bench/bench_sweep.py)"
PARTS = ("UNet forwards", "VAE decode", "CLIP image features", "weight switches")


# --- instruments ------------------------------------------------------------------------------------------------
def instrument(clock: Clock, lab: Any) -> None:
    pipe = lab.pipe
    clock.hook(pipe.unet, "UNet forwards")
    clock.wrap(pipe.scheduler, "set_timesteps", "pipeline calls")  # once per pipeline call
    clock.wrap(pipe.vae, "decode", "VAE decode")
    clock.wrap(lab.scorer, "image_features", "CLIP image features")
    clock.wrap(lab.models.patcher, "_apply_resolved", "weight switches")  # apply and restore both go through it


@contextmanager
def recording(lab: Any) -> Iterator[list[Any]]:
    """Keep every image ``lab.generate`` returns (run_sweep keeps only the metrics)."""
    images: list[Any] = []
    generate = lab.generate

    def recorded(*args: Any, **kwargs: Any) -> list[Any]:
        out = generate(*args, **kwargs)
        images.extend(out)
        return out

    lab.generate = recorded  # an instance attribute shadowing the method
    try:
        yield images
    finally:
        del lab.generate


# --- the two ways -----------------------------------------------------------------------------------------------
def batched(lab: Any, concept: str, lambdas: list[float], n_prompts: int) -> dict[str, Any]:
    """The sweep as it is: one batch per λ."""
    from tad_demo.research.sweep import run_sweep

    with recording(lab) as images:
        w0, c0 = time.perf_counter(), time.process_time()
        result = run_sweep(lab, concept, lambdas, n_prompts=n_prompts)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"rows": result.rows, "images": images, "wall": wall, "cpu": cpu}


def naive(lab: Any, concept: str, lambdas: list[float], n_prompts: int) -> dict[str, Any]:
    """The same plan, one pipeline call per image; CLIP features and metrics as the sweep computes them."""
    from tad_demo.research.sweep import plan_sweep

    w0, c0 = time.perf_counter(), time.process_time()
    plan = plan_sweep(lab, concept, lambdas, n_prompts=n_prompts)
    prompts, seeds = plan.batch
    rows, images = [], []
    for lam in plan.lambdas:
        combo = plan.combo(lam)
        ims = [lab.generate([p], [s], combo)[0] for p, s in zip(prompts, seeds)]
        rows += plan.measure(lab, lam, lab.scorer.image_features(ims))
        images += ims
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"rows": rows, "images": images, "wall": wall, "cpu": cpu}


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Largest metric and pixel differences between two runs of the same plan."""
    import numpy as np

    if [(r["lambda"], r["concept"]) for r in a["rows"]] != [(r["lambda"], r["concept"]) for r in b["rows"]]:
        raise SystemExit("the batched and naive sweeps measured different rows")
    if len(a["images"]) != len(b["images"]):
        raise SystemExit(f"{len(a['images'])} batched images vs {len(b['images'])} naive ones")
    d_score = [abs(x["clip_score"] - y["clip_score"]) for x, y in zip(a["rows"], b["rows"])]
    d_acc = [abs(x["clip_accuracy"] - y["clip_accuracy"]) for x, y in zip(a["rows"], b["rows"])]
    d_pix = [int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max())
             for x, y in zip(a["images"], b["images"])]
    return {"score": max(d_score), "acc": max(d_acc), "acc_rows": sum(d > 0 for d in d_acc), "rows": len(d_acc),
            "pixel": max(d_pix), "images_differ": sum(d > 0 for d in d_pix), "images": len(d_pix)}


# --- main -------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", type=Path, default=ROOT / "assets" / "toyworld")
    ap.add_argument("--concept", default="smiley")
    ap.add_argument("--lambdas", type=float, nargs="+", help="λ values (default -1 0 0.5 1; --quick: 0 1)")
    ap.add_argument("--prompts", type=int, help="images per role and λ, run_sweep's n_prompts (default 8; "
                                                "--quick: 2)")
    ap.add_argument("--steps", type=int, help="denoising steps (default: world.json's)")
    ap.add_argument("--repeats", type=int, help="cycles of [batched, naive] (default 3; --quick: 1; medians)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="a dry run: 2 λ values, 2 prompts, 1 cycle")
    ap.add_argument("--note", default="", help="free text for the machine note (e.g. concurrent jobs)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    lambdas = args.lambdas or ([0.0, 1.0] if args.quick else [-1.0, 0.0, 0.5, 1.0])
    n_prompts = args.prompts or (2 if args.quick else 8)
    repeats = args.repeats or (1 if args.quick else 3)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    probe = load_note()
    wall0 = time.perf_counter()

    import inspect

    import torch
    from diffusers.utils import logging as dlogging

    from tad_demo.research.lab import Lab
    from tad_demo.research.sweep import plan_sweep
    from tad_demo.runtime.models import Models
    from tad_demo.runtime.sampling import sample

    dlogging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)  # CLIP too, not only generation (Models.computing)
    threads = args.threads or torch.get_num_threads()
    kw = {"steps": args.steps} if args.steps else {}
    lab = Lab.from_world(args.assets, models=Models(device="cpu", threads=args.threads or None), **kw)

    # 1. the plan (what both ways generate) and a warm-up of both ways on one λ (ablating, so the patcher's
    #    backups are made): models, τ, UNet traces of both batch shapes, prompt and CLIP text caches
    plan = plan_sweep(lab, args.concept, lambdas, n_prompts=n_prompts)
    per_lam = len(plan.batch[0])
    batch_size = inspect.signature(sample).parameters["batch_size"].default
    warm_lam = next((x for x in plan.lambdas if x), 1.0)
    log.info("warm-up: %d images at λ=%g batched, one naive image", per_lam, warm_lam)
    batched(lab, args.concept, [warm_lam], n_prompts)
    p, s = plan.batch
    lab.generate(p[:1], s[:1], plan.combo(warm_lam))

    # 2. cycles of [batched, naive]: each ratio is taken within one cycle, so slow drifts of the machine's load hit
    #    both ways alike
    clock = Clock()
    instrument(clock, lab)
    runs: dict[str, list[dict[str, Any]]] = {"batched": [], "naive": []}
    diffs = []
    for i in range(repeats):
        cycle = {}
        for way, fn in (("batched", batched), ("naive", naive)):
            clock.reset()
            r = fn(lab, args.concept, lambdas, n_prompts)
            r.update(parts_wall=dict(clock.wall), parts_cpu=dict(clock.cpu), calls=dict(clock.calls))
            cycle[way] = r
            log.info("%s %d/%d: %.2f s wall, %.2f s CPU, %d pipeline calls, %d UNet forwards (%.2f s)", way, i + 1,
                     repeats, r["wall"], r["cpu"], r["calls"].get("pipeline calls", 0),
                     r["calls"].get("UNet forwards", 0), r["parts_wall"].get("UNet forwards", 0.0))
        diffs.append(compare(cycle["batched"], cycle["naive"]))
        for way, r in cycle.items():
            r.pop("images")
            runs[way].append(r)
    clock.remove()
    load = probe()

    # 3. numbers: medians over cycles, ratios within a cycle
    med = statistics.median
    b, n = runs["batched"], runs["naive"]
    n_images = per_lam * len(plan.lambdas)
    unet = lambda r, k="parts_wall": r[k].get("UNet forwards", 0.0)  # noqa: E731
    ratio_a = med([r["wall"] / unet(r) for r in b])
    ratio_a_cpu = med([r["cpu"] / unet(r, "parts_cpu") for r in b])
    r_wall = med([y["wall"] / x["wall"] for x, y in zip(b, n)])
    r_cpu = med([y["cpu"] / x["cpu"] for x, y in zip(b, n)])
    r_unet = med([unet(y) / unet(x) for x, y in zip(b, n)])
    steps = lab.steps
    theory = {"batched": len(plan.lambdas) * math.ceil(per_lam / batch_size) * steps,
              "naive": n_images * steps}
    fast = lab.pipe.unet.__dict__.get("forward")
    forward = (f"traced UNet forward (tad_demo/runtime/fast_unet.py; {fast.calls['traced']} traced, "
               f"{fast.calls['eager']} eager calls in this process)" if hasattr(fast, "calls")
               else "diffusers' eager UNet forward")

    # 4. report
    cmd = shlex.join(["python", "bench/bench_sweep.py", *(sys.argv[1:] if argv is None else argv)])
    vm = psutil.virtual_memory()
    roles = ", ".join(f"{c} ({r})" for c, r in plan.roles.items())
    lines = [
        f"Command: `{cmd}` — {time.strftime('%Y-%m-%d %H:%M')}, {(time.perf_counter() - wall0) / 60:.1f} min.",
        "",
        f"Machine: {cpu_name()}, {psutil.cpu_count()} cores, {vm.total / 2**30:.0f} GiB RAM, CPU only, torch "
        f"{torch.__version__} with {threads} thread(s). {load}" + (f" ({args.note})" if args.note else "") + ".",
        "",
        f"Sweep: trained toy world, τ({args.concept}), λ ∈ {{{', '.join(f'{x:g}' for x in plan.lambdas)}}}, roles "
        f"{roles}; {n_prompts} prompts per role = {per_lam} images per λ, {n_images} in all; {steps} steps, "
        f"guidance {lab.guidance:g}, sampling batch size {batch_size} (so {math.ceil(per_lam / batch_size)} pipeline "
        f"call(s) per λ when batched); {forward}. Warm-up first, then {repeats} "
        "cycle(s) of [batched, naive]; medians, ratios taken within a cycle. Definitions in the script's docstring.",
        "",
        "| way | pipeline calls | UNet forwards (theory) | wall | wall per image | CPU time | CPU per image |",
        "|---|---|---|---|---|---|---|",
    ]
    for way, rs in runs.items():
        calls = med([r["calls"].get("pipeline calls", 0) for r in rs])
        fws = med([r["calls"].get("UNet forwards", 0) for r in rs])
        w, c = med([r["wall"] for r in rs]), med([r["cpu"] for r in rs])
        bold = "**" if way == "batched" else ""
        lines.append(f"| {bold}{way}{bold} | {calls:.0f} | {fws:.0f} ({theory[way]}) | {fmt_s(w)} | "
                     f"{fmt_s(w / n_images)} | {fmt_s(c)} | {fmt_s(c / n_images)} |")
    lines += ["", "Where the time goes (median wall per part, its share of the way's wall time; the rest is the "
              "scheduler, the pipeline's glue, latents → PIL, the text caches and the metrics):", "",
              "| part | batched | naive |", "|---|---|---|"]
    for part in (*PARTS, "rest"):
        cells = []
        for rs in runs.values():
            if part == "rest":
                vals = [r["wall"] - sum(r["parts_wall"].get(p, 0.0) for p in PARTS) for r in rs]
            else:
                vals = [r["parts_wall"].get(part, 0.0) for r in rs]
            cells.append(f"{fmt_s(med(vals))} ({med([v / r['wall'] for v, r in zip(vals, rs)]):.1%})")
        lines.append(f"| {part} | {' | '.join(cells)} |")
    d = {k: max(x[k] for x in diffs) for k in ("score", "acc", "pixel", "acc_rows", "images_differ")}
    lines += ["", "Targets:",
              f"- (a) batched sweep / its UNet forwards ≤ {TARGET_RATIO:.2f}× (the grid's target): **{ratio_a:.3f}×** "
              f"wall ({ratio_a_cpu:.3f}× CPU time) — " + ("met" if ratio_a <= TARGET_RATIO else "NOT met"),
              f"- naive / batched, per image: **{r_wall:.2f}×** wall, {r_cpu:.2f}× CPU time (batching is "
              f"{'faster' if r_wall > 1 else 'slower'}); the UNet forwards alone {r_unet:.2f}× (per cycle, wall: "
              + ", ".join(f"{y['wall'] / x['wall']:.2f}×" for x, y in zip(b, n)) + ")",
              f"- same results? largest |Δ CLIP score| {d['score']:.2e}, |Δ CLIP accuracy| {d['acc']:.3g} "
              f"({d['acc_rows']} of {diffs[0]['rows']} rows differ); images: largest per-pixel difference "
              f"{d['pixel']} / 255, {d['images_differ']} of {diffs[0]['images']} images not identical "
              "(same prompts, seeds and weights; only the batch differs)"]
    if args.quick:
        lines.append("- `--quick`: a dry run with few images; its ratios say little about the default sweep")
    md = "\n".join(lines)
    publish(args.out, HEADING, md, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
