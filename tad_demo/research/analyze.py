"""Analysis of task vectors: how similar they are (globally and per UNet block), their sizes, how much they
interfere, and analogies typed as expressions.

    result = analyze({"smiley": a, "die": b, "striped": c})
    result.cosine            # global cosine matrix (names in result.names)
    result.blocks["mid_block"]   # per-block cosine matrix (NaN where a vector has no tensor in the block)
    result.save("out/")      # vectors.csv, pairs.csv, cosine.png, cosine_blocks.png

    parse_expression("tau_c + tau_b - tau_a", ["a", "b", "c"])   # [("c", 1.0), ("b", 1.0), ("a", -1.0)]
    evaluate_expression("smiley - 0.5*die + striped", vectors)     # a TaskVector

Measures (``tad_demo.core.diagnostics``): global cosine (missing keys are zeros), per-block cosine over the tensors
both vectors carry, L2 norms, sparsity (share of exact zeros), sign agreement (share of entries with the same
sign among those non-zero in both; TIES' conflicts are the rest) and the multi-concept paper's count of layers
whose angle between the two vectors exceeds 75° (fewer ↔ more related concepts).

Expressions: names, numbers (``2``, ``0.5``, ``.5``, ``1e-3``), ``+ - *``, unary minus and parentheses, parsed by
a small recursive-descent parser (never ``eval``). ``tau_`` before a name is optional. The value must be a
linear combination of vectors: ``2*(a - b)`` is fine, ``a*b`` and ``a + 1`` are errors. Errors are one line and
give the 1-based position of the offending token.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .lab import LabError
from .report import text_table

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 75.0  # φ_t of the multi-concept paper


# --- expressions -------------------------------------------------------------------------------------------
class ExpressionError(LabError):
    """A bad vector expression; the message gives the offending token and its 1-based position."""


_TOKEN_RX = re.compile(r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                       r"|(?P<op>[-+*()]))")


@dataclass(frozen=True)
class _Token:
    kind: str  # "num" | "name" | "op" | "end"
    text: str
    pos: int  # 1-based column


def _tokenize(text: str) -> list[_Token]:
    tokens, i = [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        m = _TOKEN_RX.match(text, i)
        if not m:
            raise ExpressionError(f"unexpected character {text[i]!r} at position {i + 1} in {text!r} "
                                  "(allowed: names, numbers, + - * and parentheses)")
        kind = m.lastgroup or "op"
        tokens.append(_Token(kind, m.group(kind), m.start(kind) + 1))
        i = m.end()
    tokens.append(_Token("end", "end of expression", len(text) + 1))
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)* ; term := unary ('*' unary)* ; unary := ('+'|'-') unary | atom ;
    atom := NUMBER | NAME | '(' expr ')'.

    A value is (scalar, {name: coef}): a number has an empty dict, a vector a zero scalar part (never both).
    """

    def __init__(self, text: str, names: Sequence[str]):
        self.text, self.names, self.tokens, self.i = text, list(names), _tokenize(text), 0

    def error(self, tok: _Token, before: str, after: str = "") -> ExpressionError:
        shown = tok.text if tok.kind == "end" else repr(tok.text)
        return ExpressionError(f"{before} {shown} at position {tok.pos} in {self.text!r}{after}")

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def parse(self) -> dict[str, float]:
        if self.peek().kind == "end":
            raise ExpressionError("empty expression; write e.g. 'tau_c + tau_b - tau_a'")
        value, _ = self.expr()
        tok = self.peek()
        if tok.kind != "end":
            raise self.error(tok, "unmatched")  # only a ')' can stop expr() early
        scalar, vec = value
        if not vec:
            raise ExpressionError(f"{self.text!r} is a number ({scalar:g}), not a combination of vectors")
        return vec

    def expr(self) -> tuple[tuple[float, dict[str, float]], _Token]:
        left, first = self.term()
        while self.peek().kind == "op" and self.peek().text in "+-":
            op = self.take()
            right, rtok = self.term()
            if bool(left[1]) != bool(right[1]):
                raise self.error(op, "cannot add a number and a vector:")
            sign = 1.0 if op.text == "+" else -1.0
            vec = dict(left[1])
            for k, c in right[1].items():
                vec[k] = vec.get(k, 0.0) + sign * c
            left = (left[0] + sign * right[0], vec)
        return left, first

    def term(self) -> tuple[tuple[float, dict[str, float]], _Token]:
        left, first = self.unary()
        self.no_juxtaposition()
        while self.peek().kind == "op" and self.peek().text == "*":
            op = self.take()
            right, _ = self.unary()
            self.no_juxtaposition()
            if left[1] and right[1]:
                raise self.error(op, "cannot multiply two vectors:", " (use a number as one factor)")
            if left[1]:
                left = (0.0, {k: c * right[0] for k, c in left[1].items()})
            elif right[1]:
                left = (0.0, {k: c * left[0] for k, c in right[1].items()})
            else:
                left = (left[0] * right[0], {})
        return left, first

    def no_juxtaposition(self) -> None:
        """``0.5 die`` or ``2(a)``: say where the '*' is missing (before reporting anything else)."""
        tok = self.peek()
        if tok.kind in ("name", "num") or tok.text == "(":
            raise self.error(tok, "expected +, - or * before", " (write 0.5*name for a coefficient)")

    def unary(self) -> tuple[tuple[float, dict[str, float]], _Token]:
        tok = self.peek()
        if tok.kind == "op" and tok.text in "+-":
            self.take()
            (s, vec), _ = self.unary()
            return ((-s, {k: -c for k, c in vec.items()}) if tok.text == "-" else (s, vec)), tok
        return self.atom(), tok

    def atom(self) -> tuple[float, dict[str, float]]:
        tok = self.take()
        if tok.kind == "num":
            v = float(tok.text)
            if not math.isfinite(v):
                raise self.error(tok, "number out of range:")
            return v, {}
        if tok.kind == "name":
            return 0.0, {self.resolve(tok): 1.0}
        if tok.kind == "op" and tok.text == "(":
            value, _ = self.expr()
            close = self.take()
            if not (close.kind == "op" and close.text == ")"):
                raise self.error(close, f"expected ')' to close the '(' at position {tok.pos} but got")
            return value
        raise self.error(tok, "expected a name, a number or '(' but got")

    def resolve(self, tok: _Token) -> str:
        if tok.text in self.names:
            return tok.text
        if tok.text.startswith("tau_") and tok.text[4:] in self.names:
            return tok.text[4:]
        known = ", ".join(self.names) or "none"
        raise self.error(tok, "unknown vector", f" (known: {known})")


