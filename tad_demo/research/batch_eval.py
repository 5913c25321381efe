"""Batch evaluation: a paper-sized, resumable table of concepts × λ × prompts × seeds, one CSV row per image.

    python -m tad_demo eval --config examples/table_toy.yaml --out runs/table
    accelerate launch --num_processes 2 -m tad_demo eval --config examples/table_toy.yaml --out runs/table

Recipe (:func:`run_eval`):
1. the spec: a versioned YAML (``tad_eval: 1``, see :class:`EvalSpec`), validated before anything loads;
2. the plan: cells (concept, λ, prompt, seed), each with a stable id (:func:`cell_id`); the cells that share
   weights (concept, λ) are cut, in plan order, into *units* of ``batch_size`` images. A unit is one
   ``Lab.generate`` call whose composition never depends on what is already done or on the shard, so every
   image — hence every float in the table — is the same in any run, interrupted or sharded;
3. resume: every ``parts/part-*.csv`` is read (a torn last line is dropped); a unit runs when one of its cells
   has no row yet, and writes only the missing rows;
4. shard: unit k belongs to process k mod K (``accelerate.PartialState``; one process without accelerate);
5. per unit: generate, score with CLIP (per image: score of the target caption; accuracy 1 when the target's
   score beats the anchor's; with ``hard_negatives: true`` also each hard negative's prompts on the same weights,
   scored against that hard negative and the anchor, as Kumari et al.'s evaluate.py does), append the rows to
   this process's own part file in one write + flush + fsync;
6. gather (main process, after ``wait_for_everyone``): ``results.csv`` (one row per cell, sorted by cell id),
   ``summary.csv`` and ``summary.png`` (per concept and λ), next to ``eval.yaml`` (the resolved settings, which a
   resumed run must match).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..core.limits import HARD
from ..core.recipe import VECTOR_KINDS
from ..core.world import Concept
from .lab import KINDS, Lab, LabError
from .report import text_table

log = logging.getLogger(__name__)

EVAL_VERSION = 1
# concept: whose vector the weights carry; target: the word the prompt and the CLIP score are about (the concept
# itself, or one of its hard negatives).
COLUMNS = ("cell_id", "concept", "target", "anchor", "kind", "lambda", "prompt", "seed", "clip_score",
           "clip_accuracy")
SUMMARY_COLUMNS = ("concept", "target", "anchor", "kind", "lambda", "images", "clip_score", "clip_score_std",
                   "clip_accuracy")
FORMATS = VECTOR_KINDS  # how a concept's checkpoint is read: ablation/finetuned weights, a saved τ, a LoRA
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "table_toy.yaml"
MAX_CELLS = 1_000_000
MAX_BATCH = 256

ProgressFn = Callable[[int, int], None]  # (units done by this process, units this process runs)


class EvalError(LabError):
    """A table that cannot run as configured; the one-line message names the key and the value."""


# --- the specification ----------------------------------------------------------------------------------

@dataclass
class EvalSpec:
    """What a table evaluates (YAML round-trip with ``to_dict``/``from_dict``).

    ``concepts`` are the table's row groups: a world's concept needs only its name (the other fields empty: taken
    from the world); others an anchor and a checkpoint (``source``); ``kind`` defaults to the world's, else object.
    """

    concepts: list[Concept]
    lambdas: list[float] = field(default_factory=lambda: [0.0, 1.0])
    seeds: list[int] = field(default_factory=lambda: [42])
    n_prompts: int = 10
    prompts: dict[str, list[str]] = field(default_factory=dict)  # explicit prompts per concept (override)
    prompt_seed: int = 42
    world: str | None = None  # toy world folder (default assets/toyworld), used when base is not given
    base: str | None = None
    clip: str | None = None   # required with base; default the toy world's CLIP
    steps: int | None = None  # None: the world's default (20)
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    batch_size: int = 8       # images per unit (one generate call); part of the settings a resume must match
    hard_negatives: bool = False  # also evaluate each concept's hard negatives (their prompts, the concept's weights)

    @property
    def n_cells(self) -> int:
        n = sum(len(self.prompts.get(c.name) or ()) or self.n_prompts for c in self.concepts)
        return n * len(self.lambdas) * len(self.seeds)

    def validate(self) -> EvalSpec:
        """Raise EvalError naming the first bad key and value; returns self."""
        if not self.concepts:
            raise EvalError("concepts: give at least one concept")
        names = []
        for i, c in enumerate(self.concepts):
            if not isinstance(c.name, str) or not c.name.strip() or "\n" in c.name or "\r" in c.name:
                raise EvalError(f"concepts[{i}].name: {c.name!r} is not a one-line, non-empty name")
            for f, v in (("anchor", c.anchor), ("checkpoint", c.source)):
                if not isinstance(v, str) or "\n" in v or "\r" in v:
                    raise EvalError(f"concepts[{i}].{f}: {v!r} is not a one-line value; leave it out or fix it")
            if c.kind and c.kind not in KINDS:
                raise EvalError(f"concepts[{i}].kind: {c.kind!r} is not one of {', '.join(KINDS)}")
            if c.format not in FORMATS:
                raise EvalError(f"concepts[{i}].format: {c.format!r} is not one of {', '.join(FORMATS)}")
            if self.base is not None and (not c.anchor or not c.source):
                raise EvalError(f"concepts[{i}] ({c.name}): with a base model every concept needs an anchor and a "
                                "checkpoint")
            names.append(c.name)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise EvalError(f"concepts: {dup[0]!r} is listed twice")
        if not self.lambdas:
            raise EvalError("lambdas: give at least one value")
        for lam in self.lambdas:
            if not _number(lam) or abs(lam) > HARD.lambda_:
                raise EvalError(f"lambdas: {lam!r} is not a number in [-{HARD.lambda_:g}, {HARD.lambda_:g}] (λ>0 "
                                "ablates, 0 base, λ<0 enhances)")
        _unique("lambdas", self.lambdas)
        if not self.seeds:
            raise EvalError("seeds: give at least one seed")
        for s in self.seeds:
            if not _int(s) or not 0 <= s < 2**63:
                raise EvalError(f"seeds: {s!r} is not an integer in [0, 2^63)")
        _unique("seeds", self.seeds)
        _check_int("n_prompts", self.n_prompts, 1, 100_000)
        _check_int("prompt_seed", self.prompt_seed, 0, 2**63 - 1)
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH)
        if self.steps is not None:
            _check_int("steps", self.steps, 1, HARD.steps)
        for f in ("height", "width"):
            v = getattr(self, f)
            if v is not None and (not _int(v) or not HARD.min_side <= v <= HARD.max_side or v % HARD.side_multiple):
                raise EvalError(f"{f}: {v!r} is not a multiple of {HARD.side_multiple} in "
                                f"{HARD.min_side}..{HARD.max_side}")
        if self.guidance is not None and (not _number(self.guidance) or not 0 <= self.guidance <= HARD.guidance):
            raise EvalError(f"guidance: {self.guidance!r} is not a number in [0, {HARD.guidance:g}]")
        for name, ps in self.prompts.items():
            if name not in names:
                raise EvalError(f"prompts: {name!r} is not one of the concepts ({', '.join(names)})")
            if not isinstance(ps, list) or not ps:
                raise EvalError(f"prompts.{name}: give a non-empty list of prompts")
            for p in ps:
                if not isinstance(p, str) or not p.strip() or "\n" in p or "\r" in p:
                    raise EvalError(f"prompts.{name}: {p!r} is not a one-line, non-empty prompt")
            _unique(f"prompts.{name}", ps)
        for f in ("world", "base", "clip"):
            v = getattr(self, f)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise EvalError(f"{f}: {v!r} is empty; leave it out or give a path")
        if not isinstance(self.hard_negatives, bool):
            raise EvalError(f"hard_negatives: {self.hard_negatives!r} is not true or false")
        for i, c in enumerate(self.concepts):
            for h in c.hard_negatives:
                if not isinstance(h, str) or not h.strip() or "\n" in h or h == c.name:
                    raise EvalError(f"concepts[{i}].hard_negatives: {h!r} is not a one-line word other than the "
                                    "concept's")
        if self.base is not None and self.clip is None:
            raise EvalError("clip: a CLIP model (folder, NAME/PRETRAINED or NAME:FILE) is required with base")
        if self.n_cells > MAX_CELLS:
            raise EvalError(f"the table has {self.n_cells} cells; the limit is {MAX_CELLS}")
        return self

    # --- YAML --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def concept(c: Concept) -> Any:
            d = {"name": c.name, "anchor": c.anchor, "kind": c.kind, "checkpoint": c.source, "format": c.format,
                 "hard_negatives": list(c.hard_negatives)}
            d = {k: v for k, v in d.items() if v and not (k == "format" and v == "ablation")}
            return c.name if list(d) == ["name"] else d

        return {"tad_eval": EVAL_VERSION, "world": self.world, "base": self.base, "clip": self.clip,
                "concepts": [concept(c) for c in self.concepts], "lambdas": [float(x) for x in self.lambdas],
                "n_prompts": self.n_prompts, "prompt_seed": self.prompt_seed,
                "prompts": {k: list(v) for k, v in self.prompts.items()}, "seeds": [int(s) for s in self.seeds],
                "steps": self.steps, "guidance": self.guidance, "height": self.height, "width": self.width,
                "batch_size": self.batch_size, "hard_negatives": self.hard_negatives}

    @classmethod
    def from_dict(cls, d: Any, base_dir: str | Path | None = None, origin: str = "eval") -> EvalSpec:
        """Read a config dict; relative paths that exist next to the config are resolved against its folder."""
        try:
            return cls._from_dict(d, Path(base_dir) if base_dir else None)
        except EvalError as e:
            raise EvalError(f"{origin}: {e}") from None

    @classmethod
    def _from_dict(cls, d: Any, base_dir: Path | None) -> EvalSpec:
        if not isinstance(d, Mapping):
            raise EvalError(f"expected a mapping at the top level, got {type(d).__name__}")
        if d.get("tad_eval") != EVAL_VERSION:
            raise EvalError(f"tad_eval: {d.get('tad_eval')!r} is not a supported version (write 'tad_eval: "
                            f"{EVAL_VERSION}' first)")
        known = set(cls(concepts=[]).to_dict())
        unknown = sorted(set(d) - known)
        if unknown:
            raise EvalError(f"{unknown[0]}: unknown key; known: {', '.join(sorted(known))}")
        concepts = []
        raw = d.get("concepts")
        if not isinstance(raw, list):
            raise EvalError(f"concepts: {raw!r} is not a list of names or {{name, anchor, kind, checkpoint}}")
        for i, c in enumerate(raw):
            if isinstance(c, str):
                concepts.append(Concept(c))
            elif isinstance(c, Mapping):
                extra = sorted(set(c) - {"name", "anchor", "kind", "checkpoint", "format", "hard_negatives"})
                if extra:
                    raise EvalError(f"concepts[{i}].{extra[0]}: unknown key; use name, anchor, kind, checkpoint, "
                                    "format, hard_negatives")
                hard = c.get("hard_negatives") or []
                if not isinstance(hard, list):
                    raise EvalError(f"concepts[{i}].hard_negatives: {hard!r} is not a list of words")
                for f in ("anchor", "checkpoint"):  # left out = taken from the world; given = a one-line value
                    v = c.get(f)
                    if v is not None and (not isinstance(v, str) or not v.strip() or "\n" in v or "\r" in v):
                        raise EvalError(f"concepts[{i}].{f}: {v!r} is not a one-line value; leave it out or fix it")
                ckpt = c.get("checkpoint")
                concepts.append(Concept(
                    name=c.get("name"), kind=c.get("kind") or "", anchor=c.get("anchor") or "",
                    source=_resolve(ckpt, base_dir) if ckpt else "", format=c.get("format", "ablation"),
                    hard_negatives=tuple(hard)))
            else:
                raise EvalError(f"concepts[{i}]: {c!r} is neither a name nor a mapping")
        seeds = d.get("seeds", [42])
        if isinstance(seeds, Mapping):  # {start: 0, count: 20}: 20 seeds without writing them out
            start, count = seeds.get("start", 0), seeds.get("count")
            if not _int(start) or not _int(count) or count < 1 or set(seeds) - {"start", "count"}:
                raise EvalError(f"seeds: {dict(seeds)!r} must be a list of integers or {{start: INT, count: INT}}")
            seeds = list(range(start, start + count))
        if not isinstance(seeds, list):
            raise EvalError(f"seeds: {seeds!r} is not a list of integers")
        lambdas = d.get("lambdas", [0.0, 1.0])
        if not isinstance(lambdas, list):
            raise EvalError(f"lambdas: {lambdas!r} is not a list of numbers")
        prompts = d.get("prompts") or {}
        if not isinstance(prompts, Mapping):
            raise EvalError(f"prompts: {prompts!r} is not a mapping concept → list of prompts")
        paths = {f: _resolve(d.get(f), base_dir) if isinstance(d.get(f), str) else d.get(f)
                 for f in ("world", "base", "clip")}
        defaults = cls(concepts=[])
        spec = cls(concepts=concepts, lambdas=list(lambdas), seeds=seeds,
                   n_prompts=d.get("n_prompts", defaults.n_prompts),
                   prompts={str(k): v for k, v in prompts.items()},
                   prompt_seed=d.get("prompt_seed", defaults.prompt_seed), **paths,
                   steps=d.get("steps"), guidance=d.get("guidance"), height=d.get("height"), width=d.get("width"),
                   batch_size=d.get("batch_size", defaults.batch_size),
                   hard_negatives=d.get("hard_negatives", defaults.hard_negatives))
        return spec.validate()

    @classmethod
    def load(cls, path: str | Path) -> EvalSpec:
        p = Path(path)
        if not p.is_file():
            raise EvalError(f"eval config {str(p)!r} not found")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise EvalError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        return cls.from_dict(data, base_dir=p.parent, origin=str(p))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(key: str, v: Any, lo: int, hi: int) -> None:
    if not _int(v) or not lo <= v <= hi:
        raise EvalError(f"{key}: {v!r} is not an integer in {lo}..{hi}")


def _unique(key: str, values: Sequence[Any]) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise EvalError(f"{key}: {v!r} is listed twice")
        seen.add(v)


def _resolve(value: str, base_dir: Path | None) -> str:
    """A relative path that exists next to the config is taken from there; anything else is kept (a path
    relative to the working directory, a Hub id, ``NAME/PRETRAINED``)."""
    if base_dir is not None and not Path(value).is_absolute() and (base_dir / value).exists():
        return str(base_dir / value)
    return value


# --- the plan --------------------------------------------------------------------------------------------

def cell_id(concept: str, lam: float, prompt: str, seed: int) -> str:
    """Stable id of a table cell: 16 hex digits of sha256 over (concept, λ, prompt, seed); 1 and 1.0 agree."""
    key = json.dumps([concept, float(lam) + 0.0, prompt, int(seed)], ensure_ascii=False)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    cell_id: str
    concept: str   # whose vector (at λ) the weights carry
    anchor: str
    kind: str
    lam: float
    prompt: str
    seed: int
    target: str = ""  # the word the prompt and the score are about: the concept (default) or a hard negative

    @property
    def word(self) -> str:
        return self.target or self.concept


@dataclass
class Unit:
    """Cells sharing weights (one concept, one λ) generated in one call; ``index`` decides the process."""

    index: int
    concept: str
    lam: float
    cells: list[Cell]


def build_lab(spec: EvalSpec, models: Any = None) -> Lab:
    """The Lab of a spec: the toy world (default) or ``base`` + ``clip``, with the spec's concepts added."""
    kw: dict[str, Any] = {k: v for k, v in (("steps", spec.steps), ("guidance", spec.guidance),
                                            ("height", spec.height), ("width", spec.width)) if v is not None}
    if models is not None:
        kw["models"] = models
    if spec.base is None:
        lab = Lab.from_world(spec.world, **kw)
        if spec.clip:
            lab.clip = spec.clip
    else:
        from .ablate import PROMPT_TEMPLATES  # 10 per kind (Lab's default has one): n_prompts up to 10

        lab = Lab(base=spec.base, concepts={}, clip=spec.clip, templates=dict(PROMPT_TEMPLATES), **kw)
    for i, c in enumerate(spec.concepts):
        if c.source:
            if not Path(c.source).expanduser().exists():
                raise EvalError(f"concepts[{i}].checkpoint: {c.source!r} not found")
            anchor = c.anchor or lab.anchor_of(c.name)
            if not anchor:
                raise EvalError(f"concepts[{i}] ({c.name}): give an anchor (the concept the checkpoint maps it to)")
            lab.concepts[c.name] = Concept(c.name, c.kind or lab.kind_of(c.name), anchor, c.source, c.format,
                                           hard_negatives=c.hard_negatives)
        elif c.name in lab.concepts:
            old = lab.concepts[c.name]
            lab.concepts[c.name] = replace(old, anchor=c.anchor or old.anchor, kind=c.kind or old.kind,
                                           hard_negatives=c.hard_negatives or old.hard_negatives)
        else:
            raise EvalError(f"concepts[{i}]: {c.name!r} is not a concept of the world (known: "
                            f"{', '.join(lab.concepts) or 'none'}); give anchor, kind and checkpoint")
    return lab


