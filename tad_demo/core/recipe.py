"""Recipes: a versioned YAML description of an edited model, and the provenance of its inputs.

```yaml
tad_recipe: 1
base: assets/toyworld/base
vectors:
  - {name: smiley, source: assets/toyworld/ablations/smiley.safetensors, kind: ablation, lambda: 1.0}
  - {name: striped, source: assets/toyworld/ablations/striped.safetensors, kind: ablation, lambda: -1.0}
merge: {method: linear, params: {}}
scope: null            # a named scope (cross_attn_kv, unet, ...) or a regular expression
hashes: {}             # sha256 of every input, filled by `with_hashes()`
```

Vector kinds: ``ablation``/``finetuned`` (a checkpoint with fine-tuned weights: τ = file − base),
``vector`` (a saved τ, ``TaskVector.save``), ``lora`` (dense ΔW from a LoRA file).
λ follows TAD's sign convention: +1 ablates, 0 is the base, −1 enhances.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import RecipeError, TadError
from .limits import HARD
from .safe_yaml import load_yaml
from .scopes import check_scope

log = logging.getLogger(__name__)

RECIPE_VERSION = 1
VECTOR_KINDS = ("ablation", "finetuned", "vector", "lora")


@dataclass
class VectorSpec:
    name: str
    source: str
    kind: str = "ablation"
    lam: float = 1.0  # "lambda" in YAML

    def validate(self, where: str) -> None:
        if not self.name:
            raise RecipeError(f"{where}: vector name is empty")
        if len(self.name) > HARD.name:
            raise RecipeError(f"{where}: vector name is {len(self.name)} characters; at most {HARD.name}")
        if self.kind not in VECTOR_KINDS:
            raise RecipeError(f"{where}: kind {self.kind!r} is not one of {', '.join(VECTOR_KINDS)}")
        if not isinstance(self.lam, (int, float)) or isinstance(self.lam, bool) or not math.isfinite(self.lam):
            raise RecipeError(f"{where}: lambda {self.lam!r} is not a finite number")


@dataclass
class Recipe:
    base: str
    vectors: list[VectorSpec] = field(default_factory=list)
    method: str = "linear"
    params: dict[str, Any] = field(default_factory=dict)
    scope: str | None = None
    hashes: dict[str, str] = field(default_factory=dict)

    # --- YAML ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "tad_recipe": RECIPE_VERSION,
            "base": self.base,
            "vectors": [{"name": v.name, "source": v.source, "kind": v.kind, "lambda": float(v.lam)}
                        for v in self.vectors],
            "merge": {"method": self.method, "params": dict(self.params)},
            "scope": self.scope,
            "hashes": dict(self.hashes),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], origin: str = "recipe") -> Recipe:
        if not isinstance(d, dict):
            raise RecipeError(f"{origin}: expected a mapping at the top level, got {type(d).__name__}")
        version = d.get("tad_recipe")
        if version is None:
            raise RecipeError(f"{origin}: missing 'tad_recipe: {RECIPE_VERSION}' version header")
        if version != RECIPE_VERSION:
            raise RecipeError(f"{origin}: recipe version {version!r} is not supported (this is version "
                              f"{RECIPE_VERSION}); upgrade tad_demo")
        known = {"tad_recipe", "base", "vectors", "merge", "scope", "hashes"}
        unknown = set(d) - known
        if unknown:
            raise RecipeError(f"{origin}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        if not d.get("base"):
            raise RecipeError(f"{origin}: 'base' is required (a diffusers folder, file or Hub id)")
        vectors = []
        for i, v in enumerate(d.get("vectors") or []):
            where = f"{origin}: vectors[{i}]"
            if not isinstance(v, dict) or "source" not in v:
                raise RecipeError(f"{where}: needs at least 'source' (and 'name', 'kind', 'lambda')")
            extra = set(v) - {"name", "source", "kind", "lambda"}
            if extra:
                raise RecipeError(f"{where}: unknown field(s) {sorted(extra)}")
            spec = VectorSpec(name=str(v.get("name") or Path(str(v["source"])).stem), source=str(v["source"]),
                              kind=str(v.get("kind", "ablation")), lam=v.get("lambda", 1.0))
            spec.validate(where)
            vectors.append(spec)
        merge = d.get("merge") or {}
        if not isinstance(merge, dict):
            raise RecipeError(f"{origin}: 'merge' must be a mapping with 'method' and 'params'")
        scope = d.get("scope")
        if scope is not None:
            try:
                check_scope(scope)
            except TadError as e:
                raise RecipeError(f"{origin}: {e}") from None
        recipe = cls(base=str(d["base"]), vectors=vectors, method=str(merge.get("method", "linear")),
                     params=dict(merge.get("params") or {}), scope=scope,
                     hashes=check_hashes(d.get("hashes"), origin, RecipeError))
        names = [v.name for v in vectors]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise RecipeError(f"{origin}: duplicate vector name(s) {sorted(dup)}")
        return recipe

    @classmethod
    def from_yaml(cls, text: str, origin: str = "recipe") -> Recipe:
        return cls.from_dict(load_yaml(text, origin, error=RecipeError), origin)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        p = Path(path)
        if not p.is_file():
            raise RecipeError(f"recipe file {str(p)!r} not found")
        return cls.from_yaml(p.read_text(), origin=str(p))

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(self.to_yaml())
        return p

    # --- provenance ------------------------------------------------------------------------------------
    def inputs(self) -> list[str]:
        return [self.base] + [v.source for v in self.vectors]

    def with_hashes(self) -> Recipe:
        """A copy with the sha256 of every local input (Hub ids are recorded as such)."""
        hashes = {}
        for src in self.inputs():
            p = Path(src)
            hashes[src] = sha256_path(p) if p.exists() else "not-a-local-path"
        return Recipe(**{**asdict(self), "vectors": list(self.vectors), "hashes": hashes})

    # --- building --------------------------------------------------------------------------------------
    def build_vectors(self) -> list[tuple[str, Any, float]]:
        """(name, TaskVector, λ) for every vector, restricted to the scope."""
        # torch-heavy modules are imported here, not at the top: reading and writing recipes needs only YAML
        from .lora import load_lora
        from .task_vector import TaskVector

        out = []
        for v in self.vectors:
            if v.kind in ("ablation", "finetuned"):
                tv = TaskVector.from_pair(self.base, v.source)
            elif v.kind == "vector":
                tv = TaskVector.load(v.source)
            else:
                tv = load_lora(v.source, base=self.base)
            if self.scope:
                tv = tv.restrict(self.scope)
            out.append((v.name, tv, float(v.lam)))
        return out

    def merged_vector(self):
        """Σ over the recipe's vectors with its merge method, λᵢ as the weights."""
        from .merge_methods import merge

        built = self.build_vectors()
        if not built:
            raise RecipeError("the recipe has no vectors to merge")
        return merge([tv for _, tv, _ in built], method=self.method, weights=[lam for *_, lam in built],
                     **self.params)


