"""Rebuild the whole toy world with one command: VAE → base → CLIP → ablations → ControlNets → examples.

Run: ``python -m tad_demo.toyworld.train_all [--out assets/toyworld] [--smoke] [--skip vae,clip]``, then
``python -m tad_demo.toyworld.evaluate`` (36 min) and ``python -m tad_demo.ui.precompute`` for the app's examples.

Wall times measured on 2 CPU cores (often shared with other jobs; MODEL_CARD.md has the details):
VAE 14 min, base 53 min, CLIP ~20 min, 7 ablations ~30 min, 3 ControlNets 36 min: about 2.5 h in all.
Every stage is seeded; a stage's output folder is replaced only when the stage finishes.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from .data import ASSETS, WORK

log = logging.getLogger("train_all")

STAGES = ("vae", "base", "clip", "ablations", "controlnet", "examples")


def main(argv: list[str] | None = None) -> None:
    from . import examples, train_ablations, train_base, train_clip, train_controlnet, train_vae

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ASSETS), help="toy world folder to write (default assets/toyworld)")
    ap.add_argument("--work", default=str(WORK), help="intermediate files (the VAE lives here; default .cache)")
    ap.add_argument("--smoke", action="store_true", help="a few steps of every stage (minutes; for tests)")
    ap.add_argument("--skip", default="", help=f"comma-separated stages to skip: {', '.join(STAGES)}")
    args = ap.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if unknown := skip - set(STAGES):
        raise SystemExit(f"error: unknown stage(s) {', '.join(sorted(unknown))}; stages: {', '.join(STAGES)}")
    out, work = Path(args.out), Path(args.work)
    smoke = ["--smoke"] if args.smoke else []
    base, vae = out / "base", work / "vae"
    steps = {
        "vae": lambda: train_vae.main([*smoke, "--out", str(vae)]),
        "base": lambda: train_base.main([*smoke, "--vae", str(vae), "--out", str(base)]),
        "clip": lambda: train_clip.main([*smoke, "--out", str(out / "clip")]),
        # the ablation trainer also writes world.json next to its output folder
        "ablations": lambda: train_ablations.main([*smoke, "--base", str(base), "--out", str(out / "ablations")]),
        "controlnet": lambda: train_controlnet.main([*smoke, "--base", str(base), "--out", str(out / "controlnet")]),
        "examples": lambda: examples.main(["--out", str(out / "examples")]),
    }
    t_all = time.time()
    for name in STAGES:
        if name in skip:
            log.info("skip %s", name)
            continue
        t0 = time.time()
        log.info("stage %s ...", name)
        steps[name]()
        log.info("stage %s done in %.1f min", name, (time.time() - t0) / 60)
    log.info("toy world written to %s in %.1f min", out, (time.time() - t_all) / 60)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
