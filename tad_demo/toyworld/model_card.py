"""Render evaluation results as Markdown tables inside MODEL_CARD.md (between the results markers).

Every mean is shown with its standard error (``0.81 ± 0.03``); every bar is checked here, next to its number.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path

from . import world

BEGIN, END = "<!-- results:begin (written by tad_demo.toyworld.evaluate) -->", "<!-- results:end -->"


def _pm(s: dict, digits: int = 2) -> str:
    """``mean ± se`` of a Stat dict ("–" when nothing was measured)."""
    if not s["n"]:
        return "–"
    se = "" if math.isnan(s["se"]) else f" ± {s['se']:.{digits}f}"
    return f"{s['mean']:.{digits}f}{se}"


def _mark(ok: bool) -> str:
    return "✅" if ok else "❌"


def bars(res: dict) -> dict[str, bool]:
    """Each bar of the toy world, evaluated on the results (also used by the tests)."""
    t = res["targets"]
    base_acc = [r["base"]["hit"]["mean"] for r in t.values()]
    abl = [r["ablated"]["hit"]["mean"] for r in t.values()]
    gains = [r["enhance_gain"] for r in t.values()]
    base_score = sum(r["base"]["score"]["mean"] for r in t.values()) / len(t)
    mean_gain = sum(g["mean"] for g in gains) / len(gains)
    se_gain = math.sqrt(sum(g["se"] ** 2 for g in gains)) / len(gains)
    pair = res["pair"]
    multi = res["multi"]
    out = {
        "base acc per target in [0.60, 0.97]": all(0.60 <= a <= 0.97 for a in base_acc),
        "ablated acc ≤ 0.10 mean, ≤ 0.20 each": sum(abl) / len(abl) <= 0.10 and max(abl) <= 0.20,
        "enhanced score above base, every target": all(g["mean"] > 0 for g in gains),
        "enhanced score: mean rise ≥ 3 % and ≥ 2 SE": mean_gain >= 0.03 * base_score and mean_gain >= 2 * se_gain,
        "enhanced acc ≥ base acc (mean)": sum(r["enhanced"]["hit"]["mean"] for r in t.values()) >= sum(base_acc),
        "control acc change, one vector, ≤ 0.10 mean": abs(res["controls"]["mean_change"]) <= 0.10,
        "object + style ablated together ≤ 0.15 each": all(pair["ablated"][c]["hit"]["mean"] <= 0.15
                                                           for c in pair["pair"]),
        "object + style enhanced together above base": all(pair["enhance_gain"][c]["mean"] > 0 for c in pair["pair"]),
        "control acc vs N: slope < 0, R² ≥ 0.7": multi["slope"] < 0 and multi["r2"] >= 0.7,
        "a merge method recovers ≥ 1/3 of the loss at N = all": any(
            r["recovered"] >= 1 / 3 for m, r in multi["methods"].items() if m != "linear"),
        "adaptive ROC AUC at T/2 ≥ 0.90 (calibrated ranking)": max(
            x["mean"] for x in [*res["adaptive"]["auc_calibrated"].values(), res["adaptive"]["probe"]]) >= 0.90,
        "prompt following ≥ 0.85 (colour, non-target objects and styles)": all(
            res["follow"][k]["mean"] >= 0.85 for k in ("colour", "objects (not targets)", "styles (not targets)")),
    }
    return out


def render(res: dict, command: str) -> str:
    s = res["sizes"]
    lines = [
        f"Measured with `{command}` on {datetime.date.today().isoformat()}: DDIM {res['steps']} steps, guidance "
        f"{res['guidance']}, sampling seeds from {res['seed']} (no training run samples); CLIP text: "
        f"{res['clip_text']}; {s['per_measure']} images per (concept, weights) and per control concept; "
        f"{res['seconds'] / 60:.0f} min on 2 CPU cores. Means ± standard error.",
        "",
        "**Bars**",
        "",
        "| bar | met |", "|---|---|",
        *(f"| {k} | {_mark(v)} |" for k, v in bars(res).items()),
    ]
    c = res["clip"]
    z = c["zero_shot"]
    lines += ["", f"**a. Toy CLIP.** Zero-shot on {s['zero_shot']} held-out renders at full strength: object "
              f"{_pm(z['object'])}, style {_pm(z['style'])}, colour {_pm(z['color'])}. Score of the target's "
              f"bare string and accuracy against its anchor, vs the target's strength (renders, {s['strength']} "
              f"per cell; the base model is trained on strengths {world.BASE_STRENGTH[0]:g}–"
              f"{world.BASE_STRENGTH[1]:g}, then tuned on {world.TUNE_STRENGTH[0]:g}–{world.TUNE_STRENGTH[1]:g} "
              f"with {world.GENERIC_SHARE:.0%} generic pictures, {world.GENERIC_AT_WORD:.0%} of those left at the "
              "word):", "",
              "| strength | object score | object acc | style score | style acc |", "|---|---|---|---|---|"]
    for st in c["strength"]["object"]:
        o, y = c["strength"]["object"][st], c["strength"]["style"][st]
        lines.append(f"| {st} | {_pm(o['score'], 3)} | {_pm(o['accuracy'])} | {_pm(y['score'], 3)} "
                     f"| {_pm(y['accuracy'])} |")
    f = res["follow"]
    lines += ["", f"**b. Base prompt following** ({s['follow']} prompts naming object, style, colour; each "
              "classified zero-shot; bar ≥ 0.85 for colour and non-target objects/styles)", "",
              "| " + " | ".join(f) + " |", "|" + "---|" * len(f),
              "| " + " | ".join(_pm(v) for v in f.values()) + " |"]
    lines += ["", "**c. Per target** — accuracy (target beats anchor) and score (2.5·max(cos, 0)) of the bare "
              "target string. Δ score: paired difference λ=−1 minus base (same prompts and seeds). Hard negatives: "
              "the other targets of the same kind, accuracy change under this target's ablation (worst shown). "
              "Random: a vector with τ's per-tensor norms at λ=+1.", "",
              "| target → anchor | base acc | λ=+1 acc | λ=−1 acc | base score | λ=−1 score | Δ score "
              "| worst hard negative Δ acc | random acc |", "|---|---|---|---|---|---|---|---|---|"]
    for t, r in res["targets"].items():
        hn = r["hard_negatives"]
        worst = min(hn, key=lambda h: hn[h]["change"]["mean"]) if hn else None
        hn_txt = f"{_pm(hn[worst]['change'])} ({worst})" if worst else "–"
        g = r["enhance_gain"]
        rel = 100 * g["mean"] / r["base"]["score"]["mean"] if r["base"]["score"]["mean"] else float("nan")
        lines.append(f"| {t} → {r['anchor']} | {_pm(r['base']['hit'])} | {_pm(r['ablated']['hit'])} "
                     f"| {_pm(r['enhanced']['hit'])} | {_pm(r['base']['score'], 3)} | {_pm(r['enhanced']['score'], 3)} "
                     f"| {_pm(g, 3)} ({rel:+.1f} %) {_mark(g['mean'] > 0)} | {hn_txt} | {_pm(r['random']['hit'])} |")
    ct = res["controls"]
    lines += ["", f"**d. Held-out controls** ({', '.join(ct['controls'])}; never in any training objective): "
              f"accuracy {_pm(ct['base'])} on the base; change under each single vector at λ=+1 "
              f"(mean {ct['mean_change']:+.3f}; bar ≤ 0.10):", "",
              "| vector | " + " | ".join(ct["per_vector"]) + " |", "|---|" + "---|" * len(ct["per_vector"]),
              "| Δ control acc | " + " | ".join(_pm(v["change"]) for v in ct["per_vector"].values()) + " |"]
    p = res["pair"]
    o, st = p["pair"]
    lines += ["", f"**e. {o} + {st} together** (bars: ablated ≤ 0.15 each; enhanced score above base each)", "",
              "| | " + f"{o} acc | {st} acc | {o} score Δ vs base | {st} score Δ vs base |", "|---|---|---|---|---|",
              f"| λ = +1 each | {_pm(p['ablated'][o]['hit'])} | {_pm(p['ablated'][st]['hit'])} | | |",
              f"| λ = −1 each | {_pm(p['enhanced'][o]['hit'])} | {_pm(p['enhanced'][st]['hit'])} "
              f"| {_pm(p['enhance_gain'][o], 3)} | {_pm(p['enhance_gain'][st], 3)} |"]
    m = res["multi"]
    lines += ["", f"**f. Multi-concept interference**: held-out control accuracy with the first N vectors added "
              f"(λ = +1 each, order {', '.join(m['order'])}); linear fit slope {m['slope']:+.3f} per vector, "
              f"R² {m['r2']:.2f}.", "",
              "| N | " + " | ".join(str(x["n"]) for x in m["curve"]) + " |", "|---|" + "---|" * len(m["curve"]),
              "| control acc | " + " | ".join(_pm(x["control"]) for x in m["curve"]) + " |", "",
              "At N = all: control accuracy, accuracy of all targets (lower = ablated), and the share of the "
              "control loss each method recovers against linear addition:", "",
              "| method | params | control acc | targets acc | recovered |", "|---|---|---|---|---|"]
    for name, r in m["methods"].items():
        params = ", ".join(f"{k}={v}" for k, v in r.get("params", {}).items()) or "–"
        lines.append(f"| {name} | {params} | {_pm(r['control'])} | {_pm(r['targets'])} | {r['recovered']:.2f} |")
    a = res["adaptive"]
    lines += ["", f"**g. Adaptive selection**: ROC AUC for \"the prompt names this vector's concept\", switch at "
              f"step {a['t_switch']} of {a['steps']}, {a['prompts']} labelled prompts (± bootstrap SE over "
              "prompts). Ranked by 1 − similarity (the paper's score) and by calibrated relevance, (1 − similarity) "
              f"/ the vector's median 1 − similarity on {a['calibration_prompts']} other prompts that name no target "
              "(bar ≥ 0.90, on the best calibrated ranking). The two-strength probe ranks each vector by the "
              "larger of its calibrated relevances at two α:", "",
              "| α | 1 − similarity | calibrated |", "|---|---|---|"]
    for k in a["auc"]:
        lines.append(f"| {k} | {_pm(a['auc'][k], 3)} | {_pm(a['auc_calibrated'][k], 3)} |")
    probe = a["probe"]
    strengths = " and ".join(f"{x:g}" for x in probe["alphas"])
    lines.append(f"| {strengths} (probe) | – | {_pm(probe, 3)} |")
    vectors = list(probe["per_vector"])
    lines += ["", "Each vector's own AUC (its column alone; at one α calibration leaves it as it is) and its usual "
              "movement (median 1 − similarity on the neutral prompts):", "",
              "| | " + " | ".join(vectors) + " |", "|---|" + "---|" * len(vectors)]
    for k in a["auc_per_vector"]:
        lines.append(f"| own AUC, α = {k} | " + " | ".join(f"{a['auc_per_vector'][k][v]:.3f}" for v in vectors)
                     + " |")
    lines.append(f"| own AUC, probe {strengths} | " + " | ".join(f"{probe['per_vector'][v]:.3f}" for v in vectors)
                 + " |")
    for k in a["scale"]:
        lines.append(f"| usual movement, α = {k} | " + " | ".join(f"{a['scale'][k][v]:.4f}" for v in vectors) + " |")
    from .evaluate import LAMBDAS_GRADUAL

    lines += ["", "**h. Gradual ablation** (TAD Table 2): target accuracy vs λ", "",
              "| target | " + " | ".join(f"λ={x}" for x in LAMBDAS_GRADUAL) + " |",
              "|---|" + "---|" * len(LAMBDAS_GRADUAL)]
    for t, accs in res["gradual"].items():
        lines.append(f"| {t} | " + " | ".join(_pm(x) for x in accs) + " |")
    if res.get("controlnets"):
        lines += ["", "**i. ControlNets**: agreement of the condition re-extracted from generated images with "
                  f"the input condition, with the ControlNet vs without ({s['control']} plain-style scenes)", "",
                  "| condition | measure | with control | no control |", "|---|---|---|---|"]
        for k, v in res["controlnets"].items():
            lines.append(f"| {k} | {v['measure']} | {_pm(v['with'])} | {_pm(v['without'])} |")
    return "\n".join(lines)


def write_results(card: Path, res: dict, command: str) -> None:
    """Replace the results block of the card (or append one)."""
    text = card.read_text() if card.exists() else "# Toy world model card\n"
    block = f"{BEGIN}\n{render(res, command)}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Measured results\n\n" + block + "\n"
    card.write_text(text)
