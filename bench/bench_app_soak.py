#!/usr/bin/env python
"""Many grids through one app: does its memory grow, and does the work dir stay within TAD_MAX_RUNS?

    python bench/bench_app_soak.py               # 50 grids, TAD_MAX_RUNS=20
    python bench/bench_app_soak.py --grids 10    # a quick look

A script, not a unit test (minutes of generation). It starts `python app.py` (HF_HUB_OFFLINE=1, a temporary
TAD_WORK_DIR, TAD_MAX_RUNS=--max-runs), runs ``--grids`` /grid requests through gradio_client, each with its own
seed (so each is a new run, never a cached one), and reads the server's resident memory (RSS, psutil) after
each. Growth is measured from the RSS after the 5th grid (the first ones load, trace and fill caches) to the last.
Targets: RSS growth ≤ 10 %; run folders in the work dir ≤ TAD_MAX_RUNS.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from bench_app_start import free_port, stop, wait_for_page  # noqa: E402  (the benches' shared launch helpers)

SETTLED = 5  # grids before the reference RSS: loading, tracing and the caches' first fill come before it


def main(argv: list[str] | None = None) -> int:
    from gradio_client import Client

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grids", type=int, default=50)
    ap.add_argument("--max-runs", type=int, default=20)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_app_soak_"))
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "TAD_WORK_DIR": str(work), "TAD_MAX_RUNS": str(args.max_runs)}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    try:
        wait_for_page(f"http://127.0.0.1:{port}/", proc, 300)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        server = psutil.Process(proc.pid)
        rss = []
        for i in range(args.grids):
            client.predict(seeds=str(1000 + i), api_name="/grid")
            rss.append(server.memory_info().rss / 2**20)
            if i + 1 in (1, SETTLED) or (i + 1) % 10 == 0:
                print(f"grid {i + 1}: RSS {rss[-1]:.0f} MiB", flush=True)
        runs = list(work.rglob("request.json"))
    finally:
        stop(proc)
    ref = rss[min(SETTLED, len(rss)) - 1]
    growth = rss[-1] / ref - 1
    print(f"\n{args.grids} grids in {(time.perf_counter() - t0) / 60:.1f} min; RSS after grid {SETTLED} "
          f"{ref:.0f} MiB, after grid {len(rss)} {rss[-1]:.0f} MiB, peak {max(rss):.0f} MiB → growth "
          f"**{growth * 100:+.1f} %** (target ≤ 10 %); run folders in the work dir: **{len(runs)}** "
          f"(TAD_MAX_RUNS={args.max_runs})")
    return 0 if growth <= 0.10 and len(runs) <= args.max_runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
