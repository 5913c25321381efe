"""What the UI and the API show for a run folder (fresh or cached): grid images per control, the gallery of
cells, the metrics table (means over seeds), the formula note, download files and a status line."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ...grid.result import SCORE_COLUMNS
from ...runtime.control import CONTROL_KINDS
from ...runtime.metrics import FORMULA, SCORE_SCALE
from .sources import short


def outputs(run_dir: Path, cached: bool = False) -> dict[str, Any]:
    """Everything the UI shows for a run folder (see the module docstring)."""
    rows = _read_csv(run_dir / "metrics.csv")
    spec = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    controls = [c["kind"] for c in spec.get("controls") or [{"kind": "none"}]]
    grids: dict[str, str | None] = {k: None for k in CONTROL_KINDS}
    for k in controls:
        p = run_dir / f"grid_{k}.png"
        grids[k] = str(p if p.is_file() else run_dir / "grid.png")
    gallery = [(str(run_dir / r["image"]), f"{r['control']} · object λ={lam_text(r['object_lambda'])} · style "
                f"λ={lam_text(r['style_lambda'])} · seed {r['seed']}") for r in rows]
    meta = json.loads((run_dir / "request.json").read_text()) if (run_dir / "request.json").is_file() else {}
    took = (meta.get("timings") or {}).get("total")
    how = " — precomputed, loaded instantly" if cached else (f" in {float(took):.1f} s" if took else "")
    words = {k: (spec.get(k) or {}).get("name", "") for k in ("object", "style")}
    prompt = str(spec.get("prompt_template", "")).format(**words)
    seeds = ", ".join(str(s) for s in spec.get("seeds", []))
    status = f"**{len(controls)} grid(s), {len(rows)} image(s)**{how} · prompt “{prompt}” · seeds {seeds}"
    return {"grids": grids, "gallery": gallery, "table": summary_table(rows, spec), "metrics_note": metrics_note(spec),
            "files": {"grid": str(run_dir / "grid.png"), "zip": str(run_dir / "cells.zip"),
                      "csv": str(run_dir / "metrics.csv"), "recipe": str(run_dir / "recipe.yaml"),
                      "handout": str(run_dir / "handout.html") if (run_dir / "handout.html").is_file() else None},
            "status": status, "controls": controls, "run_id": run_dir.name}


def summary_table(rows: Sequence[Mapping[str, Any]], spec: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics per cell (means over seeds) as a Dataframe value {headers, data}."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["control"], r["row"], r["col"]), []).append(r)
    obj = (spec.get("object") or {}).get("name", "object")
    sty = (spec.get("style") or {}).get("name", "style")
    headers = ["control", "object λ", "style λ", f"CLIP score ‘{obj}’", f"CLIP acc ‘{obj}’",
               f"CLIP score ‘{sty}’", f"CLIP acc ‘{sty}’", "seeds"]
    data = []
    for (control, _, _), rs in groups.items():
        row: list[Any] = [control, lam_text(rs[0]["object_lambda"]), lam_text(rs[0]["style_lambda"])]
        for m in SCORE_COLUMNS:
            vals = [v for v in (_number(r[m]) for r in rs) if v is not None]
            row.append(round(sum(vals) / len(vals), 3) if vals else "–")
        row.append(len(rs))
        data.append(row)
    return {"headers": headers, "data": data}


def metrics_note(spec: Mapping[str, Any]) -> str:
    clip = spec.get("clip")
    if not clip:
        return "CLIP metrics off (no CLIP model for this base, or unticked)."
    return (f"`{FORMULA}`  \nScale {SCORE_SCALE:g} (Hessel et al.'s CLIPScore), bare concept strings as in "
            f"Kumari et al.'s `evaluate.py`; accuracy per cell = share of its seeds where the target beats the anchor. "
            f"CLIP model: `{short(clip, 80)}`.")


def lam_text(v: Any) -> str:
    """A λ as the table shows it: "–" for none, "0", "+1", "−0.5"."""
    if v in (None, ""):
        return "–"
    v = float(v)
    return "0" if v == 0 else f"{v:+g}".replace("-", "−")


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(x: Any) -> float | None:
    return None if x in (None, "") else float(x)