def concept_prompts(spec: EvalSpec, lab: Lab, name: str) -> list[str]:
    """The spec's prompts for a concept, else ``n_prompts`` distinct seeded prompts from the lab."""
    if spec.prompts.get(name):
        return list(spec.prompts[name])
    # lab.prompts draws from one seeded stream, so a longer draw extends a shorter one: take the first n distinct.
    drawn = list(dict.fromkeys(lab.prompts(name, 4 * spec.n_prompts + 20, spec.prompt_seed)))
    if len(drawn) < spec.n_prompts:
        raise EvalError(f"n_prompts: {spec.n_prompts} is more than the {len(drawn)} distinct prompts found for "
                        f"{name!r}; lower it or list prompts")
    return drawn[:spec.n_prompts]


def hard_negative_prompts(prompts: Sequence[str], concept: str, word: str) -> list[str]:
    """The concept's prompts with the concept's word replaced by a hard negative (as Kumari et al. replace the
    anchor word by each target of their eval.json)."""
    missing = next((p for p in prompts if concept not in p), None)
    if missing is not None:
        raise EvalError(f"hard_negatives: prompt {missing!r} does not contain {concept!r}, so it has no "
                        f"{word!r} version; list prompts that name the concept")
    return [p.replace(concept, word) for p in prompts]


