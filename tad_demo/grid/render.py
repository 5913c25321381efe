"""Drawing one control's labelled grid: a title block (what was run), axis names and λ labels
(ablate / default / enhance, coloured), the cells (all seeds side by side) and their CLIP notes.

    img = render_grid(spec, cells, rows, condition=cond_image, scale=1.0)

Sized for a projector: tiny cells are upscaled (integer factors, nearest neighbour), type is large, the base
model's cell is outlined as the reference. Labels use DejaVu when installed (λ, −, ✓), else ASCII.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .result import Cell
from .spec import GridSpec

ABLATE_RGB, DEFAULT_RGB, ENHANCE_RGB = (185, 28, 28), (70, 70, 70), (21, 128, 61)


@lru_cache(maxsize=16)
def _font(size: int, bold: bool = False) -> tuple[Any, bool]:
    """(font, unicode) — DejaVu when installed (has λ, −, ✓), else Pillow's built-in font (ASCII labels)."""
    names = ["DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"]
    try:
        import matplotlib

        names.append(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / names[0]))
    except ImportError:
        pass
    for name in names:
        try:
            return ImageFont.truetype(name, size), True
        except OSError:
            continue
    return ImageFont.load_default(size=size), False


def lambda_label(lam: float | None, unicode: bool = True) -> tuple[str, str, tuple[int, int, int]]:
    """(word, "λ=+1", colour): ablate for λ>0, default for 0, enhance for λ<0."""
    if lam is None:
        return "", "", DEFAULT_RGB
    word, rgb = ("ablate", ABLATE_RGB) if lam > 0 else ("enhance", ENHANCE_RGB) if lam < 0 else ("default",
                                                                                                DEFAULT_RGB)
    num = "0" if lam == 0 else f"{lam:+g}"
    if unicode:
        return word, f"λ={num.replace('-', '−')}", rgb
    return word, f"lambda={num}", rgb


def _upscale(im: Image.Image, target: int) -> Image.Image:
    """Tiny cells up to ~``target`` px: integer factors with NEAREST (crisp, faithful), else LANCZOS."""
    side = max(im.size)
    if side >= target:
        return im
    k = target / side
    if abs(k - round(k)) < 1e-6 or k >= 2:
        k = max(1, round(k))
        return im.resize((im.width * k, im.height * k), Image.Resampling.NEAREST)
    return im.resize((round(im.width * k), round(im.height * k)), Image.Resampling.LANCZOS)


def _text_w(draw: ImageDraw.ImageDraw, text: str, font: Any) -> int:
    if not text:
        return 0
    x0, _, x1, _ = draw.textbbox((0, 0), text, font=font)
    return x1 - x0


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.split(" "):
        trial = f"{cur} {word}".strip()
        if cur and _text_w(draw, trial, font) > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    return lines + ([cur] if cur else [])


@dataclass
class _Fonts:
    title: Any
    axis: Any
    label: Any
    note: Any
    unicode: bool
    scratch: ImageDraw.ImageDraw

    def line_h(self, font: Any) -> int:
        return self.scratch.textbbox((0, 0), "Ag", font=font)[3] + 6

    def width(self, text: str, font: Any) -> int:
        return _text_w(self.scratch, text, font)


@dataclass
class _Layout:
    """Every size and text of one grid image, computed before drawing."""

    f: _Fonts
    thumbs: dict[tuple[int, int], list[Image.Image]]
    sw: int                      # one thumbnail's width
    cell_w: int
    cell_h: int
    note_lines: dict[tuple[int, int], list[str]]
    note_h: int
    label_w: int
    grid_w: int
    width: int
    height: int
    title_lines: list[str]
    sub_lines: list[str]
    title_h: int
    top: int                     # y of the first row of cells
    thumb: Image.Image | None    # the condition, shown top right
    thumb_w: int
    corner: list[str]            # the object axis name, top left
    col_title: str               # the style axis name, over the columns

    gap_img = 4                  # between the seeds of a cell
    gap = 14                     # between cells
    pad = 18


def render_grid(spec: GridSpec, cells: Sequence[Cell], rows: Sequence[Mapping[str, Any]], *,
                condition: Image.Image | None = None, scale: float = 1.0, cell_px: int = 256) -> Image.Image:
    """One control's labelled grid: title, axis names, λ labels (ablate/default/enhance), cells, CLIP notes."""
    lay = _layout(spec, cells, rows, condition, scale, cell_px)
    img = Image.new("RGB", (lay.width, lay.height), "white")
    d = ImageDraw.Draw(img)
    _draw_title(img, d, lay)           # 1. what was run
    _draw_header(d, lay, spec)         # 2. axis names, column labels
    _draw_rows(img, d, lay, spec)      # 3. row labels, cells, notes
    return img


