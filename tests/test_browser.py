"""A real browser (Debian chromium driven by Python playwright) against `python app.py` on a tiny toy world.

CI installs chromium (.ci/run); without /usr/bin/chromium this test fails on purpose rather than skipping.
Set TAD_SCREENSHOT=path/to.png to keep the screenshot (docs/screenshot_app.png is the same page, served on the
shipped world).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from app_world import build_tiny_world, free_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT = 420  # s: importing torch + gradio on a busy 2-core machine is slow
RUN_TIMEOUT = 240


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the precompute below: tiny models are op-overhead bound
    """`python app.py` in a subprocess on the tiny world, with its default example precomputed."""
    from tad_demo.app.precompute import main as precompute

    tmp = tmp_path_factory.mktemp("browser")
    world = build_tiny_world(tmp / "world")
    precompute(["--assets", str(world), "--only", "default"])
    port = free_port()
    env = {**os.environ, "TAD_ASSETS": str(world), "TAD_WORK_DIR": str(tmp / "work"), "GRADIO_SERVER_PORT": str(port),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    log = open(tmp / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    t0 = time.perf_counter()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.perf_counter() - t0 > START_TIMEOUT:
            proc.kill()
            pytest.fail(f"app.py did not serve {url}: {(tmp / 'app.log').read_text()[-3000:]}")
        time.sleep(1)
    print(f"app.py served a page after {time.perf_counter() - t0:.1f} s")
    torch.set_num_threads(threads)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_page_runs_the_default_example_and_shows_grid_and_metrics(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.is_file(), "Debian chromium is missing: apt-get update && apt-get install -y chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(app_url, wait_until="domcontentloaded")
        expect(page.get_by_role("button", name="Run grid")).to_be_visible(timeout=60_000)

        # 1. the default example loads its precomputed grid and metrics without running the model
        page.get_by_text("smiley × striped: the 3×3 grid").click()
        status = page.locator("#status")
        expect(status).to_contain_text("precomputed", timeout=60_000)
        grid = page.locator("#grid-none img")
        expect(grid).to_be_visible(timeout=30_000)
        table = page.locator("#metrics-table")
        expect(table).to_contain_text("+1")
        expect(table).to_contain_text("−1")
        expect(table.locator("[role=grid]")).to_have_attribute("aria-rowcount", "10")
        expect(page.locator("#metrics-note")).to_contain_text("2.5")

        # 2. Run: the same example through the model, with progress, then grid and table again
        page.get_by_role("button", name="Run grid").click()
        expect(status).to_contain_text(" s · prompt", timeout=RUN_TIMEOUT * 1000)  # "9 image(s) in 3.1 s · …"
        expect(grid).to_be_visible()
        assert grid.evaluate("img => img.naturalWidth") > 400
        # Gradio 6 renders a virtual table: the grid role carries the row count (header + 9 cells)
        expect(table.locator("[role=grid]")).to_have_attribute("aria-rowcount", "10")
        page.wait_for_timeout(500)
        shot = tmp_path / "screenshot_app.png"
        page.screenshot(path=str(shot), full_page=False)
        assert shot.stat().st_size > 20_000
        if os.environ.get("TAD_SCREENSHOT"):
            shutil.copy(shot, os.environ["TAD_SCREENSHOT"])
        assert not errors, errors
        browser.close()
