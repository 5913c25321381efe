"""Reproducing a run from an uploaded ``recipe.yaml`` (or the run's ``cells.zip``, which carries its condition
images). Sizes are capped before anything is parsed or unpacked; the unpacked folder is deleted as soon as the
spec is read (its images are in memory then), whether the recipe was accepted or refused; every model reference
and number is checked as for widget values (``caps.check_caps``: the form's limits, the same function).
"""

from __future__ import annotations

import re
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

from ...core.limits import HARD
from ...core.safe_yaml import load_yaml
from ...grid import GridSpec
from ..errors import UserError
from ..request import RECIPE_FIELDS
from ..settings import Settings
from .caps import check_caps
from .choices import Choices
from .guard import guard
from .sources import Sources

RECIPE_SUFFIXES = (".yaml", ".yml", ".zip")
MAX_YAML_BYTES = HARD.yaml_chars            # a recipe.yaml (a real one is a few kB)
MAX_ZIP_BYTES = HARD.zip_mb * 2**20         # a cells.zip upload, and everything taken out of it together
MAX_CONDITION_BYTES = 20 * 2**20            # one condition image in the zip
CONDITION_FILE = re.compile(r"conditions/\w{1,40}\.png")


def check_upload_size(path: str | Path) -> Path:
    """The uploaded recipe file, refused by its size before a byte of it is parsed."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in RECIPE_SUFFIXES:
        raise UserError(f"recipe: upload the recipe.yaml (or cells.zip) of a run, not {p.suffix or 'this file'}")
    size = p.stat().st_size
    cap = MAX_ZIP_BYTES if suffix == ".zip" else MAX_YAML_BYTES
    if size > cap:
        raise UserError(f"recipe: the {suffix[1:]} file is {size / 2**10:,.0f} kB; a run's recipe is at most "
                        f"{cap / 2**10:,.0f} kB")
    return p


class Recipes:
    def __init__(self, settings: Settings, choices: Choices, sources: Sources, budget: float):
        self.settings, self.choices, self.sources, self.budget = settings, choices, sources, budget

    def spec(self, path: str) -> tuple[GridSpec, dict[str, Any]]:
        """A checked GridSpec from an uploaded recipe.yaml or cells.zip, and its normalized form."""
        p = check_upload_size(path)
        folder = None
        try:
            with guard("reading the recipe"):
                folder = self._unzip(p) if p.suffix.lower() == ".zip" else None
                source = folder / "recipe.yaml" if folder else p
                if source.stat().st_size > MAX_YAML_BYTES:
                    raise UserError(f"recipe: recipe.yaml is larger than {MAX_YAML_BYTES // 2**10} kB")
                data = load_yaml(source.read_text(errors="replace"), "recipe")
                for c in (data.get("controls") or []) if isinstance(data, dict) else []:
                    # Condition images come only from the run's zip: a path must not read files of this server.
                    img = c.get("image") if isinstance(c, dict) else None
                    if img and (folder is None or not CONDITION_FILE.fullmatch(str(img))):
                        raise UserError("recipe: a controlled run's conditions travel in its cells.zip; upload the "
                                        "zip (a recipe.yaml alone cannot carry the condition images)")
                spec = GridSpec.from_dict(data, base_dir=folder, origin="recipe")  # images are read into memory
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        return self._check(spec)

    def _unzip(self, p: Path) -> Path:
        """recipe.yaml and conditions/*.png of a run's zip, into a fresh folder (deleted by the caller); at most
        HARD.zip_entries files and MAX_ZIP_BYTES together, checked from the directory before anything is written,
        and again while writing (a directory can lie about sizes)."""
        try:
            z = zipfile.ZipFile(p)
        except (zipfile.BadZipFile, OSError):
            raise UserError("recipe: the .zip file is not a readable zip archive") from None
        out = self.settings.work_dir / "recipes" / uuid.uuid4().hex[:12]
        with z:
            infos = z.infolist()
            if len(infos) > 4 * HARD.zip_entries:
                raise UserError(f"recipe: the zip holds {len(infos)} files; a run's zip has at most "
                                f"{4 * HARD.zip_entries}")
            wanted = [i for i in infos if i.filename == "recipe.yaml" or CONDITION_FILE.fullmatch(i.filename)]
            if "recipe.yaml" not in {i.filename for i in wanted}:
                raise UserError("recipe: the zip has no recipe.yaml at its top level")
            if len(wanted) > HARD.zip_entries:
                raise UserError(f"recipe: the zip has {len(wanted)} conditions; at most {HARD.zip_entries}")
            total = sum(i.file_size for i in wanted)
            if total > MAX_ZIP_BYTES or any(i.file_size > MAX_CONDITION_BYTES for i in wanted):
                raise UserError(f"recipe: the zip unpacks to {total / 2**20:,.0f} MB; at most "
                                f"{MAX_ZIP_BYTES // 2**20} MB together and {MAX_CONDITION_BYTES // 2**20} MB a file")
            out.mkdir(parents=True)
            written = 0
            try:
                for info in wanted:  # fixed names only: nothing in the archive chooses where files go
                    target = out / info.filename
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(target, "wb") as dst:
                        while block := src.read(1 << 20):
                            written += len(block)
                            if written > MAX_ZIP_BYTES:
                                raise UserError(f"recipe: the zip unpacks to more than {MAX_ZIP_BYTES // 2**20} MB")
                            dst.write(block)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                shutil.rmtree(out, ignore_errors=True)
                raise UserError(f"recipe: the zip is damaged ({type(e).__name__})") from None
            except BaseException:
                shutil.rmtree(out, ignore_errors=True)
                raise
        return out

    def _check(self, spec: GridSpec) -> tuple[GridSpec, dict[str, Any]]:
        """Every reference of the spec is a known model or a checked path/Hub id; every value within the caps the
        form has (one check: ``check_caps``)."""
        world, catalog = self.choices.world, self.choices.catalog
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
        check_caps(spec, self.settings, budget=self.budget, prefix="recipe ")
        normalized = {"recipe": spec.to_dict(image_paths={c.kind: "-" for c in spec.controls}), "condition": None}
        return spec, normalized

    @staticmethod
    def fields(spec: GridSpec) -> dict[str, Any]:
        """Widget values that show an uploaded recipe (what can be shown; the run itself uses the recipe)."""
        def axis(lams: tuple[float, ...]) -> str:
            return ", ".join(f"{float(x):g}" for x in lams)

        values = {"controls": [c.kind for c in spec.controls], "seeds": ", ".join(str(x) for x in spec.seeds),
                  "steps": spec.steps, "guidance": spec.guidance, "height": spec.height, "width": spec.width,
                  "prompt_template": spec.prompt_template, "object_lambdas": axis(spec.object_lambdas),
                  "style_lambdas": axis(spec.style_lambdas), "merge_method": spec.merge}
        return {k: values[k] for k in RECIPE_FIELDS}