def plan(spec: EvalSpec, lab: Lab) -> list[Unit]:
    """All units, in a fixed order: concept, λ, then chunks of (prompt, seed) cells in prompt-major order (the
    concept's own prompts, then each hard negative's when the spec asks for them)."""
    units: list[Unit] = []
    for c in spec.concepts:
        concept = lab.concept(c.name)
        prompts = concept_prompts(spec, lab, c.name)
        words = [(c.name, prompts)]
        if spec.hard_negatives:
            words += [(h, hard_negative_prompts(prompts, c.name, h)) for h in concept.hard_negatives]
        for lam in spec.lambdas:
            lam = float(lam) + 0.0
            cells = [Cell(cell_id(c.name, lam, p, s), c.name, concept.anchor, concept.kind, lam, p, int(s),
                          target=w if w != c.name else "")
                     for w, ps in words for p in ps for s in spec.seeds]
            for start in range(0, len(cells), spec.batch_size):
                units.append(Unit(len(units), c.name, lam, cells[start:start + spec.batch_size]))
    return units


# --- part files: append-only, torn-line tolerant -----------------------------------------------------------

def read_rows(path: Path, truncate: bool = False) -> list[dict[str, str]]:
    """Complete rows of a part file. A torn last line (no newline: the process died mid-write) is dropped, and
    with ``truncate`` cut off the file, so the next append starts on a fresh line."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("%s: dropping a torn last line (%d bytes)", path, len(data) - end)
        if truncate:
            os.truncate(path, end)
    reader = csv.reader(io.StringIO(data[:end].decode("utf-8")))
    header = next(reader, None)
    if header is None:
        return []
    if tuple(header) != COLUMNS:
        raise EvalError(f"{path}: columns {header} are not this version's {list(COLUMNS)}; use a new --out")
    rows = []
    for rec in reader:
        if len(rec) != len(COLUMNS):
            log.warning("%s: skipping a malformed row %r", path, rec)
            continue
        rows.append(dict(zip(COLUMNS, rec)))
    return rows


class PartWriter:
    """One process's part file; each ``write`` is one batch's rows in one write + flush + fsync."""

    def __init__(self, path: Path):
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        self.f = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - closed by close()
        if new:
            self._write([COLUMNS])

    def write(self, rows: Sequence[Mapping[str, str]]) -> None:
        self._write([[r[c] for c in COLUMNS] for r in rows])

    def _write(self, records: Sequence[Sequence[str]]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(records)
        self.f.write(buf.getvalue())
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def _part_path(out: Path, rank: int) -> Path:
    return out / "parts" / f"part-{rank:03d}.csv"


def _read_parts(out: Path, own: Path | None = None) -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    for part in sorted((out / "parts").glob("part-*.csv")):
        for r in read_rows(part, truncate=part == own):
            rows.setdefault(r["cell_id"], r)
    return rows


# --- processes ---------------------------------------------------------------------------------------------

@dataclass
class Processes:
    """This process's place among K (``accelerate``), or a single process."""

    rank: int = 0
    size: int = 1
    wait: Callable[[], None] = lambda: None
    device: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def accelerate_processes() -> Processes:
    """From ``accelerate.PartialState`` (the processes ``accelerate launch`` started; one process otherwise)."""
    try:
        import torch
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env
    except ImportError:
        return Processes()
    # PartialState only joins the CPU (gloo) process group when told cpu=True (Accelerator passes it from the
    # launcher's ACCELERATE_USE_CPU); without a GPU there is nothing else to use.
    st = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != st.num_processes:  # two "rank 0"s would write the same part file
        raise EvalError(f"the launcher started {launched} processes but accelerate sees {st.num_processes}; on a "
                        "CPU-only machine launch with `accelerate launch --multi_gpu --num_processes K ...`")
    return Processes(st.process_index, st.num_processes, st.wait_for_everyone, str(st.device))