def parse_expression(text: str, names: Sequence[str]) -> list[tuple[str, float]]:
    """``"tau_c + tau_b - tau_a"`` → ``[("c", 1.0), ("b", 1.0), ("a", -1.0)]``: each name once, in order of first
    appearance, with its total coefficient (a name that cancels out keeps coefficient 0.0)."""
    if not isinstance(text, str):
        raise ExpressionError(f"expression must be a string, got {type(text).__name__}")
    return list(_Parser(text, names).parse().items())


def evaluate_expression(text: str, vectors: Mapping[str, Any]) -> Any:
    """The TaskVector Σ coef·τ of an expression over named vectors."""
    terms = parse_expression(text, list(vectors))
    return sum(c * vectors[n] for n, c in terms)


# --- analysis ----------------------------------------------------------------------------------------------
@dataclass
class AnalysisResult:
    names: list[str]
    cosine: list[list[float]]                  # global cosine matrix
    blocks: dict[str, list[list[float]]]       # UNet block → cosine matrix over the tensors both carry (NaN: none)
    norms: dict[str, float]
    sparsity: dict[str, float]
    tensors: dict[str, int]
    params: dict[str, int]
    sign_agreement: list[list[float | None]]   # None where two vectors share no non-zero entry
    large_angles: list[list[int]]              # layers with angle > threshold (0 on the diagonal)
    shared_layers: list[list[int]]             # layers both vectors change (the count's denominator)
    threshold_deg: float = DEFAULT_THRESHOLD
    expression: dict[str, Any] = field(default_factory=dict)

    def pairs(self) -> list[dict[str, Any]]:
        """One row per unordered pair: the pairwise measures, then one ``cos_<block>`` column per block."""
        out = []
        n = len(self.names)
        for i in range(n):
            for j in range(i + 1, n):
                row = {"a": self.names[i], "b": self.names[j], "cosine": self.cosine[i][j],
                       "angle_deg": math.degrees(math.acos(max(-1.0, min(1.0, self.cosine[i][j])))),
                       "sign_agreement": self.sign_agreement[i][j],
                       f"layers_over_{self.threshold_deg:g}deg": self.large_angles[i][j],
                       "shared_layers": self.shared_layers[i][j]}
                row.update({f"cos_{b}": m[i][j] for b, m in self.blocks.items()})
                out.append(row)
        return out

    def vectors_rows(self) -> list[dict[str, Any]]:
        return [{"vector": n, "tensors": self.tensors[n], "params": self.params[n], "norm": self.norms[n],
                 "sparsity": self.sparsity[n]} for n in self.names]

    def as_dict(self) -> dict[str, Any]:
        return {"names": self.names, "cosine": self.cosine, "blocks": self.blocks, "norms": self.norms,
                "sparsity": self.sparsity, "tensors": self.tensors, "params": self.params,
                "sign_agreement": self.sign_agreement, "large_angles": self.large_angles,
                "shared_layers": self.shared_layers, "threshold_deg": self.threshold_deg,
                "pairs": self.pairs(), "expression": self.expression}

    @staticmethod
    def _csv(rows: list[dict[str, Any]]) -> str:
        buf = io.StringIO()
        if rows:
            w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows([{k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                          for k, v in r.items()} for r in rows])
        return buf.getvalue()

    def plot_cosine(self, path: str | Path) -> Path:
        from . import plots

        n = len(self.names)
        fig, ax = plots.figure(1, 1, size=(2.0 + 0.75 * n, 1.6 + 0.7 * n))
        im = plots.heatmap(ax, self.cosine, self.names, title="global cosine similarity of task vectors")
        fig.colorbar(im, ax=ax, shrink=0.8)
        return plots.save(fig, path)

    def plot_blocks(self, path: str | Path) -> Path:
        """One heatmap per UNet block (in UNet order), sharing one colour scale."""
        from . import plots

        # Few columns and large labels: the image is shown shrunk to the page width (and on projectors); the
        # numbers are in pairs.csv, so cells carry them only while they stay readable.
        k = max(1, len(self.blocks))
        cols = min(k, 3 if k <= 6 else 4)  # wide, like the app's image box: toy world 5 blocks in 2 rows; SD 16 in 4
        rows = math.ceil(k / cols)
        n = len(self.names)
        side = 1.3 + 0.45 * n
        fig, axes = plots.figure(rows, cols, size=(side * cols + 1.2, side * rows + 0.8))
        axes = list(axes.flat) if hasattr(axes, "flat") else [axes]
        im = None
        for ax, (block, m) in zip(axes, self.blocks.items()):
            im = plots.heatmap(ax, m, self.names, title=block, fontsize=12, numbers=n <= 5)
        for ax in axes[len(self.blocks):]:
            ax.set_visible(False)
        if im is not None:
            fig.colorbar(im, ax=axes, shrink=0.6)
        fig.suptitle("cosine similarity per UNet block (tensors both vectors change)", fontsize=14)
        return plots.save(fig, path)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "vectors.csv").write_text(self._csv(self.vectors_rows()))
        (out / "pairs.csv").write_text(self._csv(self.pairs()))
        files = {"vectors": out / "vectors.csv", "pairs": out / "pairs.csv", "cosine": self.plot_cosine(
            out / "cosine.png")}
        if self.blocks:
            files["blocks"] = self.plot_blocks(out / "cosine_blocks.png")
        return files


