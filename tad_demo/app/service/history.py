"""A session's runs: the entries of its history gallery, two runs side by side with per-cell metric deltas, and
a run's values back in the inputs.

Runs are the run folders in the work dir (``runs/<YYYYmmdd-HHMMSS>-<8 hex>``, bounded by TAD_MAX_RUNS); the UI keeps
a session's run ids in its own state, so another session's runs never show up in (or replace) this one's history.

    history.entry(run_dir)            # {"id", "thumb", "caption"}
    history.compare(id_a, id_b)       # {"a", "b", "table", "note"}: Δ = B − A per cell, over the seeds both used
    history.fields(run_id)            # request field values that show the run in the inputs
"""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path
from typing import Any

import yaml

from ...grid.result import SCORE_COLUMNS
from ..errors import UserError
from ..request import EXAMPLE_FIELDS
from .outputs import lam_text

RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")


class History:
    def __init__(self, runs_dir: Path, max_runs: int):
        self.runs_dir, self.max_runs = runs_dir, max_runs

    def find(self, run_id: Any) -> Path:
        """The folder of a run of this app, by id (an id is a name, never a path)."""
        if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
            raise UserError(f"run: {str(run_id)[:40]!r} is not a run of this app")
        d = self.runs_dir / run_id
        if not (d / "recipe.yaml").is_file() or not (d / "metrics.csv").is_file():
            raise UserError(f"run {run_id}: no longer on the server (it keeps the last {self.max_runs} runs, "
                            "TAD_MAX_RUNS); run it again")
        return d

    def entry(self, run_dir: Path) -> dict[str, str]:
        """What the history gallery shows for a run: its grid thumbnail and a one-line summary."""
        spec = _recipe(run_dir)
        made = time.strftime("%H:%M:%S", time.localtime((run_dir / "recipe.yaml").stat().st_mtime))
        return {"id": run_dir.name, "thumb": str(run_dir / "grid.png"), "caption": f"{made} · {summary(spec)}"}

    def compare(self, a: Any, b: Any) -> dict[str, Any]:
        """Runs A and B side by side: their grids, and per cell (control, object λ, style λ) the difference B − A
        of each metric's mean over the seeds both runs used."""
        da, db = self.find(a), self.find(b)
        ra, rb = _rows(da), _rows(db)
        seeds = sorted({r["seed"] for r in ra} & {r["seed"] for r in rb}, key=int)
        cells_a, cells_b = _cells(ra, seeds), _cells(rb, seeds)
        common = [k for k in cells_a if k in cells_b]
        headers = ["control", "object λ", "style λ", "Δ CLIP score (object)", "Δ CLIP acc (object)",
                   "Δ CLIP score (style)", "Δ CLIP acc (style)"]
        data = []
        for key in common:
            row: list[Any] = [key[0], lam_text(key[1]), lam_text(key[2])]
            for m in SCORE_COLUMNS:
                va, vb = cells_a[key].get(m), cells_b[key].get(m)
                row.append("–" if va is None or vb is None else f"{vb - va:+.3f}")
            data.append(row)
        sa, sb = _recipe(da), _recipe(db)
        if not seeds:
            note = "The two runs share no seed: a cell-by-cell comparison needs the same seeds."
        else:
            only = len(cells_a) + len(cells_b) - 2 * len(common)
            note = (f"Δ = B − A, means over the seeds both runs used ({', '.join(seeds)}); {len(common)} cell(s) "
                    f"matched by control and λ" + (f", {only} in one run only" if only else "") + ".")
        return {"a": str(da / "grid.png"), "b": str(db / "grid.png"), "table": {"headers": headers, "data": data},
                "note": f"**A:** {summary(sa)}  \n**B:** {summary(sb)}  \n{note}"}

    def fields(self, run_id: Any) -> dict[str, Any]:
        """Request field values that show a run in the inputs (those a run records; files are not restored)."""
        d = self.find(run_id)
        meta = json.loads((d / "request.json").read_text()) if (d / "request.json").is_file() else {}
        req = meta.get("request") or {}
        if "recipe" in req or not req:  # a reproduced recipe: its numbers
            req = _from_recipe(_recipe(d))
        out: dict[str, Any] = {}
        for k in ("base", "object", "style", "controls", "conditioning_scale", "resize_mode", "prompt_template",
                  "steps", "guidance", "height", "width", "merge_method"):
            if k in req:
                out[k] = req[k]
        if "seeds" in req:
            out["seeds"] = ", ".join(str(s) for s in req["seeds"])
        for axis in ("object_lambdas", "style_lambdas"):
            if axis in req:
                out[axis] = ", ".join(f"{float(x):g}" for x in req[axis])
        if "clip" in req:
            out["clip_metrics"] = req["clip"] is not None
        cond = req.get("condition")
        if isinstance(cond, str) and cond.startswith("example:") and cond != "example:None":
            out["condition_source"], out["example"] = "example", cond.removeprefix("example:")
        if "extra" in req:
            for i in range(1, 4):
                e = req["extra"][i - 1] if i <= len(req["extra"]) else None
                out[f"extra{i}"] = e[0] if e else ""
                out[f"extra{i}_lambda"] = float(e[1]) if e else 1.0
        return {k: v for k, v in out.items() if k in EXAMPLE_FIELDS}


