#!/usr/bin/env python
"""App start-up benchmark: `python app.py` until its page is served, next to a bare Gradio app started the same way.

    python bench/bench_app_start.py                # 3 starts of each, medians; writes bench/RESULTS.md
    python bench/bench_app_start.py --no-write     # only prints

A script, not a timed unit test. Each start is a fresh subprocess (cold Python, warm OS file cache after the first)
with the environment app.py reads (tad_demo/app/settings.py): ``GRADIO_SERVER_NAME=127.0.0.1``, a free
``GRADIO_SERVER_PORT``, a temporary ``TAD_WORK_DIR``, ``HF_HUB_OFFLINE=1`` (nothing may be downloaded at start-up)
and ``GRADIO_ANALYTICS_ENABLED=False``. Measured: seconds from ``Popen`` to the first HTTP 200 on ``/`` (polled
every 50 ms), and the CPU time the process used until then (robust to other jobs). Side by side, in the same run
and alternating with it, the floor: a one-Markdown ``gr.Blocks`` app launched by the same Python (what Gradio
itself costs). Target: app start ≤ 15 s (median).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_grid import cpu_name, load_note  # noqa: E402  (shared report helpers)
from results_md import publish  # noqa: E402

log = logging.getLogger("bench_app_start")
HEADING = "## App start-up (bench/bench_app_start.py)"
TARGET_S = 15.0
BARE_APP = ("import gradio as gr\nwith gr.Blocks() as demo:\n    gr.Markdown('hello')\n"
            "demo.launch(server_name='127.0.0.1')\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_page(url: str, proc: subprocess.Popen, timeout: float, log_file=None) -> float:
    """Seconds until ``url`` answers HTTP 200 with a body (polled every 50 ms). Raises if ``proc`` exits first
    (quoting the last lines of ``log_file``, when given) or after ``timeout`` seconds."""
    t0 = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - t0
        if proc.poll() is not None:
            tail = []
            if log_file is not None:
                log_file.seek(0)
                tail = log_file.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"{proc.args[-1]} exited with {proc.returncode} before serving: " + " | ".join(tail))
        if elapsed > timeout:
            raise RuntimeError(f"{proc.args[-1]}: no page after {timeout:.0f} s")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200 and r.read(64):
                    return time.perf_counter() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.05)


def time_to_page(argv: list[str], env: dict[str, str], port: int, timeout: float) -> tuple[float, float]:
    """(wall, CPU) seconds from starting ``argv`` to HTTP 200 on ``/``; the process is stopped afterwards. The CPU
    time (the process's user + system, all threads) is what a start costs whatever the machine's load."""
    log_file = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_for_page(f"http://127.0.0.1:{port}/", proc, timeout, log_file)
        wall = time.perf_counter() - t0
        c = psutil.Process(proc.pid).cpu_times()
        return wall, c.user + c.system + c.children_user + c.children_system
    finally:
        stop(proc)
        log_file.close()


def stop(proc: subprocess.Popen) -> None:
    """Stop our own child process, by its handle: terminate, then kill if it has not exited within 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="starts of each program (default 3; medians)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one start")
    ap.add_argument("--note", default="", help="free text for the machine note (e.g. concurrent jobs)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    work = Path(tempfile.mkdtemp(prefix="bench_app_start_"))
    bare = work / "bare_app.py"
    bare.write_text(BARE_APP)
    base_env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "TAD_WORK_DIR": str(work / "tad"),
                "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    for k in ("SPACE_ID", "TAD_HOSTED"):  # a local start, whatever this shell has
        base_env.pop(k, None)
    programs = {"python app.py": [sys.executable, "app.py"], "bare gr.Blocks app": [sys.executable, str(bare)]}

    probe = load_note()
    times: dict[str, list[float]] = {name: [] for name in programs}
    cpus: dict[str, list[float]] = {name: [] for name in programs}
    wall0 = time.perf_counter()
    for i in range(args.repeats):
        for name, cmd in programs.items():  # alternating: load from other processes hits both alike
            port = free_port()
            env = {**base_env, "GRADIO_SERVER_PORT": str(port)}
            t, cpu = time_to_page(cmd, env, port, args.timeout)
            times[name].append(t)
            cpus[name].append(cpu)
            log.info("start %d/%d %s: %.2f s wall, %.2f s CPU", i + 1, args.repeats, name, t, cpu)
    load = probe()

    app, bare_t = statistics.median(times["python app.py"]), statistics.median(times["bare gr.Blocks app"])
    cmd = shlex.join(["python", "bench/bench_app_start.py", *sys.argv[1:]])
    note = f" ({args.note})" if args.note else ""
    vm = psutil.virtual_memory()
    lines = [
        f"Command: `{cmd}` — {time.strftime('%Y-%m-%d %H:%M')}, {(time.perf_counter() - wall0) / 60:.1f} min.",
        "",
        f"Machine: {cpu_name()}, {psutil.cpu_count()} cores, {vm.total / 2**30:.0f} GiB RAM. {load}{note}.",
        "",
        "Seconds from starting the process to HTTP 200 on `/` (fresh process each time; environment and method in "
        "the script's docstring). Medians of "
        f"{args.repeats}, the two programs alternating.",
        "",
        "| program | starts, wall (s) | median wall | vs bare Gradio | median CPU time of the process |",
        "|---|---|---|---|---|",
    ]
    for name, ts in times.items():
        lines.append(f"| {name} | {', '.join(f'{t:.2f}' for t in ts)} | **{statistics.median(ts):.2f} s** | "
                     f"{statistics.median(ts) / bare_t:.2f}× | {statistics.median(cpus[name]):.2f} s |")
    app_cpu = statistics.median(cpus["python app.py"])
    lines += ["", "Targets:", f"- app start ≤ {TARGET_S:g} s: median {app:.2f} s wall — "
              + ("met" if app <= TARGET_S else "NOT met")
              + (f" (on a loaded machine; the start itself needed {app_cpu:.2f} s of CPU)" if app_cpu < 0.8 * app
                 else "")]
    md = "\n".join(lines)
    publish(args.out, HEADING, md, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
