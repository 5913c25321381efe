"""The one table of limits: how much a run may ask for.

Two columns per quantity:

* **hard** — the bound every caller is held to: the grid engine (``GridSpec.validate``), the batch evaluation, the
  ablation command and the app. Beyond it a request is a mistake, not a big job.
* **app** — the app's cap (Gradio widgets and API), never above the hard bound. Some can be moved with an
  environment variable; the value is clamped to ``[lo, hard]`` (see ``tad_demo/app/settings.py``).

    from tad_demo.core.limits import HARD, APP
    HARD.guidance            # 50.0: no caller may ask for more
    APP["max_guidance"].default  # 30.0: what the app offers
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hard:
    """Bounds every caller is held to."""

    lambda_: float = 100.0         # |λ| of any vector
    steps: int = 1000              # denoising steps per image
    min_side: int = 8              # image height/width in pixels ...
    max_side: int = 2048
    side_multiple: int = 8         # ... a multiple of this
    images: int = 1024             # images of one grid (cells × seeds × controls)
    axis: int = 9                  # λ values on one grid axis
    guidance: float = 50.0         # classifier-free guidance scale
    conditioning_scale: float = 5.0
    seed: int = 2**63 - 1          # seeds are in 0..seed
    condition_side: int = 4096     # sides of a ControlNet condition image
    name: int = 100                # characters of a concept/vector name or anchor (they go into prompts)
    template: int = 10_000         # characters of a prompt template
    scope: int = 200               # characters of a scope regular expression
    scope_match_s: float = 0.05    # seconds one scope match may take (a time bound, whatever the pattern)
    yaml_chars: int = 256 * 1024   # characters of a recipe / grid config (a real one is a few kB)
    hashes: int = 64               # entries of a recipe's `hashes`
    hash_key: int = 600            # characters of one `hashes` key (an input's reference)
    hash_value: int = 128          # characters of one `hashes` value (a sha256 is 64)
    zip_entries: int = 16          # files taken from a run's zip (recipe.yaml + one condition per control)
    zip_mb: int = 64               # MB written when a run's zip is unpacked, all files together


HARD = Hard()


@dataclass(frozen=True)
class Cap:
    """One of the app's caps: its default, the environment variable that moves it (None: fixed), and the range
    that variable is clamped to (``hi`` is the hard bound)."""

    default: float
    env: str | None
    lo: float
    hi: float
    meaning: str


APP: dict[str, Cap] = {
    # request size (grid)
    "max_steps": Cap(100, "TAD_MAX_STEPS", 1, HARD.steps, "denoising steps per image"),
    "max_side": Cap(768, "TAD_MAX_SIDE", 64, HARD.max_side, "image height/width in pixels (multiples of 8)"),
    "min_side": Cap(32, None, HARD.min_side, HARD.max_side, "smallest image height/width in pixels"),
    "max_seeds": Cap(4, "TAD_MAX_SEEDS", 1, 64, "seeds per grid"),
    "max_images": Cap(108, "TAD_MAX_IMAGES", 1, HARD.images, "images per grid (cells × seeds × controls)"),
    "max_lambda": Cap(3.0, "TAD_MAX_LAMBDA", 0.1, HARD.lambda_, "abs(λ) of every vector"),
    "max_extra": Cap(3, "TAD_MAX_EXTRA", 0, 3, "extra concepts (multi-concept addition; the UI has 3 slots)"),
    "max_guidance": Cap(30.0, None, 0.0, HARD.guidance, "guidance scale"),
    "max_scale": Cap(2.0, None, 0.0, HARD.conditioning_scale, "ControlNet conditioning scale"),
    "max_seed": Cap(2**32 - 1, None, 0, HARD.seed, "largest seed typed in the app"),
    "max_template": Cap(300, None, 1, HARD.template, "characters of a prompt template"),
    "grid_budget": Cap(600, "TAD_GRID_BUDGET", 1, 10**6,
                       "megapixel-steps of one grid on a GPU (images × steps × height × width / 10⁶)"),
    "cpu_grid_budget": Cap(12, "TAD_CPU_GRID_BUDGET", 1, 10**6, "megapixel-steps of one grid on a CPU"),
    # research views
    "max_lambdas": Cap(9, None, 1, HARD.axis, "λ values of one sweep"),
    "max_prompts": Cap(32, None, 1, 10_000, "prompts (images) per concept and λ / run"),
    "cpu_max_steps": Cap(50, None, 1, HARD.steps, "denoising steps of a research view on a CPU"),
    "max_alpha": Cap(5.0, None, 0.0, HARD.lambda_, "candidate strength α of adaptive selection"),
    "max_calibration": Cap(32, None, 0, 10_000, "neutral prompts of adaptive selection's calibration"),
    "max_strengths": Cap(3, None, 1, 8, "probe strengths α of one adaptive selection (each costs a candidate run)"),
    "budget": Cap(12_800, None, 1, 10**9, "image-steps (images × steps) of one research run"),
    "max_expression": Cap(200, None, 1, 10_000, "characters of an analogy expression"),
    "max_prompt": Cap(300, None, 1, 10_000, "characters of the adaptive view's prompt"),
}


def app_default(name: str) -> float:
    """The app's default cap ``name`` (a key of :data:`APP`)."""
    return APP[name].default