def summary(spec: dict[str, Any]) -> str:
    """One line: concepts, λ lists, seeds, steps, merge method, controls."""
    obj = (spec.get("object") or {}).get("name") or "—"
    sty = (spec.get("style") or {}).get("name") or "—"
    lams = lambda k: ", ".join(lam_text(x) for x in spec.get(k) or [])  # noqa: E731
    controls = [c.get("kind") for c in spec.get("controls") or []]
    merge = (spec.get("merge") or {}).get("method", "linear")
    extra = "".join(f" + {e.get('name')} λ={lam_text(e.get('lambda'))}" for e in spec.get("extra") or [])
    return (f"{obj} [{lams('object_lambdas')}] × {sty} [{lams('style_lambdas')}]{extra} · seeds "
            f"{', '.join(str(s) for s in spec.get('seeds') or [])} · {spec.get('steps')} steps · {merge}"
            + (f" · {', '.join(c for c in controls if c != 'none')}" if any(c != "none" for c in controls) else ""))


def _recipe(run_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((run_dir / "recipe.yaml").read_text()) or {}


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _cells(rows: list[dict[str, str]], seeds: list[str]) -> dict[tuple, dict[str, float | None]]:
    """Per (control, object λ, style λ): each metric's mean over ``seeds`` (None when not measured)."""
    groups: dict[tuple, list[dict[str, str]]] = {}
    for r in rows:
        if r["seed"] in seeds:
            key = (r["control"], _num(r["object_lambda"]), _num(r["style_lambda"]))
            groups.setdefault(key, []).append(r)
    out = {}
    for key, rs in groups.items():
        means: dict[str, float | None] = {}
        for m in SCORE_COLUMNS:
            vals = [float(r[m]) for r in rs if r.get(m) not in (None, "")]
            means[m] = sum(vals) / len(vals) if vals else None
        out[key] = means
    return out


def _num(x: str) -> float | None:
    return None if x in (None, "") else float(x)


def _from_recipe(spec: dict[str, Any]) -> dict[str, Any]:
    out = {k: spec[k] for k in ("prompt_template", "steps", "guidance", "height", "width", "seeds",
                                "object_lambdas", "style_lambdas") if k in spec}
    out["controls"] = [c.get("kind") for c in spec.get("controls") or [{"kind": "none"}]]
    out["merge_method"] = (spec.get("merge") or {}).get("method", "linear")
    return out


__all__ = ["History", "RUN_ID", "summary"]
