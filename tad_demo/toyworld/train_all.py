"""Rebuild the whole toy world with one command: VAE → CLIP → base → ablations → ControlNets → examples.

Run: ``python -m tad_demo.toyworld.train_all [--out assets/toyworld] [--device cuda] [--smoke] [--skip clip]``,
then ``python -m tad_demo.toyworld.evaluate`` and ``python -m tad_demo.app.precompute`` for the app's examples.

Resumable: every trainer checkpoints as it goes, a finished stage is recorded in ``<work>/stages.json`` and
skipped when the command runs again (``--force`` reruns everything), and a stage's output folder is replaced
only when the stage finishes. Progress goes to ``<work>/logs/train_all.log`` as well as to the terminal.
The model card lists each stage's measured wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from .data import ASSETS, WORK

log = logging.getLogger("train_all")

STAGES = ("vae", "clip", "base", "ablations", "controlnet", "examples")


def main(argv: list[str] | None = None) -> None:
    from . import examples, train_ablations, train_base, train_clip, train_controlnet, train_vae

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ASSETS), help="toy world folder to write (default assets/toyworld)")
    ap.add_argument("--work", default=str(WORK), help="intermediate files (the VAE lives here; default .cache)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU exists")
    ap.add_argument("--smoke", action="store_true", help="a few steps of every stage (minutes; for tests)")
    ap.add_argument("--force", action="store_true", help="rerun stages recorded as done")
    ap.add_argument("--skip", default="", help=f"comma-separated stages to skip: {', '.join(STAGES)}")
    args = ap.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if unknown := skip - set(STAGES):
        raise SystemExit(f"error: unknown stage(s) {', '.join(sorted(unknown))}; stages: {', '.join(STAGES)}")
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    _log_to(work / "logs" / "train_all.log")
    common = ["--smoke"] if args.smoke else []
    dev = ["--device", args.device]
    base, vae = out / "base", work / "vae"
    steps = {
        "vae": lambda: train_vae.main([*common, *dev, "--out", str(vae)]),
        "clip": lambda: train_clip.main([*common, *dev, "--vae", str(vae), "--out", str(out / "clip")]),
        "base": lambda: train_base.main([*common, *dev, "--vae", str(vae), "--clip", str(out / "clip"),
                                         "--out", str(base)]),
        # the ablation trainer also writes world.json next to its output folder
        "ablations": lambda: train_ablations.main([*common, *dev, *(["--force"] if args.force else []),
                                                   "--base", str(base), "--out", str(out / "ablations")]),
        "controlnet": lambda: train_controlnet.main([*common, *dev, *(["--force"] if args.force else []),
                                                     "--base", str(base), "--out", str(out / "controlnet")]),
        "examples": lambda: examples.main(["--out", str(out / "examples")]),
    }
    record = work / ("stages_smoke.json" if args.smoke else "stages.json")
    done: dict[str, float] = json.loads(record.read_text()) if record.exists() and not args.force else {}
    t_all = time.time()
    for name in STAGES:
        if name in skip:
            log.info("skip %s", name)
            continue
        if name in done:
            log.info("stage %s done earlier (%.1f min); skipped (--force reruns it)", name, done[name] / 60)
            continue
        t0 = time.time()
        log.info("stage %s ...", name)
        steps[name]()
        done[name] = time.time() - t0
        record.write_text(json.dumps(done, indent=2))
        log.info("stage %s done in %.1f min", name, done[name] / 60)
    log.info("toy world written to %s in %.1f min (this run); stage times: %s", out, (time.time() - t_all) / 60,
             ", ".join(f"{k} {v / 60:.1f} min" for k, v in done.items()))


def _log_to(path: Path) -> None:
    """Append this run's log lines (every trainer's included) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
