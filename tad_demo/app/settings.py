"""App settings from environment variables, each with a default and clamped to a safe range.

The request caps (``max_*``) come from the one table of limits, ``tad_demo/core/limits.py`` (``APP``): its
default, its variable, and the range the variable is clamped to (never above the hard bound every caller has).

    settings = Settings.from_env()        # reads os.environ once; a bad value logs a warning and uses the default

| variable | default | meaning |
| --- | --- | --- |
| ``TAD_ASSETS`` | ``assets/toyworld`` | toy world folder (base/, clip/, ablations/, controlnet/, world.json) |
| ``TAD_CATALOG`` | ``assets/catalog.yaml`` | real models (Hub ids) offered next to the toy world |
| ``GRADIO_SERVER_NAME`` | ``127.0.0.1`` | bind address (``0.0.0.0`` to serve a LAN; Spaces sets it) |
| ``GRADIO_SERVER_PORT`` | ``7860`` | port |
| ``SPACE_ID`` | unset | set by Hugging Face Spaces: hosted mode (no local paths/URLs, no pickle uploads) |
| ``TAD_HOSTED`` | ``0`` | ``1`` forces hosted mode without Spaces (to try it locally) |
| ``TAD_MODEL_DIRS`` | cwd and home | folders local paths may point into (``os.pathsep``-separated; local runs only) |
| ``TAD_QUEUE_SIZE`` | 32 | pending grid requests before "queue full" |
| ``TAD_MAX_STEPS`` | 100 | denoising steps per image |
| ``TAD_MAX_SIDE`` | 768 | image height/width in pixels (multiples of 8) |
| ``TAD_MAX_SEEDS`` | 4 | seeds per grid |
| ``TAD_MAX_IMAGES`` | 108 | images per grid (cells × seeds × controls) |
| ``TAD_MAX_LAMBDA`` | 3 | abs(λ) of every vector |
| ``TAD_MAX_EXTRA`` | 3 | extra concepts (multi-concept addition) |
| ``TAD_GRID_BUDGET`` | 600 | megapixel-steps of one grid on a GPU (images × steps × height × width / 10⁶) |
| ``TAD_CPU_GRID_BUDGET`` | 12 | the same on a CPU (the toy world's default grid is 0.7) |
| (fixed) | | guidance ≤ 30, conditioning scale ≤ 2, seeds ≤ 2³²−1, research caps: see ``core/limits.py`` |
| ``TAD_CACHE_TTL`` | 3600 | seconds temp files live (Gradio's ``delete_cache`` and our run folders) |
| ``TAD_MAX_RUNS`` | 64 | run folders kept on disk |
| ``TAD_MAX_UPLOAD_MB`` | 2048 | largest upload (a full SD checkpoint is ~4 GB in fp32, 2 GB in fp16) |
| ``TAD_WORK_DIR`` | ``$TMPDIR/tad_app`` | run folders and the lazily cached examples |
| ``TAD_DEVICE`` | auto | ``cpu``/``cuda``/``cuda:1`` |
| ``TAD_WARM_START`` | ``1`` | load and trace the default base in the background at launch (``0``: on the first grid) |
| ``TAD_TORCH_THREADS`` | 0 | torch CPU threads while generating (0: torch's default, one per core) |
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.limits import APP

log = logging.getLogger(__name__)


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(float(raw))
    except ValueError:
        log.warning("%s=%r is not a number; using %d", name, raw, default)
        return default
    clamped = min(max(value, lo), hi)
    if clamped != value:
        log.warning("%s=%d is outside %d..%d; using %d", name, value, lo, hi, clamped)
    return clamped


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        log.warning("%s=%r is not a number; using %g", name, raw, default)
        return default
    if value != value:  # NaN
        return default
    clamped = min(max(value, lo), hi)
    if clamped != value:
        log.warning("%s=%g is outside %g..%g; using %g", name, value, lo, hi, clamped)
    return clamped


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _cap(env: Mapping[str, str], name: str) -> float:
    """The app cap ``name`` of ``core.limits.APP``: its variable's value clamped to the cap's range, else the
    default (ints stay ints)."""
    cap = APP[name]
    if cap.env is None:
        return cap.default
    if isinstance(cap.default, int):
        return _int(env, cap.env, int(cap.default), int(cap.lo), int(cap.hi))
    return _float(env, cap.env, cap.default, cap.lo, cap.hi)


@dataclass(frozen=True)
class Settings:
    """Everything the app reads from the environment (see the module docstring for the variables)."""

    assets: Path = Path("assets/toyworld")
    catalog: Path = Path("assets/catalog.yaml")
    host: str = "127.0.0.1"
    port: int = 7860
    hosted: bool = False
    model_dirs: tuple[Path, ...] = ()
    queue_size: int = 32
    # request caps (core/limits.py APP; the first six move with their environment variables)
    max_steps: int = int(APP["max_steps"].default)
    max_side: int = int(APP["max_side"].default)
    max_seeds: int = int(APP["max_seeds"].default)
    max_images: int = int(APP["max_images"].default)
    max_lambda: float = float(APP["max_lambda"].default)
    max_extra: int = int(APP["max_extra"].default)
    min_side: int = int(APP["min_side"].default)
    max_guidance: float = float(APP["max_guidance"].default)
    max_scale: float = float(APP["max_scale"].default)
    max_seed: int = int(APP["max_seed"].default)
    max_template: int = int(APP["max_template"].default)
    grid_budget: int = int(APP["grid_budget"].default)
    cpu_grid_budget: int = int(APP["cpu_grid_budget"].default)
    cache_ttl: int = 3600
    max_runs: int = 64
    max_upload_mb: int = 2048
    work_dir: Path = Path(tempfile.gettempdir()) / "tad_app"
    device: str | None = None
    threads: int = 0
    warm_start: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        hosted = bool(env.get("SPACE_ID")) or _flag(env, "TAD_HOSTED")
        dirs = env.get("TAD_MODEL_DIRS")
        model_dirs = tuple(Path(p).expanduser() for p in dirs.split(os.pathsep) if p) if dirs else \
            (Path.cwd(), Path.home())
        device = env.get("TAD_DEVICE", "").strip() or None
        return cls(
            assets=Path(env.get("TAD_ASSETS") or "assets/toyworld").expanduser(),
            catalog=Path(env.get("TAD_CATALOG") or "assets/catalog.yaml").expanduser(),
            host=(env.get("GRADIO_SERVER_NAME") or "127.0.0.1").strip(),
            port=_int(env, "GRADIO_SERVER_PORT", 7860, 1, 65535),
            hosted=hosted,
            # Hosted: no local paths at all (only the app's own assets and uploads), whatever TAD_MODEL_DIRS says.
            model_dirs=() if hosted else model_dirs,
            queue_size=_int(env, "TAD_QUEUE_SIZE", 32, 1, 1000),
            max_steps=_cap(env, "max_steps"),
            max_side=_cap(env, "max_side") // 8 * 8,
            max_seeds=_cap(env, "max_seeds"),
            max_images=_cap(env, "max_images"),
            max_lambda=_cap(env, "max_lambda"),
            max_extra=_cap(env, "max_extra"),
            grid_budget=_cap(env, "grid_budget"),
            cpu_grid_budget=_cap(env, "cpu_grid_budget"),
            cache_ttl=_int(env, "TAD_CACHE_TTL", 3600, 60, 7 * 86400),
            max_runs=_int(env, "TAD_MAX_RUNS", 64, 1, 10_000),
            max_upload_mb=_int(env, "TAD_MAX_UPLOAD_MB", 2048, 1, 16_384),
            work_dir=Path(env.get("TAD_WORK_DIR") or Path(tempfile.gettempdir()) / "tad_app").expanduser(),
            device=device,
            threads=_int(env, "TAD_TORCH_THREADS", 0, 0, os.cpu_count() or 1),
            warm_start=env.get("TAD_WARM_START", "1").strip().lower() not in ("0", "false", "no", "off"),
        )

    def budget(self, device: str) -> int:
        """Megapixel-steps one grid may take on ``device`` (``cpu``, ``cuda:0``, …)."""
        return self.cpu_grid_budget if str(device).startswith("cpu") else self.grid_budget

    def describe(self) -> dict[str, str]:
        """Plain strings, for the startup log line."""
        return {k: str(v) for k, v in asdict(self).items()}
