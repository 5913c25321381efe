#!/usr/bin/env python
"""First grid after launch vs a warm grid, and time to the first streamed cell vs the full grid — side by side in
one run, for `python app.py` started with the warm start on (TAD_WARM_START=1, the default) and off.

    python bench/bench_first_grid.py              # 2 launches of each mode; prints the table
    python bench/bench_first_grid.py --repeats 1

A script, not a timed unit test (numbers on a shared machine are noisy: compare the ratios, which are measured
within one process and one run). For each launch: start `python app.py` on a free port (HF_HUB_OFFLINE=1, a
temporary TAD_WORK_DIR), wait for HTTP 200 on `/`, then at once submit a /grid (seed 1) through gradio_client —
the **first grid** — then two more with other seeds — **warm grids**. Each /grid is timed from submit to its
result; the **first cell** is when the job first reports a streamed output. Targets: first grid ≤ 1.5×
a warm grid with the warm start; first cell ≤ ~1 s on the toy world.

Modes, alternated within each repeat: the app's defaults (warm start on, torch's threads: one per core); warm
start off; and one core left to the web server (TAD_TORCH_THREADS = cores − 1), which could serve the streamed
cells beside the generation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from bench_app_start import free_port, stop, wait_for_page  # noqa: E402  (the benches' shared launch helpers)


def timed_grid(client, seed: int) -> tuple[float, float | None]:
    """(seconds to the result, seconds to the first streamed output or None)."""
    t0 = time.perf_counter()
    job = client.submit(seeds=str(seed), api_name="/grid")
    first = None
    while not job.done():
        if first is None and job.outputs():
            first = time.perf_counter() - t0
        time.sleep(0.02)
    job.result()
    total = time.perf_counter() - t0
    if first is None and len(job.outputs()) > 1:
        first = total  # everything arrived between two polls
    return total, first


CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
MODES = {  # label: the app's environment
    "defaults (warm start, torch's threads)": {"TAD_WARM_START": "1"},
    "warm start off": {"TAD_WARM_START": "0"},
    f"warm start, {max(1, CORES - 1)} torch thread(s)": {"TAD_WARM_START": "1",
                                                         "TAD_TORCH_THREADS": str(max(1, CORES - 1))},
}


def launch(mode: dict[str, str], timeout: float) -> dict[str, float]:
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "TAD_WORK_DIR": tempfile.mkdtemp(prefix="bench_first_grid_"),
           "TAD_TORCH_THREADS": "0", **mode}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        page = wait_for_page(f"http://127.0.0.1:{port}/", proc, timeout)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        first, first_cell = timed_grid(client, 1)
        warm_runs = [timed_grid(client, s) for s in (2, 3)]
        return {"page": page, "first": first, "first_cell": first_cell or float("nan"),
                "warm": statistics.median(t for t, _ in warm_runs),
                "warm_cell": statistics.median((c or float("nan")) for _, c in warm_runs)}
    finally:
        stop(proc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    rows = []
    for i in range(args.repeats):
        for label, mode in MODES.items():  # alternating: other load hits every mode alike
            r = launch(mode, args.timeout)
            rows.append((label, r))
            print(f"launch {i + 1} {label}: page {r['page']:.1f} s, first grid {r['first']:.2f} s, warm grid "
                  f"{r['warm']:.2f} s → {r['first'] / r['warm']:.2f}×; first cell {r['first_cell']:.2f} s of "
                  f"{r['first']:.2f} s, warm: {r['warm_cell']:.2f} s of {r['warm']:.2f} s", flush=True)
    print("\n| mode | page | first grid | warm grid | first / warm | first cell (first grid) | "
          "first cell (warm grid) |")
    print("|---|---|---|---|---|---|---|")
    for label in MODES:
        rs = [r for m, r in rows if m == label]
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        ratio = statistics.median(r["first"] / r["warm"] for r in rs)
        print(f"| {label} | {med['page']:.1f} s | {med['first']:.2f} s | {med['warm']:.2f} s | **{ratio:.2f}×** | "
              f"{med['first_cell']:.2f} s | {med['warm_cell']:.2f} s |")
    print(f"\n({args.repeats} launch(es) per mode; medians)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
