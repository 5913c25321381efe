"""Precompute the toy world's example outputs once, so the app's examples load instantly without the model.

Run after the toy world's assets exist (and again after retraining them):

    python -m tad_demo.app.precompute [--assets assets/toyworld] [--only default controls]

Writes ``<assets>/examples/precomputed/<example>/`` (grid PNGs, cells, metrics.csv, recipe.yaml, cells.zip and
``request.json`` with the request key and a fingerprint of the model files; the app ignores a precomputed
example whose model files have changed since).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from .request import GridRequest

log = logging.getLogger("precompute")


def precompute(assets: Path, only: list[str] | None = None) -> list[Path]:
    """Run every example of the toy world at ``assets`` and store its outputs; returns the folders written. The
    examples go through the grid service's validation (``Service.build``), as the app's clicks do."""
    from .service import Service
    from .settings import Settings

    settings = Settings.from_env({"TAD_ASSETS": str(assets)})
    service = Service(settings)
    rows = [r for r in service.example_rows() if not only or r["name"] in only]
    if not rows:
        raise SystemExit(f"no examples to precompute (toy world at {assets}: world.json and checkpoints needed)")
    written = []
    for row in rows:
        spec, normalized = service.build(GridRequest.of(row))
        out = service.precomputed_dir / row["name"]
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        t0 = time.perf_counter()
        service.compute(normalized, spec, out_dir=tmp,
                        progress=lambda stage, i, n: log.debug("%s %d/%d", stage, i, n))
        meta = json.loads((tmp / "request.json").read_text())
        meta.update(fingerprint=service.fingerprint(normalized), label=row["label"])
        (tmp / "request.json").write_text(json.dumps(meta, indent=1, default=str))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        log.info("%s: %s in %.1f s", row["name"], out, time.perf_counter() - t0)
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", default=None, help="toy world folder (default: $TAD_ASSETS or assets/toyworld)")
    ap.add_argument("--only", nargs="*", help="example names (default: all)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import os

    assets = Path(args.assets or os.environ.get("TAD_ASSETS") or "assets/toyworld")
    for out in precompute(assets, args.only):
        log.info("wrote %s", out)


if __name__ == "__main__":
    main()