# --- running -----------------------------------------------------------------------------------------------

def settings_of(spec: EvalSpec, lab: Lab) -> dict[str, Any]:
    """What determines an image besides its cell (concept, λ, prompt, seed): a resumed run must match it."""
    def path(p: str | None) -> str | None:
        return str(Path(p).resolve()) if p and Path(p).exists() else p

    concepts = {c.name: {"anchor": lab.concepts[c.name].anchor, "kind": lab.concepts[c.name].kind,
                         "checkpoint": path(lab.concepts[c.name].source),
                         "format": lab.concepts[c.name].format} for c in spec.concepts}
    return {"base": path(lab.base), "clip": path(lab.clip), "steps": lab.steps, "guidance": lab.guidance,
            "height": lab.height, "width": lab.width, "batch_size": spec.batch_size, "concepts": concepts}


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    p = out / "eval.yaml"
    if not p.is_file():
        return
    old = (yaml.safe_load(p.read_text()) or {}).get("settings") or {}
    for k, v in settings.items():
        if k == "concepts":
            for name, c in v.items():
                prev = (old.get("concepts") or {}).get(name)
                if prev is not None and prev != c:
                    key = next(f for f in c if prev.get(f) != c[f])
                    raise EvalError(f"{p}: concept {name!r} {key} was {prev.get(key)!r}, the config says "
                                    f"{c[key]!r}; its rows would mix the two — use a new --out")
        elif k in old and old[k] != v:
            raise EvalError(f"{p}: {k} was {old[k]!r}, the config says {v!r}; finished rows would mix settings — "
                            "use a new --out")


