"""Render evaluation results as Markdown tables inside MODEL_CARD.md (between the results markers)."""

from __future__ import annotations

import datetime
from pathlib import Path

BEGIN, END = "<!-- results:begin (written by tad_demo.toyworld.evaluate) -->", "<!-- results:end -->"


def _f(x: float) -> str:
    return f"{x:.2f}"


def _mark(ok: bool) -> str:
    return "✅" if ok else "❌"


def render(res: dict, command: str) -> str:
    s = res["sizes"]
    lines = [
        f"Measured with `{command}` on {datetime.date.today().isoformat()} "
        f"(DDIM {res['steps']} steps, guidance {res['guidance']}, seeds from 42; {s['per_target']} images per "
        f"target and model, {s['probe']} per other concept; {res['seconds'] / 60:.0f} min on 2 CPU cores).",
        "",
        "**a. Toy CLIP zero-shot accuracy** on held-out renders "
        f"({s['zero_shot']} images; bar ≥ 0.95)",
        "",
        "| object | style |", "|---|---|",
        f"| {_f(res['zero_shot']['object'])} {_mark(res['zero_shot']['object'] >= 0.95)} "
        f"| {_f(res['zero_shot']['style'])} {_mark(res['zero_shot']['style'] >= 0.95)} |",
        "",
        f"**b. Base prompt following** ({s['follow']} prompts naming object, style, colour; bar ≥ 0.8)",
        "",
        "| object | style | colour | all three |", "|---|---|---|---|",
        "| " + " | ".join(_f(res["follow"][k]) for k in ("object", "style", "colour", "all three")) + " |",
        "",
        "**b–d, f. Per target concept** — CLIP accuracy (target beats anchor) and CLIP score of the target "
        "caption. Bars: base acc ≥ 0.85; ablated (λ=+1) acc ≤ 0.15; anchor/other concepts' accuracy change "
        "≤ 0.10; enhanced (λ=−1, −2) score above base; random vector (same per-tensor norms) acc within 0.10 "
        "of base.",
        "",
        "| target → anchor | base acc | λ=+1 acc | anchor Δ | worst other Δ | base score | λ=−1 score "
        "| λ=−2 score | random acc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    from .evaluate import TARGETS

    for t, b in res["base"].items():
        r = res[t]
        lines.append(
            f"| {t} → {TARGETS[t][1]} | {_f(b['accuracy'])} {_mark(b['accuracy'] >= 0.85)} "
            f"| {_f(r['ablate']['accuracy'])} {_mark(r['ablate']['accuracy'] <= 0.15)} "
            f"| {_f(r['anchor_change'])} {_mark(r['anchor_change'] <= 0.10)} "
            f"| {_f(r['other_change'])} ({r['worst_other']}) {_mark(r['other_change'] <= 0.10)} "
            f"| {b['score']:.3f} | {r['enhance_-1']['score']:.3f} {_mark(r['enhance_-1']['score'] > b['score'])} "
            f"| {r['enhance_-2']['score']:.3f} {_mark(r['enhance_-2']['score'] > b['score'])} "
            f"| {_f(r['random']['accuracy'])} {_mark(abs(r['random']['accuracy'] - b['accuracy']) <= 0.10)} |")
    add = res["addition"]
    o, st = add["pair"]
    lines += [
        "",
        f"**e. Addition** τ_{o} + τ_{st} (λ = 1 each; bars: both ≤ 0.2, others' change ≤ 0.15)",
        "",
        f"| {o} acc | {st} acc | worst other Δ |", "|---|---|---|",
        f"| {_f(add[o]['accuracy'])} {_mark(add[o]['accuracy'] <= 0.2)} "
        f"| {_f(add[st]['accuracy'])} {_mark(add[st]['accuracy'] <= 0.2)} "
        f"| {_f(add['other_change'])} ({add['worst_other']}) {_mark(add['other_change'] <= 0.15)} |",
        "",
        "**g. Gradual ablation** (TAD Table 2): target accuracy vs λ (bar: non-increasing within 0.05)",
        "",
    ]
    from .evaluate import LAMBDAS_GRADUAL

    lines += ["| target | " + " | ".join(f"λ={x}" for x in LAMBDAS_GRADUAL) + " | monotone |",
              "|---|" + "---|" * (len(LAMBDAS_GRADUAL) + 1)]
    for t, accs in res["gradual"].items():
        mono = all(b <= a + 0.05 for a, b in zip(accs, accs[1:]))
        lines.append(f"| {t} | " + " | ".join(_f(a) for a in accs) + f" | {_mark(mono)} |")
    if "control" in res:
        lines += ["", "**h. ControlNets**: agreement of the condition re-extracted from generated images with "
                  "the input condition, with the ControlNet vs without (no-control baseline)", "",
                  "| condition | measure | with control | no control |", "|---|---|---|---|"]
        for k, v in res["control"].items():
            lines.append(f"| {k} | {v['measure']} | {_f(v['with'])} | {_f(v['without'])} |")
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