def analyze(vectors: Mapping[str, Any], threshold_deg: float = DEFAULT_THRESHOLD) -> AnalysisResult:
    """All measures of the module docstring for named TaskVectors (at least one)."""
    from ..core import diagnostics as d

    names = list(vectors)
    if not names:
        raise LabError("analyze: give at least one task vector")
    tvs = [vectors[n] for n in names]
    _, cos = d.cosine_matrix(dict(vectors))
    n = len(names)
    nan = float("nan")
    blocks: dict[str, list[list[float]]] = {}
    sign: list[list[float | None]] = [[None] * n for _ in range(n)]
    large = [[0] * n for _ in range(n)]
    shared = [[0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i, n):
            for block, c in d.block_cosine(tvs[i], tvs[j]).items():
                m = blocks.setdefault(block, [[nan] * n for _ in range(n)])
                m[i][j] = m[j][i] = c
            sign[i][j] = sign[j][i] = d.sign_agreement(tvs[i], tvs[j])
            layer_cos = d.block_cosine(tvs[i], tvs[j], level="layer")
            shared[i][j] = shared[j][i] = len(layer_cos)
            if i != j:
                large[i][j] = large[j][i] = d.count_large_angles(tvs[i], tvs[j], threshold_deg, level="layer")
    # UNet order (down, mid, up) over the union of all pairs' blocks, as block_cosine orders one pair's
    blocks = {b: blocks[b] for b in sorted(blocks, key=d.block_order)}
    return AnalysisResult(names=names, cosine=cos, blocks=blocks, norms=d.norms(dict(vectors)),
                          sparsity={nm: d.sparsity(tv) for nm, tv in zip(names, tvs)},
                          tensors={nm: len(tv) for nm, tv in zip(names, tvs)},
                          params={nm: tv.numel() for nm, tv in zip(names, tvs)}, sign_agreement=sign,
                          large_angles=large, shared_layers=shared, threshold_deg=threshold_deg)


# --- command line --------------------------------------------------------------------------------------------
def _load_vectors(args: argparse.Namespace) -> dict[str, Any]:
    if args.vectors:
        from ..core.task_vector import TaskVector

        out = {}
        for p in args.vectors:
            name = Path(p).stem
            if name in out:
                raise LabError(f"--vectors: two files are named {name!r}; rename one (names come from file stems)")
            if not Path(p).is_file():
                raise LabError(f"--vectors: {p} not found")
            out[name] = TaskVector.load(p)
        return out
    from .sweep import world_lab

    lab = world_lab(args)
    names = args.concepts or list(lab.concepts)
    return {n: lab.vector(lab.concept(n).name) for n in names}


def cmd_analyze(args: argparse.Namespace) -> dict[str, Any]:
    if args.concepts and args.vectors:
        raise LabError("give --concepts or --vectors, not both")
    if args.save_vector and not args.expression:
        raise LabError("--save-vector needs --expression (the vector to save)")
    vectors = _load_vectors(args)
    if args.expression:  # parse before the (slower) analysis: a typo fails fast
        parse_expression(args.expression, list(vectors))
    result = analyze(vectors, threshold_deg=args.threshold)
    if args.expression:
        from ..core import diagnostics as d

        terms = parse_expression(args.expression, list(vectors))
        tv = evaluate_expression(args.expression, vectors)
        result.expression = {"text": args.expression, "terms": terms, "norm": tv.norm(), "tensors": len(tv),
                             "cosine": {n: tv.cosine(v) for n, v in vectors.items()},
                             "sparsity": d.sparsity(tv)}
        if args.save_vector:
            tv.save(args.save_vector, metadata={"expression": args.expression, "terms": terms})
            result.expression["saved"] = str(args.save_vector)
    files = result.save(args.out)
    return {**result.as_dict(), "files": {k: str(v) for k, v in files.items()}}


def print_analysis(result: dict[str, Any]) -> None:
    names = result["names"]
    print(text_table(["vector", "tensors", "params", "norm", "sparsity"],
                 [[n, result["tensors"][n], result["params"][n], result["norms"][n], result["sparsity"][n]]
                  for n in names]))
    print("\nglobal cosine similarity")
    print(text_table(["", *names], [[n, *row] for n, row in zip(names, result["cosine"])]))
    t = result["threshold_deg"]
    print(f"\npairs (layers over {t:g}°: of the layers both change)")
    rows = [[f"{p['a']} · {p['b']}", p["cosine"], p["angle_deg"],
             "-" if p["sign_agreement"] is None else p["sign_agreement"],
             f"{p[f'layers_over_{t:g}deg']}/{p['shared_layers']}"] for p in result["pairs"]]
    print(text_table(["pair", "cosine", "angle°", "sign agree", f">{t:g}°"], rows))
    if result["expression"]:
        e = result["expression"]
        terms = " ".join(f"{c:+g}·{n}" for n, c in e["terms"])
        print(f"\n{e['text']}  =  {terms}   (norm {e['norm']:.4f}, {e['tensors']} tensors)")
        print(text_table(["cosine with", "value"], [[n, c] for n, c in e["cosine"].items()]))
        if e.get("saved"):
            print(f"saved {e['saved']}")
    print(f"\nwrote {', '.join(result['files'].values())}")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "analyze", help="cosine heatmaps (global, per block), norms, sparsity, sign agreement, analogies",
        description="Analyse task vectors: global and per-UNet-block cosine similarity (heatmaps), norms, sparsity, "
        "sign agreement and the number of layers whose angle exceeds --threshold degrees (multi-concept paper). "
        "With --expression, also build an analogy such as 'tau_c + tau_b - tau_a' or 'smiley - 0.5*die + striped' "
        "(names, numbers, + - *, parentheses; the tau_ prefix is optional) and optionally save it. Writes "
        "DIR/vectors.csv, DIR/pairs.csv, DIR/cosine.png and DIR/cosine_blocks.png.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--concepts", nargs="+", help="toy world concepts (default: all of them)")
    src.add_argument("--vectors", nargs="+", help="task vector .safetensors files (named by file stem)")
    p.add_argument("--expression", help="vector expression over the names, e.g. \"smiley - 0.5*die + striped\"")
    p.add_argument("--save-vector", help="save the expression's vector (.safetensors) for grid/merge recipes")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="angle threshold in degrees for the large-angle layer count (default 75)")
    p.add_argument("--assets", help="toy world folder (default assets/toyworld)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_analyze, human=print_analysis)