def _write_settings(out: Path, spec: EvalSpec, settings: dict[str, Any]) -> None:
    p = out / "eval.yaml"
    old = (yaml.safe_load(p.read_text()) or {}) if p.is_file() else {}
    merged = dict(settings, concepts={**((old.get("settings") or {}).get("concepts") or {}),
                                      **settings["concepts"]})
    _atomic_write(p, yaml.safe_dump({"settings": merged, "config": spec.to_dict()}, sort_keys=False,
                                    allow_unicode=True))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _row(cell: Cell, score: float, beats: bool) -> dict[str, str]:
    return {"cell_id": cell.cell_id, "concept": cell.concept, "target": cell.word, "anchor": cell.anchor,
            "kind": cell.kind,
            "lambda": repr(cell.lam), "prompt": cell.prompt, "seed": str(cell.seed), "clip_score": repr(score),
            "clip_accuracy": "1" if beats else "0"}


def run_unit(lab: Lab, unit: Unit) -> list[dict[str, str]]:
    """Generate a unit's images in one call (λ = 0: the base, no patch) and score each image's word (the concept
    or a hard negative) against the anchor."""
    combo = [(lab.vector(unit.concept), unit.lam)] if unit.lam != 0 else []
    images = lab.generate([c.prompt for c in unit.cells], [c.seed for c in unit.cells], combo,
                          batch_size=len(unit.cells))
    rows: dict[int, dict[str, str]] = {}
    for word in dict.fromkeys(c.word for c in unit.cells):
        idx = [i for i, c in enumerate(unit.cells) if c.word == word]
        c0 = unit.cells[idx[0]]
        scored = lab.scorer.per_image([images[i] for i in idx], word, c0.anchor, c0.kind)
        rows.update({i: _row(unit.cells[i], s, b) for i, (s, b) in zip(idx, scored)})
    return [rows[i] for i in range(len(unit.cells))]