def _fonts(cell_w: int) -> _Fonts:
    fs = max(18, min(40, round(max(cell_w, 200) / 9)))
    title, uni = _font(fs + 2, bold=True)
    return _Fonts(title, _font(fs, bold=True)[0], _font(fs - 2)[0], _font(max(14, fs - 8))[0], uni,
                  ImageDraw.Draw(Image.new("RGB", (1, 1))))


def _cell_notes(rows: Sequence[Mapping[str, Any]], positions: Sequence[tuple[int, int]],
                uni: bool) -> dict[tuple[int, int], list[str]]:
    """Per cell, the CLIP notes of each scored axis (means over seeds): "obj 0.52 ✓" or "obj 0.52 (1/2)"."""
    notes: dict[tuple[int, int], list[str]] = {}
    ok, bad = ("✓", "✗") if uni else ("yes", "no")
    for pos in positions:
        rs = [r for r in rows if (r["row"], r["col"]) == pos]
        parts = []
        for axis, short in (("object", "obj"), ("style", "sty")):
            vals = [r[f"clip_score_{axis}"] for r in rs if r[f"clip_score_{axis}"] is not None]
            if not vals:
                continue
            acc = [r[f"clip_accuracy_{axis}"] for r in rs]
            mark = (ok if acc[0] else bad) if len(acc) == 1 else f"({round(sum(acc))}/{len(acc)})"
            parts.append(f"{short} {sum(vals) / len(vals):.2f} {mark}")
        if parts:
            notes[pos] = parts
    return notes


def _titles(spec: GridSpec, control: str, scale: float) -> tuple[str, str]:
    """The title (control) and the subtitle (prompt, seeds, steps, guidance, extra vectors, merge method)."""
    head = f"control: {control}" + (f" (scale {scale:g})" if control != "none" else "")
    n_s = len(spec.seeds)
    seeds = ", ".join(str(s) for s in spec.seeds)
    sub = (f"prompt: “{spec.prompt}” · seed{'s' if n_s > 1 else ''} {seeds} · {spec.steps} steps · "
           f"guidance {spec.guidance:g}")
    if spec.extra:
        sub += " · every cell + " + ", ".join(f"{e.name} λ={float(e.lam):+g}" for e in spec.extra)
    if spec.merge != "linear":
        sub += f" · merge {spec.merge}"
    return head, sub


def _layout(spec: GridSpec, cells: Sequence[Cell], rows: Sequence[Mapping[str, Any]],
            condition: Image.Image | None, scale: float, cell_px: int) -> _Layout:
    n_r, n_c, n_s = len(spec.row_lambdas), len(spec.col_lambdas), len(spec.seeds)
    gap_img, gap, pad = _Layout.gap_img, _Layout.gap, _Layout.pad
    by_pos = {(c.row, c.col): c for c in cells}
    target = cell_px if n_s == 1 else cell_px * 3 // 4 if n_s == 2 else cell_px // 2
    thumbs = {pos: [_upscale(im, target) for im in c.images] for pos, c in by_pos.items()}
    sw, sh = next(iter(thumbs.values()))[0].size
    cell_w, cell_h = n_s * sw + (n_s - 1) * gap_img, sh
    f = _fonts(cell_w)
    # CLIP notes: one line per cell when it fits under the cell, else one line per axis
    notes = _cell_notes(rows, list(by_pos), f.unicode)
    one_line = all(f.width("   ".join(p), f.note) <= cell_w for p in notes.values())
    note_lines = {pos: ["   ".join(p)] if one_line else p for pos, p in notes.items()}
    note_h = max((len(v) for v in note_lines.values()), default=0) * f.line_h(f.note)
    # left column: row labels (and the object axis name); the grid's width
    arrow_down, arrow_right = ("↓", "→") if f.unicode else ("(rows)", "(columns)")
    corner = [f"object: {spec.object.name} {arrow_down}"] if spec.object else []
    row_texts = [lambda_label(lam, f.unicode) for lam in spec.row_lambdas]
    label_w = max([f.width(t, font) for w, n, _ in row_texts for t, font in ((w, f.axis), (n, f.label))] +
                  [f.width(t, f.axis) for t in corner] + [60]) + 2 * pad
    grid_w = n_c * cell_w + (n_c - 1) * gap
    width = pad + label_w + grid_w + pad
    # title block: what was run, readable from the back of the room; the condition's thumbnail on the right
    head, sub = _titles(spec, cells[0].control if cells else "none", scale)
    thumb = _upscale(condition, 96).resize((96, 96)) if condition is not None else None
    thumb_w = max(96, f.width("condition", f.note)) if thumb else 0
    text_w = width - 2 * pad - (thumb_w + pad if thumb else 0)
    title_lines, sub_lines = _wrap(f.scratch, head, f.title, text_w), _wrap(f.scratch, sub, f.label, text_w)
    title_h = max(len(title_lines) * f.line_h(f.title) + len(sub_lines) * f.line_h(f.label),
                  96 + f.line_h(f.note) if thumb else 0)
    # header: one line of axis names (object in the corner, style over the columns), then the column labels
    col_title = f"style: {spec.style.name} {arrow_right}" if spec.style else ""
    header_h = (f.line_h(f.axis) if col_title or corner else 0) + (2 * f.line_h(f.label) if spec.style else 0)
    top = pad + title_h + pad + header_h
    height = top + n_r * (cell_h + note_h) + (n_r - 1) * gap + pad
    return _Layout(f, thumbs, sw, cell_w, cell_h, note_lines, note_h, label_w, grid_w, width, height, title_lines,
                   sub_lines, title_h, top, thumb, thumb_w, corner, col_title)


