#!/usr/bin/env python
"""Grid benchmark: the concept grid on the trained toy world vs its own UNet passes vs naive per-cell loops.

    python bench/bench_grid.py                        # 3×3, 20 steps, seed 42: cold + 3 cycles of warm grid and
                                                      # naive loops + a torch-threads comparison; writes RESULTS.md
    python bench/bench_grid.py --repeats 1 --no-write # a dry run that only prints
    python bench/bench_grid.py --profile              # + cProfile (CPU time) of one warm grid, top functions

A script, not a timed unit test. Everything runs in one process, side by side:
  cold       the first grid of a fresh ``Models`` cache: loads the base pipeline, CLIP and builds the vectors
             (Python imports are timed separately), then generates, scores, renders and saves
  warm       the same grid again (``--repeats`` times): what every later request of the app costs
  UNet       every UNet forward pass of the warm grids, timed by forward pre-/post-hooks on ``pipe.unet``:
             (a) = warm grid wall time / sum of its UNet forwards (target ≤ 1.10×)
  naive      one pipeline call per cell with the cell's merged weights, the same latents, prompt and CLIP scoring
             (no labelled grid, no files: the naive side does less work), two ways:
             reload = ``StableDiffusionPipeline.from_pretrained`` + ``unet.load_state_dict(base + Σ λτ)`` per cell;
             load_state_dict = one pipeline, ``load_state_dict`` of the merged UNet state per cell
             (b) = naive / warm grid time per cell, within one cycle of [grid, naive reload, naive
             load_state_dict] (``--repeats`` cycles, medians); the naive images are compared with the grid's
  (c)        the warm grid's wall time; target ≤ 5 s on a 2-core CPU
  threads    warm grids with each torch thread count (the app's default is torch's: one per core)
  second     a warm grid from a second Python thread after the main one generated (libgomp: see Models.submit)
  trace      warm grids with the traced UNet forward and with diffusers' eager one (tad_demo/fast_unet.py);
             the naive load_state_dict loop runs on the grid's pipeline (traced), the reload loop on fresh
             diffusers pipelines (eager), as a user's own loop would

"Grid wall time" is ``run_grid`` + ``save`` (what ``python -m tad_demo grid`` does after its imports).
Where the time goes is measured by wrapping the parts (UNet, VAE decode, text encoder, CLIP, weight switches,
grid rendering, PNG saving); the rest is the scheduler and pipeline glue. The machine's load is reported
(other processes' CPU use and /proc/loadavg), together with the CPU time this process got: on a busy machine
the CPU time of the one-thread run is the better estimate of an idle machine's wall time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import platform
import pstats
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from results_md import publish  # noqa: E402  (bench/ is on sys.path: run as a script)

log = logging.getLogger("bench_grid")
HEADING = "## Grid (bench/bench_grid.py)"
TARGET_RATIO = 1.10
TARGET_WALL = 5.0


# --- shared report helpers (bench_app_start, bench_patching and bench_sweep import these) -----------------------------
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def loadavg() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def load_note() -> Callable[[], str]:
    """Start watching the machine; the returned function describes the load since (call it at the end)."""
    busy = lambda c: c.user + c.system + getattr(c, "nice", 0.0)  # noqa: E731
    own = lambda: sum(psutil.Process().cpu_times()[:4])  # noqa: E731 - self + waited-for children
    cpu0, own0, wall0, avg0 = psutil.cpu_times(), own(), time.perf_counter(), loadavg()

    def note() -> str:
        wall = time.perf_counter() - wall0
        others = max(0.0, (busy(psutil.cpu_times()) - busy(cpu0)) - (own() - own0)) / wall
        mine = (own() - own0) / wall
        return (f"Load during the run: other processes used {others:.2f} of {psutil.cpu_count()} cores on average, "
                f"this bench {mine:.2f}; /proc/loadavg (1/5/15 min) {avg0} at the start, {loadavg()} at the end")
    return note


def fmt_s(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s"


# --- timing the parts -------------------------------------------------------------------------------------------
class Clock:
    """Wall and CPU seconds per part; ``wrap`` times a callable, ``hook`` a module's forward passes."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[Callable[[], None]] = []

    def reset(self) -> None:
        self.wall.clear()
        self.cpu.clear()
        self.calls.clear()

    def _add(self, part: str, w0: float, c0: float) -> None:
        self.wall[part] += time.perf_counter() - w0
        self.cpu[part] += time.process_time() - c0
        self.calls[part] += 1

    def wrap(self, obj: Any, attr: str, part: str) -> None:
        """Replace ``obj.attr`` by a timed version (an instance attribute shadowing the method)."""
        fn = getattr(obj, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(part, w0, c0)

        object.__setattr__(obj, attr, timed)
        self._undo.append(lambda: object.__delattr__(obj, attr))

    def hook(self, module: Any, part: str) -> None:
        """Forward pre-/post-hooks: every forward pass of ``module`` (nested calls are not double counted)."""
        start: list[tuple[float, float]] = []

        def pre(*_: Any) -> None:
            start.append((time.perf_counter(), time.process_time()))

        def post(*_: Any) -> None:
            self._add(part, *start.pop())

        handles = [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        self._undo.append(lambda: [h.remove() for h in handles])

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()


def instrument(clock: Clock, models: Any, scorer: Any) -> None:
    pipe = models.pipe
    clock.hook(pipe.unet, "UNet forwards")
    clock.hook(pipe.text_encoder, "text encoder")
    clock.wrap(pipe.vae, "decode", "VAE decode")
    clock.wrap(pipe.image_processor, "postprocess", "latents → PIL")
    if scorer is not None:
        clock.wrap(scorer.model, "encode_image", "CLIP images")
        clock.wrap(scorer.model, "encode_text", "CLIP texts")
    clock.wrap(models.patcher, "_apply_resolved", "weight switches")  # apply and restore both go through it


# --- the runs ---------------------------------------------------------------------------------------------------
def timed_grid(spec: Any, models: Any, out: Path) -> dict[str, Any]:
    """One grid: run_grid + save, wall and CPU seconds of each."""
    from tad_demo.grid import run_grid, save

    w0, c0 = time.perf_counter(), time.process_time()
    result = run_grid(spec, models=models)
    w1, c1 = time.perf_counter(), time.process_time()
    save(result, out)
    w2, c2 = time.perf_counter(), time.process_time()
    return {"result": result, "run_wall": w1 - w0, "run_cpu": c1 - c0, "save_wall": w2 - w1, "save_cpu": c2 - c1,
            "wall": w2 - w0, "cpu": c2 - c0}


def naive_loop(spec: Any, models: Any, scorer: Any, *, reload: bool, cells: int) -> dict[str, Any]:
    """One pipeline call per cell with the cell's merged weights (see the module docstring)."""
    import torch
    from diffusers import StableDiffusionPipeline

    from tad_demo.runtime.sampling import initial_latents

    base_pipe = models.pipe
    vectors = {c.name: models.vector(c.source, c.format, spec.scope) for c in (spec.object, spec.style) if c}
    base_state = {k: v.clone() for k, v in base_pipe.unet.state_dict().items()}
    positions = [(r, c) for r in range(len(spec.row_lambdas)) for c in range(len(spec.col_lambdas))][:cells]
    images, w0, c0 = {}, time.perf_counter(), time.process_time()
    pipe = base_pipe
    for r, c in positions:
        if reload:
            pipe = StableDiffusionPipeline.from_pretrained(spec.base, safety_checker=None,
                                                           requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
        merged = dict(base_state)
        for concept, lam in ((spec.object, spec.row_lambdas[r]), (spec.style, spec.col_lambdas[c])):
            if concept is None or not lam:
                continue
            for key, delta in vectors[concept.name].deltas.items():
                comp, _, local = key.partition(".")
                if comp != "unet":
                    raise SystemExit(f"{concept.name}: the naive loop merges UNet vectors only, got {key}")
                merged[local] = merged[local].float() + lam * delta.float()
        pipe.unet.load_state_dict(merged)
        with torch.no_grad():
            out = pipe(spec.prompt, negative_prompt="", num_inference_steps=spec.steps, guidance_scale=spec.guidance,
                       height=spec.height, width=spec.width,
                       latents=initial_latents(pipe, spec.seeds[:1], spec.height, spec.width))
        images[(r, c)] = out.images[0]
    if scorer is not None:
        feats = scorer.image_features(list(images.values()))
        for concept, kind in ((spec.object, "object"), (spec.style, "style")):
            if concept is not None:
                scorer.per_image(feats, concept.name, concept.anchor, kind)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    base_pipe.unet.load_state_dict(base_state)  # the shared pipeline back at the base bytes
    return {"wall": wall, "cpu": cpu, "images": images, "cells": len(positions)}


def max_pixel_diff(grid_result: Any, images: dict) -> int:
    import numpy as np

    worst = 0
    for (r, c), im in images.items():
        ref = grid_result.cell(grid_result.spec.controls[0].kind, r, c).images[0]
        d = np.abs(np.asarray(ref, dtype=np.int16) - np.asarray(im, dtype=np.int16)).max()
        worst = max(worst, int(d))
    return worst


def profile_grid(spec: Any, models: Any, out: Path, top: int) -> str:
    """cProfile (CPU-time clock) of one warm grid; the top functions by own time."""
    prof = cProfile.Profile(time.process_time)
    prof.runcall(timed_grid, spec, models, out)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


# --- main -------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", type=Path, default=ROOT / "assets" / "toyworld")
    ap.add_argument("--object", default="smiley")
    ap.add_argument("--style", default="striped")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="warm grids (default 3; medians)")
    ap.add_argument("--naive-cells", type=int, default=9, help="cells of each naive loop (default all 9)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads while generating (default 0: torch's default, what the app and CLI use)")
    ap.add_argument("--thread-counts", default=f"1,{os.cpu_count() or 1}",
                    help="torch thread counts compared on extra warm grids, alternating (default 1,<cores>; "
                         "'' to skip)")
    ap.add_argument("--thread-repeats", type=int, default=2,
                    help="rounds of the thread and the traced/eager comparisons (default 2)")
    ap.add_argument("--profile", action="store_true", help="also cProfile one warm grid (always done when a "
                                                          "target is missed)")
    ap.add_argument("--note", default="", help="free text for the machine note (e.g. concurrent jobs)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    probe = load_note()
    wall0 = time.perf_counter()

    # 0. imports (what a fresh `python -m tad_demo grid` pays before any model is read)
    t0 = time.perf_counter()
    import torch
    from diffusers.utils import logging as dlogging

    from tad_demo.core.patching import torch_threads
    from tad_demo.grid import world_spec
    from tad_demo.runtime.models import Models
    t_import = time.perf_counter() - t0
    dlogging.disable_progress_bar()
    spec = world_spec(args.assets, object=args.object, style=args.style, steps=args.steps)
    work = Path(tempfile.mkdtemp(prefix="bench_grid_"))

    # 1. cold: a fresh cache
    models = Models(device="cpu", threads=args.threads or None)
    log.info("cold grid (loads the base, CLIP, the vectors)")
    cold = timed_grid(spec, models, work / "cold")
    threads = models.threads or torch.get_num_threads()  # the grid's; the naive loops get the same
    scorer = models.clip(spec.clip) if spec.clip else None
    n_cells = len(spec.row_lambdas) * len(spec.col_lambdas)

    # 2. cycles of [warm grid, naive reload, naive load_state_dict]: each ratio is taken within one cycle, so slow
    #    drifts of the machine's load hit both sides alike; every part of the grid is timed
    naive_kinds = {"reload": ("from_pretrained + load_state_dict per cell", True),
                   "load_state_dict": ("load_state_dict of the merged UNet per cell, one pipeline", False)}
    clock = Clock()
    instrument(clock, models, scorer)
    warm, parts = [], []
    naive: dict[str, list[dict[str, Any]]] = {k: [] for k in naive_kinds}
    for i in range(args.repeats):
        clock.reset()
        g = timed_grid(spec, models, work / f"warm{i}")
        g["render"] = g["result"].timings.get("render", 0.0)
        warm.append(g)
        parts.append({"wall": dict(clock.wall), "cpu": dict(clock.cpu), "calls": dict(clock.calls)})
        log.info("warm grid %d/%d: %.2f s wall, %.2f s CPU, UNet %.2f s over %d forwards", i + 1, args.repeats,
                 g["wall"], g["cpu"], clock.wall["UNet forwards"], clock.calls["UNet forwards"])
        for key, (_, reload) in naive_kinds.items():
            with torch_threads(threads):
                n = naive_loop(spec, models, scorer, reload=reload, cells=args.naive_cells)
            n["diff"] = max_pixel_diff(g["result"], n.pop("images"))
            naive[key].append(n)
            log.info("naive %s %d/%d: %.2f s wall, %.2f s CPU for %d cells", key, i + 1, args.repeats, n["wall"],
                     n["cpu"], n["cells"])
        g.pop("result")
    clock.remove()
    med = lambda xs: statistics.median(xs)  # noqa: E731
    w_wall, w_cpu = med([g["wall"] for g in warm]), med([g["cpu"] for g in warm])
    w_run = med([g["run_wall"] for g in warm])
    unet_wall = med([p["wall"]["UNet forwards"] for p in parts])
    unet_cpu = med([p["cpu"]["UNet forwards"] for p in parts])
    ratio_a = med([g["wall"] / p["wall"]["UNet forwards"] for g, p in zip(warm, parts)])
    ratio_a_run = med([g["run_wall"] / p["wall"]["UNet forwards"] for g, p in zip(warm, parts)])
    ratio_a_cpu = med([g["cpu"] / p["cpu"]["UNet forwards"] for g, p in zip(warm, parts)])

    # 3. torch threads, side by side (alternating, so load from other processes hits them alike)
    counts = sorted({int(x) for x in args.thread_counts.split(",") if x.strip()})
    by_threads: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    for _ in range(args.thread_repeats if len(counts) > 1 else 0):
        for n in counts:
            models.threads = n
            g = timed_grid(spec, models, work / f"threads{n}")
            by_threads[n].append({"wall": g["wall"], "cpu": g["cpu"]})
            log.info("warm grid with %d thread(s): %.2f s wall, %.2f s CPU", n, g["wall"], g["cpu"])
    models.threads = args.threads or None

    # 3b. the traced UNet forward (tad_demo/fast_unet.py) vs diffusers' eager forward, alternating
    fast = models.pipe.unet.__dict__.get("forward")
    by_trace: dict[str, list[dict[str, float]]] = {"traced": [], "eager": []}
    for _ in range(args.thread_repeats if fast is not None else 0):
        for label in by_trace:
            if label == "eager":
                del models.pipe.unet.forward  # the class's forward
            g = timed_grid(spec, models, work / f"trace_{label}")
            models.pipe.unet.forward = fast
            by_trace[label].append({"wall": g["wall"], "cpu": g["cpu"]})
            log.info("warm grid, %s UNet: %.2f s wall", label, g["wall"])

    # 3c. the warm grid from a second Python thread, after this one has generated: libgomp gives that thread a team
    #     of its own, and with more team threads than cores it stops spin-waiting between parallel regions (why
    #     the app generates on one compute thread only, Models.submit)
    second: list[dict[str, float]] = []
    for _ in range(args.thread_repeats):
        box: list[dict[str, Any]] = []
        t = threading.Thread(target=lambda out=box: out.append(timed_grid(spec, models, work / "second_thread")))
        t.start()
        t.join()
        second.append({"wall": box[0]["wall"], "cpu": box[0]["cpu"]})
        log.info("warm grid from a second thread: %.2f s wall", box[0]["wall"])

    # 4. profile when asked or when a target is missed
    missed = ratio_a > TARGET_RATIO or w_wall > TARGET_WALL
    prof_text = profile_grid(spec, models, work / "profiled", 25) if (args.profile or missed) else ""
    load = probe()

    # 5. report
    cmd = shlex.join(["python", "bench/bench_grid.py", *sys.argv[1:]])
    vm = psutil.virtual_memory()
    note = f" ({args.note})" if args.note else ""
    n_fw = med([p["calls"]["UNet forwards"] for p in parts])
    lines = [
        f"Command: `{cmd}` — {time.strftime('%Y-%m-%d %H:%M')}, {(time.perf_counter() - wall0) / 60:.1f} min.",
        "",
        f"Machine: {cpu_name()}, {psutil.cpu_count()} cores, {vm.total / 2**30:.0f} GiB RAM, CPU only, torch "
        f"{torch.__version__} with {threads} thread(s). {load}{note}.",
        "",
        f"Grid: trained toy world, {args.object} × {args.style}, {len(spec.row_lambdas)}×{len(spec.col_lambdas)} "
        f"cells, {spec.steps} steps, guidance {spec.guidance:g}, seed {spec.seeds[0]}, {spec.width}×{spec.height} px, "
        f"CLIP metrics on. Grid wall time = `run_grid` + `save`. {args.repeats} cycle(s) of [warm grid, naive reload, "
        "naive load_state_dict]; medians, ratios taken within a cycle. Definitions in the script's docstring.",
        "",
        "| measurement | wall | CPU time (this process) |",
        "|---|---|---|",
        f"| Python imports (torch, diffusers, tad_demo) | {fmt_s(t_import)} | — |",
        f"| cold grid (fresh cache: loads base, CLIP, vectors) | {fmt_s(cold['wall'])} | {fmt_s(cold['cpu'])} |",
        f"| **warm grid** (run_grid + save) | **{fmt_s(w_wall)}** | {fmt_s(w_cpu)} |",
        f"| warm run_grid alone | {fmt_s(w_run)} | {fmt_s(med([g['run_cpu'] for g in warm]))} |",
        f"| its {n_fw:.0f} UNet forwards (sum) | {fmt_s(unet_wall)} | {fmt_s(unet_cpu)} |",
    ]
    if second:
        lines.append(f"| warm grid from a second thread, after this one generated | "
                     f"{fmt_s(med([g['wall'] for g in second]))} | {fmt_s(med([g['cpu'] for g in second]))} |")
    for key, (label, _) in naive_kinds.items():
        ns = naive[key]
        lines.append(f"| naive {key}: {label}, {ns[0]['cells']} cells | {fmt_s(med([n['wall'] for n in ns]))} | "
                     f"{fmt_s(med([n['cpu'] for n in ns]))} |")
    lines += ["", "Where a warm grid's time goes (median wall / CPU per part; the rest is the scheduler, the "
              "pipeline's own glue and run_grid's bookkeeping):", "",
              "| part | calls | wall | share of the grid | CPU |", "|---|---|---|---|---|"]
    names = ["UNet forwards", "VAE decode", "latents → PIL", "text encoder", "CLIP images", "CLIP texts",
             "weight switches"]
    accounted_w = 0.0
    for name in names:
        ws = [p["wall"].get(name, 0.0) for p in parts]
        cs = [p["cpu"].get(name, 0.0) for p in parts]
        calls = med([p["calls"].get(name, 0) for p in parts])
        accounted_w += med(ws)
        lines.append(f"| {name} | {calls:.0f} | {fmt_s(med(ws))} | {med(ws) / w_wall:.1%} | {fmt_s(med(cs))} |")
    render = med([g["render"] for g in warm])
    save_w, save_c = med([g["save_wall"] for g in warm]), med([g["save_cpu"] for g in warm])
    lines.append(f"| labelled grid rendering | 1 | {fmt_s(render)} | {render / w_wall:.1%} | — |")
    lines.append(f"| save (PNGs with text chunks, CSV, YAML) | 1 | {fmt_s(save_w)} | {save_w / w_wall:.1%} | "
                 f"{fmt_s(save_c)} |")
    rest_w = w_wall - accounted_w - render - save_w
    lines.append(f"| rest (scheduler, pipeline glue, bookkeeping) | — | {fmt_s(rest_w)} | {rest_w / w_wall:.1%} | — |")
    lines += ["", "Targets:",
              f"- (a) warm grid / its UNet forwards ≤ {TARGET_RATIO:.2f}×: **{ratio_a:.3f}×** wall "
              f"(run_grid alone {ratio_a_run:.3f}×; CPU time {ratio_a_cpu:.3f}×) — "
              + ("met" if ratio_a <= TARGET_RATIO else "NOT met")]
    for key in naive_kinds:
        ns = naive[key]
        # per cell, so a shortened naive loop (--naive-cells) still compares like with like
        rw = med([(n["wall"] / n["cells"]) / (g["wall"] / n_cells) for n, g in zip(ns, warm)])
        rc = med([(n["cpu"] / n["cells"]) / (g["cpu"] / n_cells) for n, g in zip(ns, warm)])
        lines.append(f"- (b) naive {key} / grid, per cell: **{rw:.2f}×** wall, {rc:.2f}× CPU (the grid is "
                     f"{'faster' if rw > 1 else 'slower'}); the naive images differ from the grid's by at most "
                     f"{max(n['diff'] for n in ns)} / 255 per pixel (same latents and weights)")
    lines.append(f"- (c) warm 3×3 at {spec.steps} steps ≤ {TARGET_WALL:g} s: **{w_wall:.2f} s** wall, "
                 f"{w_cpu:.2f} s CPU — " + ("met" if w_wall <= TARGET_WALL else "NOT met")
                 + ((" (on a loaded machine: with one thread the CPU time estimates an idle machine's wall time)"
                     if threads == 1 else " (on a loaded machine: rerun on an idle one)") if w_cpu < 0.8 * w_wall
                    * threads else ""))
    if any(by_threads.values()):
        cells = "; ".join(f"{n} thread(s): {med([g['wall'] for g in gs]):.2f} s wall, "
                          f"{med([g['cpu'] for g in gs]):.2f} s CPU" for n, gs in by_threads.items() if gs)
        lines.append(f"- torch threads, warm grid (medians of {args.thread_repeats}, alternating): {cells}")
    if any(by_trace.values()):
        tw, ew = (med([g["wall"] for g in by_trace[k]]) for k in ("traced", "eager"))
        lines.append(f"- UNet forward, warm grid (medians of {args.thread_repeats}, alternating): traced "
                     f"{tw:.2f} s, diffusers' eager forward {ew:.2f} s: the trace saves **{1 - tw / ew:.0%}** "
                     "(images bit-identical: tests/test_grid.py)")
    lines.append(f"- cold grid (first call of a fresh process after imports): {cold['wall']:.2f} s wall; "
                 f"with imports {cold['wall'] + t_import:.2f} s")
    md = "\n".join(lines)
    publish(args.out, HEADING, md, write=not args.no_write)
    if prof_text:
        print("cProfile of one warm grid (CPU time, top functions by own time):\n" + prof_text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
