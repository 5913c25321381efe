"""A one-page, printable handout of a run: the grid(s), the metrics table with its formula, and the recipe — one
self-contained HTML file (images inlined), to print or send after a meeting.

    path = write_handout(run_dir)     # run_dir/handout.html
"""

from __future__ import annotations

import base64
import csv
import html
import time
from pathlib import Path

import yaml

from .outputs import metrics_note, summary_table

CSS = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 18px auto; max-width: 190mm; color: #111; }
h1 { font-size: 18px; margin: 0 0 4px; } .sub { color: #555; margin: 0 0 10px; }
img { max-width: 100%; max-height: 120mm; display: block; margin: 6px auto; image-rendering: pixelated; }
table { border-collapse: collapse; width: 100%; margin: 8px 0; font-size: 11px; }
th, td { border: 1px solid #bbb; padding: 2px 5px; text-align: right; } th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
pre { font-size: 9px; background: #f7f7f7; padding: 6px; white-space: pre-wrap; word-break: break-all; }
.note { font-size: 11px; color: #333; }
@media print { body { margin: 0; } @page { size: A4; margin: 10mm; } pre { max-height: none; } }
"""


def write_handout(run_dir: Path) -> Path:
    """``run_dir/handout.html`` from the run's files (grid PNGs, metrics.csv, recipe.yaml)."""
    recipe_text = (run_dir / "recipe.yaml").read_text()
    spec = yaml.safe_load(recipe_text)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    table = summary_table(rows, spec)
    esc = html.escape
    obj = (spec.get("object") or {}).get("name", "")
    sty = (spec.get("style") or {}).get("name", "")
    prompt = str(spec.get("prompt_template", "")).replace("{object}", obj).replace("{style}", sty)
    grids = []
    for c in spec.get("controls") or [{"kind": "none"}]:
        p = run_dir / f"grid_{c['kind']}.png"
        p = p if p.is_file() else run_dir / "grid.png"
        data = base64.b64encode(p.read_bytes()).decode()
        grids.append(f'<img alt="grid ({esc(c["kind"])})" src="data:image/png;base64,{data}">')
    head = "".join(f"<th>{esc(str(h))}</th>" for h in table["headers"])
    body = "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in r) + "</tr>" for r in table["data"])
    note = esc(metrics_note(spec)).replace("  \n", "<br>").replace("`", "")
    made = time.strftime("%Y-%m-%d %H:%M", time.localtime((run_dir / "recipe.yaml").stat().st_mtime))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>TAD concept grid — {esc(obj)} × {esc(sty)}</title>
<style>{CSS}</style></head><body>
<h1>TAD concept grid: {esc(obj or "—")} (rows) × {esc(sty or "—")} (columns)</h1>
<p class="sub">Prompt “{esc(prompt)}” · seeds {esc(", ".join(str(s) for s in spec.get("seeds", [])))} ·
{esc(str(spec.get("steps")))} steps · guidance {esc(str(spec.get("guidance")))} ·
{esc(str(spec.get("width")))}×{esc(str(spec.get("height")))} px ·
merge {esc(str((spec.get("merge") or {}).get("method")))} · made {esc(made)}</p>
<p class="note">Task arithmetic: τ = θ<sub>ablated</sub> − θ<sub>base</sub>, each cell runs
θ<sub>base</sub> + λ·τ: <b>λ &gt; 0 ablates</b> the concept, λ = 0 is the base model, <b>λ &lt; 0 enhances</b> it.
Same seed in every cell.</p>
{"".join(grids)}
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<p class="note">{note}</p>
<h2 style="font-size:13px">Recipe (upload it to the app's “Reproduce” to run it again)</h2>
<pre>{esc(recipe_text)}</pre>
</body></html>
"""
    out = run_dir / "handout.html"
    out.write_text(page, encoding="utf-8")
    return out


__all__ = ["write_handout"]
