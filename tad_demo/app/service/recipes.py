"""Reproducing a run from an uploaded ``recipe.yaml`` (or the run's ``cells.zip``, which carries its condition
images): every model reference and number is checked as for widget values."""

from __future__ import annotations

import re
import uuid
import zipfile
from pathlib import Path
from typing import Any

import yaml

from ...grid import GridSpec
from ..errors import UserError
from ..request import RECIPE_FIELDS
from ..settings import Settings
from ..validation import parse_int, parse_lambda, parse_side
from .choices import Choices
from .guard import guard
from .sources import Sources

RECIPE_SUFFIXES = (".yaml", ".yml", ".zip")
MAX_RECIPE_MB = 50
MAX_CONDITION_MB = 20
CONDITION_FILE = re.compile(r"conditions/\w+\.png")


class Recipes:
    def __init__(self, settings: Settings, choices: Choices, sources: Sources):
        self.settings, self.choices, self.sources = settings, choices, sources

    def spec(self, path: str) -> tuple[GridSpec, dict[str, Any]]:
        """A checked GridSpec from an uploaded recipe.yaml or cells.zip, and its normalized form."""
        p = Path(path)
        if p.suffix.lower() not in RECIPE_SUFFIXES:
            raise UserError(f"recipe: upload the recipe.yaml (or cells.zip) of a run, not {p.suffix or 'this file'}")
        if p.stat().st_size > MAX_RECIPE_MB * 2**20:
            raise UserError(f"recipe: the file is larger than {MAX_RECIPE_MB} MB")
        with guard("reading the recipe"):
            folder = self._unzip(p) if p.suffix.lower() == ".zip" else None
            text = (folder / "recipe.yaml").read_text(errors="replace") if folder else p.read_text(errors="replace")
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise UserError(f"recipe: not valid YAML ({str(e).splitlines()[0]})") from None
            for c in (data.get("controls") or []) if isinstance(data, dict) else []:
                # Condition images come only from the run's zip: a path must not read files of this server.
                img = c.get("image") if isinstance(c, dict) else None
                if img and (folder is None or not CONDITION_FILE.fullmatch(str(img))):
                    raise UserError("recipe: a controlled run's conditions travel in its cells.zip; upload the zip "
                                    "(a recipe.yaml alone cannot carry the condition images)")
            spec = GridSpec.from_dict(data, base_dir=folder, origin="recipe")
        return self._check(spec)

    def _unzip(self, p: Path) -> Path:
        out = self.settings.work_dir / "recipes" / uuid.uuid4().hex[:12]
        out.mkdir(parents=True)
        with zipfile.ZipFile(p) as z:
            wanted = [n for n in z.namelist() if n == "recipe.yaml" or CONDITION_FILE.fullmatch(n)]
            if "recipe.yaml" not in wanted:
                raise UserError("recipe: the zip has no recipe.yaml at its top level")
            for n in wanted:  # fixed names only: nothing in the archive chooses where files go
                if z.getinfo(n).file_size > MAX_CONDITION_MB * 2**20:
                    raise UserError(f"recipe: {n} in the zip is too large")
                (out / n).parent.mkdir(parents=True, exist_ok=True)
                (out / n).write_bytes(z.read(n))
        return out

    def _check(self, spec: GridSpec) -> tuple[GridSpec, dict[str, Any]]:
        """Every reference of the spec is a known model or a checked path/Hub id; every number within the caps."""
        s, world, catalog = self.settings, self.choices.world, self.choices.catalog
        toy = world is not None and Path(spec.base).resolve() == world.base_path.resolve()
        if not toy and spec.base not in {b.source for b in catalog.bases.values()}:
            self.sources.check(spec.base, "recipe base")
        for c in [spec.object, spec.style, *spec.extra]:
            if c is not None:
                self.sources.check(c.source, f"recipe {c.name}")
        if spec.clip not in {self.choices.clip_for("toyworld"), *catalog.clip.values(), None}:
            self.sources.check(spec.clip, "recipe clip")
        nets = {m for fam in catalog.controlnets.values() for v in fam.values() for m in v.values()}
        nets |= {str(p) for p in world.controlnet_paths().values()} if world else set()
        for c in spec.controls:
            if c.model and c.model not in nets:
                self.sources.check(c.model, f"recipe {c.kind} ControlNet")
        for lam in (*spec.object_lambdas, *spec.style_lambdas, *(e.lam for e in spec.extra)):
            parse_lambda(lam, "recipe λ", s.max_lambda)
        parse_int(spec.steps, "recipe steps", 1, s.max_steps)
        parse_side(spec.height, "recipe height", s.min_side, s.max_side)
        parse_side(spec.width, "recipe width", s.min_side, s.max_side)
        if len(spec.seeds) > s.max_seeds:
            raise UserError(f"recipe seeds: at most {s.max_seeds} (TAD_MAX_SEEDS)")
        if spec.n_images > s.max_images:
            raise UserError(f"recipe: {spec.n_images} images is over this app's limit of {s.max_images}")
        normalized = {"recipe": spec.to_dict(image_paths={c.kind: "-" for c in spec.controls}), "condition": None}
        return spec, normalized

    @staticmethod
    def fields(spec: GridSpec) -> dict[str, Any]:
        """Widget values that show an uploaded recipe (what can be shown; the run itself uses the recipe)."""
        def lam(t: tuple[float, ...], i: int) -> float:
            return float(t[i]) if len(t) > i else 0.0

        values = {"controls": [c.kind for c in spec.controls], "seeds": ", ".join(str(x) for x in spec.seeds),
                  "steps": spec.steps, "guidance": spec.guidance, "height": spec.height, "width": spec.width,
                  "prompt_template": spec.prompt_template, "object_ablate": lam(spec.object_lambdas, 0),
                  "object_enhance": lam(spec.object_lambdas, 2), "style_ablate": lam(spec.style_lambdas, 0),
                  "style_enhance": lam(spec.style_lambdas, 2), "merge_method": spec.merge}
        return {k: values[k] for k in RECIPE_FIELDS}
