"""Command line: ``python -m tad_demo <command> --help``.

Commands (contract ★2):
  vector   build τ = finetuned − base from a pair of checkpoints and save it (safetensors)
  inspect  norms, sparsity and the cosine matrix of task vectors
  merge    apply a recipe (YAML) to its base and save the edited model with its provenance
  convert  turn a pickle checkpoint (.ckpt/.bin/.pt) into safetensors, loading it with weights_only=True
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("tad_demo")


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table (people read the CLI; machines use --json)."""
    cells = [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


# --- commands -------------------------------------------------------------------------------------------

def cmd_vector(args: argparse.Namespace) -> dict:
    import torch

    from .task_vector import TaskVector

    tv = TaskVector.from_pair(args.base, args.finetuned, scope=args.scope)
    if not len(tv):
        raise SystemExit(f"error: {args.finetuned} does not differ from {args.base}"
                         f"{' within scope ' + repr(args.scope) if args.scope else ''}; nothing to save")
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    tv.save(args.out, dtype=dtype, metadata={"base": str(args.base), "finetuned": str(args.finetuned),
                                              "scope": args.scope or ""})
    return {"out": str(args.out), "tensors": len(tv), "params": tv.numel(), "norm": tv.norm()}


def cmd_inspect(args: argparse.Namespace) -> dict:
    from . import diagnostics
    from .task_vector import TaskVector

    vecs = {Path(p).stem: TaskVector.load(p) for p in args.vectors}
    names, matrix = diagnostics.cosine_matrix(vecs)
    stats = {n: {"tensors": len(v), "params": v.numel(), "norm": v.norm(), "sparsity": diagnostics.sparsity(v)}
             for n, v in vecs.items()}
    return {"vectors": stats, "cosine": {"names": names, "matrix": matrix}}


def cmd_merge(args: argparse.Namespace) -> dict:
    from .pipelines import save_merged
    from .recipe import Recipe

    recipe = Recipe.load(args.recipe)
    out = save_merged(recipe, args.out)
    return {"out": str(out), "vectors": [v.name for v in recipe.vectors], "method": recipe.method}


def cmd_convert(args: argparse.Namespace) -> dict:
    from .checkpoints import convert

    out = convert(args.src, args.dst, overwrite=args.force)
    return {"out": str(out)}


def _print_human(command: str, result: dict) -> None:
    if command == "inspect":
        rows = [[n, s["tensors"], s["params"], s["norm"], s["sparsity"]] for n, s in result["vectors"].items()]
        print(_table(["vector", "tensors", "params", "norm", "sparsity"], rows))
        names, m = result["cosine"]["names"], result["cosine"]["matrix"]
        print("\ncosine similarity")
        print(_table(["", *names], [[n, *row] for n, row in zip(names, m)]))
    else:
        print(_table(["field", "value"], [[k, v] for k, v in result.items()]))


# --- parser ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tad_demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("vector", help="τ = finetuned − base → safetensors",
                       description="Build a task vector from a base and a fine-tuned checkpoint. Either may be a "
                       "diffusers folder, a single .safetensors/.ckpt (diffusers or LDM keys), or a concept-ablation "
                       "file (Kumari CompVis .ckpt or delta.bin). Sign: λ=+1 ablates, −1 enhances.")
    p.add_argument("--base", required=True, help="base model (folder or file)")
    p.add_argument("--finetuned", required=True, help="fine-tuned model or ablation checkpoint")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--scope", help="restrict to a named scope (unet, text_encoder, cross_attn_kv, ...) or a regex")
    p.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="storage dtype (default fp32)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_vector)

    p = sub.add_parser("inspect", help="norms + cosine matrix of τ files",
                       description="Print norms, sparsity and the global cosine similarity matrix of task vectors.")
    p.add_argument("vectors", nargs="+", help="task vector .safetensors files (from `vector`)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("merge", help="recipe → saved model",
                       description="Apply a recipe (YAML; see tad_demo/recipe.py) and save the edited model as a "
                       "diffusers folder, or one .safetensors when --out ends in .safetensors. The recipe and the "
                       "sha256 of every input are stored with it.")
    p.add_argument("--recipe", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("convert", help="pickle checkpoint → safetensors",
                       description="Convert a .ckpt/.bin/.pt pickle to .safetensors. The pickle is read with "
                       "torch.load(weights_only=True): files that need arbitrary code are refused.")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--force", action="store_true", help="overwrite an existing destination (never the source)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_convert)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from .task_vector import TaskVectorError

    try:
        result = args.func(args)
    except (TaskVectorError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, default=str))
    else:
        _print_human(args.command, result)
    return 0