def run_eval(spec: EvalSpec, out: str | Path, *, lab: Lab | None = None, processes: Processes | None = None,
             progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run (or resume) the table of ``spec`` into ``out`` (see the module docstring). ``lab``: a loaded Lab to
    reuse (its steps/guidance/size win over the spec's); ``progress(done, total)`` after each unit (raise to stop).
    Returns a summary dict on the main process; other processes return what they ran."""
    from ..core.errors import ClipUnavailable
    from ..runtime.models import Models

    t0 = time.perf_counter()
    # 1. spec and lab
    spec.validate()
    procs = processes or Processes()
    lab = lab or build_lab(spec, Models(device=procs.device))
    try:
        lab.scorer  # noqa: B018 - fail before generating anything when CLIP is missing
    except ClipUnavailable as e:
        raise EvalError(f"clip: {e}") from None
    # 2. plan
    units = plan(spec, lab)
    out = Path(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    settings = settings_of(spec, lab)
    _check_settings(out, settings)
    # 3. resume: what is done (every process reads before anyone appends)
    own = _part_path(out, procs.rank)
    done = _read_parts(out, own=own)
    procs.wait()
    if procs.is_main:
        _write_settings(out, spec, settings)
    # 4. this process's share: whole units, unit k to process k mod K
    mine = [u for u in units if u.index % procs.size == procs.rank
            and any(c.cell_id not in done for c in u.cells)]
    log.info("process %d/%d: %d of %d units to run (%d cells done)", procs.rank, procs.size, len(mine), len(units),
             len(done))
    # 5. generate, score, append
    writer = PartWriter(own)
    new_rows = 0
    try:
        for i, unit in enumerate(mine):
            rows = [r for r in run_unit(lab, unit) if r["cell_id"] not in done]
            writer.write(rows)
            new_rows += len(rows)
            log.info("unit %d (%s, λ=%g): %d rows (%d/%d)", unit.index, unit.concept, unit.lam, len(rows), i + 1,
                     len(mine))
            if progress is not None:
                progress(i + 1, len(mine))
    finally:
        writer.close()
    # 6. gather on the main process
    procs.wait()
    result: dict[str, Any] = {"process": procs.rank, "processes": procs.size, "units_run": len(mine),
                              "rows_written": new_rows}
    if not procs.is_main:
        return result
    rows, summary = gather(out, units)
    result.update(out=str(out), results=str(out / "results.csv"), summary_csv=str(out / "summary.csv"),
                  plot=str(out / "summary.png"), cells=len(rows), units=len(units), summary=summary,
                  seconds=time.perf_counter() - t0)
    return result


def gather(out: Path, units: Sequence[Unit]) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Merge the part files into ``results.csv`` (sorted by cell id) + ``summary.csv`` + ``summary.png``."""
    have = _read_parts(out)
    cells = [c for u in units for c in u.cells]
    missing = [c for c in cells if c.cell_id not in have]
    if missing:
        raise EvalError(f"{len(missing)} of {len(cells)} cells have no row (did a process fail?); run the same "
                        "command again to finish them")
    extra = len(have) - len(cells)
    if extra:
        log.info("%d rows in %s/parts belong to cells this config no longer has; results.csv leaves them out",
                 extra, out)
    rows = sorted((have[c.cell_id] for c in cells), key=lambda r: r["cell_id"])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    _atomic_write(out / "results.csv", buf.getvalue())
    summary = summarize(rows, [(c.concept, c.word, c.lam) for u in units for c in u.cells])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(summary)
    _atomic_write(out / "summary.csv", buf.getvalue())
    plot_summary(summary, out / "summary.png")
    return rows, summary


def summarize(rows: Sequence[Mapping[str, str]], order: Sequence[tuple[str, str, float]]) -> list[dict[str, Any]]:
    """Per (concept, target, λ), in plan order: images, mean and std of the CLIP score, CLIP accuracy."""
    groups: dict[tuple[str, str, float], list[Mapping[str, str]]] = {k: [] for k in dict.fromkeys(order)}
    for r in rows:
        groups[(r["concept"], r["target"], float(r["lambda"]))].append(r)
    out = []
    for (concept, target, lam), rs in groups.items():
        scores = [float(r["clip_score"]) for r in rs]
        out.append({"concept": concept, "target": target, "anchor": rs[0]["anchor"], "kind": rs[0]["kind"],
                    "lambda": lam,
                    "images": len(rs), "clip_score": statistics.fmean(scores),
                    "clip_score_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                    "clip_accuracy": statistics.fmean(float(r["clip_accuracy"]) for r in rs)})
    return out


def plot_summary(summary: Sequence[Mapping[str, Any]], path: Path) -> None:
    """CLIP accuracy and score vs λ, one line per concept."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for concept, target in dict.fromkeys((s["concept"], s["target"]) for s in summary):
        pts = sorted((s["lambda"], s["clip_accuracy"], s["clip_score"]) for s in summary
                     if (s["concept"], s["target"]) == (concept, target))
        lams = [p[0] for p in pts]
        label = concept if target == concept else f"{concept} → {target} (hard negative)"
        style = "-" if target == concept else ":"
        axes[0].plot(lams, [p[1] for p in pts], style, marker="o", label=label)
        axes[1].plot(lams, [p[2] for p in pts], style, marker="o", label=label)
    axes[0].set(xlabel="λ (+1 ablates, −1 enhances)", ylabel="CLIP accuracy (target beats anchor)", ylim=(-0.05, 1.05))
    axes[1].set(xlabel="λ (+1 ablates, −1 enhances)", ylabel="CLIP score of the target")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=100)


# --- CLI -------------------------------------------------------------------------------------------------

def cmd_eval(args: Any) -> dict[str, Any]:
    spec = EvalSpec.load(args.config or DEFAULT_CONFIG)
    if args.world:
        spec.world = args.world
    if args.batch_size:
        spec.batch_size = args.batch_size
    return run_eval(spec.validate(), args.out, processes=accelerate_processes())


def print_eval(result: Mapping[str, Any]) -> None:
    if "summary" not in result:
        return  # a non-main process under accelerate: the main one prints the table
    rows = [[s["concept"], s["target"], s["anchor"], f"{s['lambda']:+g}" if s["lambda"] else "0", s["images"],
             s["clip_score"], s["clip_accuracy"]] for s in result["summary"]]
    print(text_table(["concept", "target", "anchor", "λ", "images", "CLIP score", "CLIP accuracy"], rows))
    print(f"\nwrote {result['results']} ({result['cells']} rows), {result['summary_csv']}, {result['plot']}; "
          f"{result['units_run']} of {result['units']} units run here in {result['seconds']:.1f} s on "
          f"{result['processes']} process(es)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval", help="resumable table: concepts × λ × prompts × seeds → CSV",
        description="Evaluate concepts × λ × prompts × seeds (one image per cell) with CLIP score and CLIP "
        "accuracy (target beats anchor), as in the papers' tables. Writes DIR/results.csv (one row per image, "
        "sorted by cell id), DIR/summary.csv + summary.png (per concept, target and λ), DIR/eval.yaml. With "
        "'hard_negatives: true' in the config, each concept's hard negatives (e.g. snoopy → beagles) are "
        "evaluated on the concept's weights too. Interrupted runs "
        "resume where they stopped (run the same command again). Under `accelerate launch --num_processes K -m "
        "tad_demo eval ...` the work is sharded over K processes. λ=+1 ablates, 0 is the base, −1 enhances.")
    p.add_argument("--config", help="table YAML (tad_eval: 1); default examples/table_toy.yaml (the toy world)")
    p.add_argument("--out", required=True, help="output folder (also the resume state: parts/*.csv)")
    p.add_argument("--world", help="toy world folder (overrides the config's world)")
    p.add_argument("--batch-size", type=int, help="images per generate call (overrides the config; a resumed "
                   "run must keep it)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_eval, human=print_eval)
