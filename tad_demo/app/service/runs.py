"""Running grids for the app: cancel flags per session, the run itself into a bounded run folder.

    flag = runs.begin(session)                       # a fresh cancel flag (a stale Cancel must not stop a new run)
    run_dir = runs.compute(normalized, spec, progress=..., cancel=flag.is_set)
    runs.end(session, flag)

A run folder holds what ``grid.save`` writes, ``request.json`` (the normalized request, its key and timings)
and ``cells.zip`` (everything, so a run can be reproduced with its condition images).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...grid import GridSpec, run_grid, save
from ...grid.run import FinishedFn
from ...runtime.models import Models
from ..settings import Settings
from .guard import guard
from .handout import write_handout
from .sources import Sources

log = logging.getLogger(__name__)
ProgressFn = Callable[[str, int, int], None]


def request_key(normalized: Mapping[str, Any]) -> str:
    """The cache key of a normalized request."""
    return hashlib.sha256(json.dumps(normalized, sort_keys=True, default=str).encode()).hexdigest()


def new_run_dir(root: Path, settings: Settings, prefix: str = "") -> Path:
    """A fresh, uniquely named folder in ``root``, after bounding the folders there: those older than the TTL
    go, then the oldest beyond ``max_runs`` (grid runs and research views alike)."""
    root.mkdir(parents=True, exist_ok=True)
    dirs = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
    now = time.time()
    for i, d in enumerate(dirs):
        if now - d.stat().st_mtime > settings.cache_ttl or len(dirs) - i >= settings.max_runs:
            shutil.rmtree(d, ignore_errors=True)
    d = root / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    d.mkdir(parents=True)
    return d


class Runs:
    """The cancel flags of running requests (the only per-user state) and the grid runs themselves."""

    def __init__(self, settings: Settings, models: Models, sources: Sources):
        self.settings, self.models, self.sources = settings, models, sources
        self.runs_dir = settings.work_dir / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.warm = threading.Event()  # set once the warm start has loaded and traced the default grid's models
        self.warm.set()                # (nothing to wait for until warm_up starts)

    # --- cancel flags --------------------------------------------------------------------------------------
    def begin(self, session: str) -> threading.Event:
        """A fresh cancel flag for the session's run."""
        ev = threading.Event()
        with self._lock:
            self._cancel[session] = ev
        return ev

    def end(self, session: str, ev: threading.Event) -> None:
        with self._lock:
            if self._cancel.get(session) is ev:
                del self._cancel[session]

    def cancel(self, session: str) -> bool:
        """Ask the session's running grid to stop (it does within one denoising step and restores the weights)."""
        with self._lock:
            ev = self._cancel.get(session)
        if ev is None:
            return False
        ev.set()
        return True

    # --- warm start ----------------------------------------------------------------------------------------
    def warm_up(self, spec: GridSpec) -> None:
        """Load and trace what ``spec`` needs (base, ControlNets, CLIP, vectors) by running it at one denoising
        step, without writing anything; a grid clicked meanwhile waits for the model lock. Never raises (a failed
        warm start only means the first grid loads the models itself)."""
        self.warm.clear()
        t0 = time.perf_counter()
        try:
            with guard("warm start"):
                run_grid(replace(spec, steps=1), models=self.models, hashes=False)
            log.info("warm start: models loaded and traced in %.1f s", time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - the app serves without a warm start
            log.warning("warm start failed (the first grid will load the models): %s", e)
        finally:
            self.warm.set()

    # --- running -------------------------------------------------------------------------------------------
    def compute(self, normalized: Mapping[str, Any], spec: GridSpec, *, progress: ProgressFn | None = None,
                cancel: Callable[[], bool] | None = None, out_dir: Path | None = None,
                on_cells: FinishedFn | None = None) -> Path:
        """Run the grid and write its folder (grid PNGs with the recipe in a text chunk, cells, CSV, YAML, zip).
        A run that fails while writing leaves no folder behind."""
        if progress:
            progress("loading" if self.warm.is_set() else "waiting for the warm start (loading and tracing the "
                     "model)", 0, 1)
        with guard("grid"):
            spec = self.sources.materialize(spec)
            result = run_grid(spec, models=self.models, progress=progress, cancel=cancel, on_cells=on_cells)
        if progress:
            progress("saving", 0, 1)
        out = out_dir or new_run_dir(self.runs_dir, self.settings)
        try:
            with guard("saving the grid"):
                self._write(out, normalized, result)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        return out

    @staticmethod
    def _write(out: Path, normalized: Mapping[str, Any], result: Any) -> None:
        # The grid PNGs carry the run's recipe (tad_grid, written by save) and the request that made it.
        save(result, out, grid_text={"tad_request": json.dumps(normalized, sort_keys=True)})
        (out / "request.json").write_text(json.dumps({"key": request_key(normalized), "request": normalized,
                                                      "timings": result.timings}, indent=1, default=str))
        write_handout(out)
        with zipfile.ZipFile(out / "cells.zip", "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(out.rglob("*")):
                if f.is_file() and f.name not in ("cells.zip", "handout.html"):
                    z.write(f, f.relative_to(out))