def check_hashes(hashes: Any, origin: str, error: type[TadError]) -> dict[str, str]:
    """A recipe's ``hashes``: a mapping of input references to hex digests (or ``not-a-local-path``), bounded in
    size (``HARD.hashes`` entries of short strings): it is provenance, never a place for payloads."""
    if hashes is None:
        return {}
    if not isinstance(hashes, dict):
        raise error(f"{origin}: hashes must be a mapping of input → sha256, got {type(hashes).__name__}")
    if len(hashes) > HARD.hashes:
        raise error(f"{origin}: hashes has {len(hashes)} entries; at most {HARD.hashes}")
    for k, v in hashes.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise error(f"{origin}: hashes: every entry is text → text (input → sha256), got "
                        f"{type(k).__name__} → {type(v).__name__}")
        if len(k) > HARD.hash_key or len(v) > HARD.hash_value:
            raise error(f"{origin}: hashes: an entry is longer than {HARD.hash_key} / {HARD.hash_value} characters")
    return dict(hashes)


# --- hashing -------------------------------------------------------------------------------------------
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, cached by (path, size, mtime) since checkpoints are large and rarely change."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in sorted order)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(p)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def metadata_for(recipe: Recipe) -> dict[str, str]:
    """String metadata (safetensors / PNG text chunks) that reproduces a result."""
    return {"tad_recipe": recipe.to_yaml(), "tad_hashes": json.dumps(recipe.hashes, sort_keys=True)}