def _draw_title(img: Image.Image, d: ImageDraw.ImageDraw, lay: _Layout) -> None:
    f, pad = lay.f, lay.pad
    y = pad
    for t in lay.title_lines:
        d.text((pad, y), t, font=f.title, fill="black")
        y += f.line_h(f.title)
    for t in lay.sub_lines:
        d.text((pad, y), t, font=f.label, fill=(60, 60, 60))
        y += f.line_h(f.label)
    if lay.thumb is not None:
        tx = lay.width - pad - lay.thumb_w + (lay.thumb_w - 96) // 2
        img.paste(lay.thumb, (tx, pad))
        d.rectangle([tx - 1, pad - 1, tx + 96, pad + 96], outline=(150, 150, 150))
        d.text((tx + 48, pad + 96 + 2), "condition", font=f.note, fill=(90, 90, 90), anchor="ma")


def _draw_header(d: ImageDraw.ImageDraw, lay: _Layout, spec: GridSpec) -> None:
    """The style axis name over the columns, then word + λ per column; the object axis name in the corner."""
    f, pad = lay.f, lay.pad
    x0 = pad + lay.label_w
    y = pad + lay.title_h + pad
    if lay.col_title:
        d.text((x0 + lay.grid_w // 2, y), lay.col_title, font=f.axis, fill="black", anchor="ma")
        y += f.line_h(f.axis)
    if spec.style:
        for c, (word, num, rgb) in enumerate(lambda_label(lam, f.unicode) for lam in spec.col_lambdas):
            cx = x0 + c * (lay.cell_w + lay.gap) + lay.cell_w // 2
            d.text((cx, y), word, font=f.axis, fill=rgb, anchor="ma")
            d.text((cx, y + f.line_h(f.label)), num, font=f.label, fill=rgb, anchor="ma")
    for t in lay.corner:
        d.text((pad, pad + lay.title_h + pad), t, font=f.axis, fill="black")


def _draw_rows(img: Image.Image, d: ImageDraw.ImageDraw, lay: _Layout, spec: GridSpec) -> None:
    """Per row: its label, then each cell's images (the base model's cell outlined) and CLIP notes."""
    f, pad, gap = lay.f, lay.pad, lay.gap
    x0 = pad + lay.label_w
    for r, lam_r in enumerate(spec.row_lambdas):
        y = lay.top + r * (lay.cell_h + lay.note_h + gap)
        word, num, rgb = lambda_label(lam_r, f.unicode)
        cy = y + lay.cell_h // 2
        d.text((pad, cy - f.line_h(f.axis) // 2 - 4), word, font=f.axis, fill=rgb, anchor="lm")
        d.text((pad, cy + f.line_h(f.label) // 2), num, font=f.label, fill=rgb, anchor="lm")
        for c, lam_c in enumerate(spec.col_lambdas):
            x = x0 + c * (lay.cell_w + gap)
            for k, im in enumerate(lay.thumbs.get((r, c), [])):
                img.paste(im, (x + k * (lay.sw + lay.gap_img), y))
            if not lam_r and not lam_c:  # the base model's cell: outline it as the reference
                d.rectangle([x - 3, y - 3, x + lay.cell_w + 2, y + lay.cell_h + 2], outline=(40, 40, 40), width=3)
            for k, line in enumerate(lay.note_lines.get((r, c), [])):
                d.text((x + lay.cell_w // 2, y + lay.cell_h + 3 + k * f.line_h(f.note)), line, font=f.note,
                       fill=(50, 50, 50), anchor="ma")
