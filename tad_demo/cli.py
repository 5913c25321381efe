"""Command line: ``python -m tad_demo <command> --help``.

Commands:
  vector   build τ = finetuned − base from a pair of checkpoints and save it (safetensors)
  inspect  norms, sparsity and the cosine matrix of task vectors
  merge    apply a recipe (YAML) to its base and save the edited model with its provenance
  convert  turn a pickle checkpoint (.ckpt/.bin/.pt) into safetensors, loading it with weights_only=True
  grid     concept grid (object × style × control) → grid.png, metrics.csv, recipe.yaml, images/

Research views (tad_demo/research; each writes CSV + PNG plots into --out):
  sweep    CLIP score/accuracy of a concept and control concepts over a λ list (TAD Table 2)
  multi    add N vectors (N = 1 … all) with a merge method: control-concept damage vs N, random baseline
  analyze  cosine heatmaps (global, per UNet block), norms, sparsity, sign agreement, analogies
  adaptive adaptive vector selection at t_switch from a shared prefix; ROC AUC vs t_switch and α
  eval     paper-sized, resumable table of concepts × λ × prompts × seeds (shards under accelerate launch)
  ablate   make a concept-ablation checkpoint with Kumari's objective (cross-attention k/v)

Building the parser imports no torch (``--help`` prints at once): every command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .research.report import log_progress, text_table

log = logging.getLogger("tad_demo")


# --- commands -------------------------------------------------------------------------------------------

def cmd_vector(args: argparse.Namespace) -> dict:
    import torch

    from .core.lora import is_lora_file, load_lora
    from .core.task_vector import TaskVector

    if is_lora_file(args.finetuned):  # a LoRA is already a difference: τ = its dense ΔW, checked against the base
        tv = load_lora(args.finetuned, base=args.base)
        tv = tv.restrict(args.scope) if args.scope else tv
    else:
        tv = TaskVector.from_pair(args.base, args.finetuned, scope=args.scope)
    if not len(tv):
        raise SystemExit(f"error: {args.finetuned} does not differ from {args.base}"
                         f"{' within scope ' + repr(args.scope) if args.scope else ''}; nothing to save")
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    tv.save(args.out, dtype=dtype, metadata={"base": str(args.base), "finetuned": str(args.finetuned),
                                              "scope": args.scope or ""})
    return {"out": str(args.out), "tensors": len(tv), "params": tv.numel(), "norm": tv.norm()}


def cmd_inspect(args: argparse.Namespace) -> dict:
    from .core import diagnostics
    from .core.task_vector import TaskVector

    vecs = {Path(p).stem: TaskVector.load(p) for p in args.vectors}
    names, matrix = diagnostics.cosine_matrix(vecs)
    stats = {n: {"tensors": len(v), "params": v.numel(), "norm": v.norm(), "sparsity": diagnostics.sparsity(v)}
             for n, v in vecs.items()}
    return {"vectors": stats, "cosine": {"names": names, "matrix": matrix}}


def cmd_merge(args: argparse.Namespace) -> dict:
    from .core.recipe import Recipe
    from .runtime.pipelines import save_merged

    recipe = Recipe.load(args.recipe)
    out = save_merged(recipe, args.out)
    return {"out": str(out), "vectors": [v.name for v in recipe.vectors], "method": recipe.method}


def cmd_convert(args: argparse.Namespace) -> dict:
    from .core.checkpoints import convert

    out = convert(args.src, args.dst, overwrite=args.force)
    return {"out": str(out)}


def cmd_grid(args: argparse.Namespace) -> dict:
    """Run a grid config (or a world's default 3×3 example) and write the output folder."""
    from .app.validation import parse_int, parse_seeds
    from .core.errors import Cancelled, TadError
    from .core.limits import HARD
    from .core.world import default_world
    from .grid import GridSpec, run_grid, save, world_control, world_spec

    world = Path(args.assets) if args.assets else default_world()
    try:
        # 1. the spec: a config file, else the world's default example
        spec = GridSpec.load(args.config) if args.config else world_spec(world)
        # 2. command-line overrides (checked as the app checks them): extra control layers (the world's example
        #    conditions), seeds, steps
        if args.control:
            have = {c.kind for c in spec.controls}
            extra = [k for k in dict.fromkeys(args.control) if k not in have]
            example = spec.object.name if spec.object else None
            spec.controls = [*spec.controls, *(world_control(k, world, example=example, size=spec.width)
                                               for k in extra)]
        if args.seeds:
            spec.seeds = parse_seeds(args.seeds, max_seeds=HARD.images, max_seed=HARD.seed)
        if args.steps is not None:
            spec.steps = parse_int(args.steps, "steps", 1, HARD.steps)
        spec.validate()
        # 3. run and save, reporting stages on stderr with -v
        result = run_grid(spec, progress=log_progress("grid"))
        files = save(result, args.out)
    except (TadError, Cancelled) as e:
        raise SystemExit(f"error: {e}") from None
    return {"out": str(args.out), "grids": {k: str(v) for k, v in files.items() if k.startswith("grid")},
            "metrics": str(files["metrics"]), "recipe": str(files["recipe"]), "images": len(files["images"]),
            "summary": result.summary(), "timings": result.timings}


def _print_human(command: str, result: dict) -> None:
    if command == "grid":
        rows = [[r["control"], _lam(r["object_lambda"]), _lam(r["style_lambda"]), r["seeds"],
                 *(("-" if r[m] is None else r[m]) for m in ("clip_score_object", "clip_accuracy_object",
                                                              "clip_score_style", "clip_accuracy_style"))]
                for r in result["summary"]]
        print(text_table(["control", "object λ", "style λ", "seeds", "score obj", "acc obj", "score sty", "acc sty"],
                     rows))
        print(f"\nwrote {result['out']}: grid.png, metrics.csv, recipe.yaml, images/ ({result['images']} images) "
              f"in {result['timings']['total']:.1f} s")
        return
    if command == "inspect":
        rows = [[n, s["tensors"], s["params"], s["norm"], s["sparsity"]] for n, s in result["vectors"].items()]
        print(text_table(["vector", "tensors", "params", "norm", "sparsity"], rows))
        names, m = result["cosine"]["names"], result["cosine"]["matrix"]
        print("\ncosine similarity")
        print(text_table(["", *names], [[n, *row] for n, row in zip(names, m)]))
    else:
        print(text_table(["field", "value"], [[k, v] for k, v in result.items()]))


def _lam(x: float | None) -> str:
    return "-" if x is None else f"{x:+g}" if x else "0"


# --- parser ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tad_demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("vector", help="τ = finetuned − base → safetensors",
                       description="Build a task vector from a base and a fine-tuned checkpoint. Either may be a "
                       "diffusers folder, a single .safetensors/.ckpt (diffusers or LDM keys), or a concept-ablation "
                       "file (Kumari CompVis .ckpt, delta.bin or delta-<step>); a LoRA file as --finetuned gives its "
                       "dense ΔW. Sign: λ=+1 ablates, −1 enhances.")
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
                       description="Apply a recipe (YAML; see tad_demo/core/recipe.py) and save the edited model as a "
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

    p = sub.add_parser("grid", help="concept grid → output folder",
                       description="Generate the object × style concept grid (rows: object λ, columns: style λ; "
                       "λ=+1 ablates, 0 is the base, −1 enhances), one grid per control, with CLIP score/accuracy "
                       "per cell. Without --config it runs the toy world's default 3×3 example. Writes "
                       "DIR/grid.png (grid_<control>.png per control when there are several), DIR/metrics.csv, "
                       "DIR/recipe.yaml (reproduces the run: pass it back as --config) and DIR/images/*.png "
                       "(each with its recipe in PNG text chunks).")
    p.add_argument("--config", help="grid YAML (as written to recipe.yaml); default: the toy world example")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--control", action="append", choices=["canny", "depth", "scribble"],
                   help="add a control layer with the toy world's ControlNet and example condition (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (every cell uses all of them); default 42")
    p.add_argument("--steps", type=int, help="denoising steps (default from the config / world.json)")
    p.add_argument("--assets", help="world folder (default assets/toyworld)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_grid)

    # The research views register their own subcommands (each module keeps its flags next to its computation);
    # their modules import no torch at module level (tests/test_architecture.py checks it).
    from .research import ablate, adaptive, analyze, batch_eval, multi, sweep

    for view in (sweep, multi, analyze, batch_eval, ablate, adaptive):
        view.register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from .core.errors import TadError

    try:
        result = args.func(args)
    except (TadError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, default=str))
    elif getattr(args, "human", None):
        args.human(result)  # research commands print their own tables
    else:
        _print_human(args.command, result)
    return 0
