"""The app's service layer: widget values → validated GridSpec → grid run → files the UI and API return.

    service = Service(Settings.from_env())
    spec, normalized = service.build(GridRequest(object_ablate=0.5, steps=4))  # validation only (cheap)
    run_dir = service.compute(normalized, spec, progress=print)                # the heavy part → a run folder
    outputs = service.outputs(run_dir)                                          # what the UI/API shows

Rules this layer enforces (an API client can bypass every widget):
* every number is checked against the settings' bounds and refused with a one-line message naming the field;
* model references are a catalog id, the toy world, a Hub id, an upload, or (local runs only) a path inside
  ``Settings.model_dirs``; ``..`` in a path and URLs are refused; pickle files (.ckpt/.bin/.pt/.pth) are refused
  when hosted;
* library errors (GridError, ControlError, TaskVectorError, ClipUnavailable, ...) become ``gr.Error`` with the
  library's message; anything unexpected is logged and reported in one line, and the app keeps serving;
* one :class:`~tad_demo.models.Models` cache per process (``run_grid`` holds its lock); nothing per user is kept
  here except the cancel flag of a running request, removed when it ends.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import random
import re
import shutil
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import gradio as gr
import yaml
from PIL import Image

from .catalog import TOY, BaseEntry, Catalog, ConceptEntry, World, example_ok, slots
from .control import CONTROL_KINDS, RESIZE_MODES, ControlError, make_condition
from .grid import Cancelled, ConceptSpec, ControlSpec, ExtraVector, GridError, GridSpec, run_grid, save
from .merge_methods import describe as describe_merge_methods
from .merge_methods import get_method
from .metrics import FORMULA, SCORE_SCALE, ClipUnavailable
from .models import ModelError, Models
from .recipe import RecipeError, sha256_path
from .settings import Settings
from .task_vector import TaskVectorError

log = logging.getLogger(__name__)

CONDITION_SOURCES = {"example": "toy-world example (ready maps)", "image": "photo → annotator",
                     "map": "ready condition map", "sketch": "sketch"}
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth")
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
RECIPE_SUFFIXES = (".yaml", ".yml", ".zip")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}(/[\w.\-/]{1,200})?")
NAME = re.compile(r"[^\W\d_][\w '.-]{0,59}")  # concept words go into prompts and CLIP captions
CUSTOM = re.compile(r"\s*(?P<name>[^@]+?)\s*(?:→|->)\s*(?P<anchor>[^@]+?)\s*@\s*(?P<source>.+?)\s*")
MAX_GUIDANCE = 30.0
MAX_SCALE = 2.0
MAX_EXTRA_WIDGETS = 3
MAX_TEMPLATE = 300
SEED_MAX = 2**32 - 1
GRID_TABS = CONTROL_KINDS  # one output image per control kind


# --- errors -------------------------------------------------------------------------------------------------

def refuse(message: str) -> gr.Error:
    """A one-line ``gr.Error`` for the user (raise it)."""
    return gr.Error(message.strip().splitlines()[0][:500], title="Cannot run this")


LIBRARY_ERRORS = (GridError, ModelError, ControlError, TaskVectorError, ClipUnavailable, RecipeError, FileNotFoundError)


@contextlib.contextmanager
def user_errors(what: str = "grid", errors: tuple[type[BaseException], ...] = LIBRARY_ERRORS, *,
                name_it: bool = False) -> Iterator[None]:
    """Library errors (``errors``) → ``gr.Error`` with their message (prefixed with ``what`` when ``name_it``);
    anything else is logged and reported in one line."""
    try:
        yield
    except gr.Error:
        raise
    except Cancelled as e:
        raise gr.Error(str(e), title="Cancelled") from None
    except errors as e:
        log.info("%s refused: %s: %s", what, type(e).__name__, e)
        raise refuse(f"{what}: {e}" if name_it else str(e)) from None
    except Exception as e:  # noqa: BLE001 - the app must keep serving whatever a model library raises
        log.exception("%s failed", what)
        text = str(e).strip().splitlines()
        raise gr.Error(f"{what} failed: {type(e).__name__}: {text[0] if text else ''}"[:500],
                       title="Internal error") from None


# --- the request ------------------------------------------------------------------------------------------

@dataclass
class GridRequest:
    """The widget values of one grid run; field names are the ``grid`` API's parameter names.

    ``None`` means "the base model's default" (concepts: its first object/style concept; steps, guidance, size,
    prompt template: from world.json or the catalog). An empty string for a concept means "no such axis".
    """

    base: str = TOY
    object: str | None = None
    style: str | None = None
    controls: list[str] = field(default_factory=lambda: ["none"])
    condition_source: str = "example"
    example: str | None = None
    condition_image: str | None = None
    sketch: Any = None
    conditioning_scale: float = 1.0
    resize_mode: str = "resize"
    controlnet_version: str | None = None
    prompt_template: str | None = None
    seeds: str = "42"
    steps: int | float | None = None
    guidance: float | None = None
    height: int | float | None = None
    width: int | float | None = None
    object_ablate: float = 1.0
    object_enhance: float = -1.0
    style_ablate: float = 1.0
    style_enhance: float = -1.0
    extra1: str | None = None
    extra1_lambda: float = 1.0
    extra2: str | None = None
    extra2_lambda: float = 1.0
    extra3: str | None = None
    extra3_lambda: float = 1.0
    merge_method: str = "linear"
    merge_params: dict[str, Any] | None = None
    clip_metrics: bool = True


REQUEST_FIELDS = tuple(f.name for f in fields(GridRequest))


# --- the service ----------------------------------------------------------------------------------------------

class Service:
    """Validation, model resolution, runs and their files, cancel flags. One instance per process."""

    errors = staticmethod(user_errors)

    def __init__(self, settings: Settings, models: Models | None = None):
        self.settings = settings
        self.catalog = Catalog.load(settings.catalog)
        self.world = World.load(settings.assets)
        # Hosted: Hub weights are read from safetensors only (a pickle can run code when unpickled).
        self.models = models or Models(device=settings.device, use_safetensors=True if settings.hosted else None,
                                        threads=settings.threads or None)
        self.runs_dir = settings.work_dir / "runs"
        self.example_cache = settings.work_dir / "examples"
        self.precomputed_dir = settings.assets / "examples" / "precomputed"
        self._cancel: dict[str, threading.Event] = {}
        self._cancel_lock = threading.Lock()
        self._fingerprints: dict[str, bool] = {}
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        try:  # Hugging Face ZeroGPU: the heavy call gets a GPU for its duration; elsewhere `spaces` is absent
            import spaces

            self.compute = spaces.GPU(duration=120)(self.compute)
        except ImportError:
            pass

    # --- what the UI offers ------------------------------------------------------------------------------
    def bases(self) -> list[BaseEntry]:
        out = []
        if self.world is not None:
            out.append(BaseEntry(id=TOY, name="Toy world (tiny, CPU, ships with the app)", source=self.world.base,
                                 family=TOY, defaults=self.world.defaults))
        return out + list(self.catalog.bases.values())

    def base_choices(self) -> list[tuple[str, str]]:
        return [(b.name + (" — GPU recommended" if b.gpu else ""), b.id) for b in self.bases()]

    def default_base(self) -> str:
        return TOY if self.world is not None else next(iter(self.catalog.bases), TOY)

    def family_of(self, base: str) -> str:
        entry = self._base_entry(base)
        return entry.family if entry else "sd-1"

    def _base_entry(self, base: str) -> BaseEntry | None:
        return next((b for b in self.bases() if b.id == base), None)

    def concepts_for(self, base: str) -> list[ConceptEntry]:
        if self.family_of(base) == TOY:
            return list(self.world.concepts) if self.world else []
        return list(self.catalog.concepts.get(self.family_of(base), []))

    def concept_choices(self, base: str, kind: str | None = None) -> list[tuple[str, str]]:
        """(label, value) pairs; ``kind`` None lists both kinds (extra concepts)."""
        out = [(f"{c.name} → {c.anchor}" + ("" if kind else f" ({c.kind})"), c.name)
               for c in self.concepts_for(base) if kind in (None, c.kind)]
        return [("(none)", "")] + out

    def defaults_for(self, base: str) -> dict[str, Any]:
        entry = self._base_entry(base)
        d = {"steps": 30, "guidance": 6.0, "height": 512, "width": 512}
        d.update(entry.defaults if entry else {})
        d["template"] = self.world.template if (self.family_of(base) == TOY and self.world) else \
            "a photo of {object} in the style of {style}"
        first = {k: next((c.name for c in self.concepts_for(base) if c.kind == k), "") for k in ("object", "style")}
        d.update(first)
        return d

    def controlnet_versions(self, base: str) -> list[str]:
        fam = self.family_of(base)
        return ["toy world"] if fam == TOY else list(self.catalog.controlnets.get(fam, {})) or ["v1.1"]

    def control_kinds(self, base: str) -> list[str]:
        """Control kinds that can run with this base (a toy world without a ControlNet offers only none)."""
        if self.family_of(base) == TOY:
            return ["none", *(k for k in CONTROL_KINDS[1:] if self.world and k in self.world.controlnets)]
        return list(CONTROL_KINDS)

    def ui_config(self) -> dict[str, Any]:
        """Everything the UI builders need, as plain data (they don't import the library)."""
        s = self.settings
        base = self.default_base()
        return {
            "hosted": s.hosted, "base": base, "base_choices": self.base_choices(),
            "object_choices": self.concept_choices(base, "object"),
            "style_choices": self.concept_choices(base, "style"),
            "extra_choices": self.concept_choices(base), "defaults": self.defaults_for(base),
            "control_kinds": list(CONTROL_KINDS), "available_controls": self.control_kinds(base),
            "controlnet_versions": self.controlnet_versions(base),
            "condition_sources": [(v, k) for k, v in CONDITION_SOURCES.items()],
            "examples": self.world.examples if self.world else [], "resize_modes": list(RESIZE_MODES),
            "merge_methods": describe_merge_methods(),
            "limits": {"max_steps": s.max_steps, "max_side": s.max_side, "min_side": s.min_side,
                       "max_seeds": s.max_seeds, "max_images": s.max_images, "max_lambda": s.max_lambda,
                       "max_extra": min(s.max_extra, MAX_EXTRA_WIDGETS), "max_guidance": MAX_GUIDANCE,
                       "max_scale": MAX_SCALE, "max_upload_mb": s.max_upload_mb},
            "upload_types": [".safetensors"] if s.hosted else list(CHECKPOINT_SUFFIXES),
            "formula": FORMULA, "score_scale": SCORE_SCALE, "concept_page": self.catalog.concept_page,
            "example_rows": self.example_rows(),
        }

    def on_base_change(self, base: str) -> dict[str, Any]:
        """What changes with the base: concept lists, defaults, available controls and ControlNet versions."""
        if not base:
            base = self.default_base()
        d = self.defaults_for(base)
        return {"object_choices": self.concept_choices(base, "object"), "style_choices": self.concept_choices(base,
                "style"), "extra_choices": self.concept_choices(base), "defaults": d,
                "available_controls": self.control_kinds(base), "controlnet_versions": self.controlnet_versions(base)}

    # --- model references ----------------------------------------------------------------------------------
    def allowed_roots(self) -> list[Path]:
        """Folders local paths may point into: the app's assets and uploads always, model_dirs on local runs."""
        from gradio.utils import get_upload_folder

        roots = [self.settings.assets, Path(get_upload_folder()), self.settings.work_dir]
        if not self.settings.hosted:
            roots += list(self.settings.model_dirs)
        return [r.expanduser().resolve() for r in roots]

    def check_source(self, ref: Any, what: str, *, folder_ok: bool = True) -> str:
        """A checked model reference: an existing local path (inside the allowed roots) or a Hub id."""
        if not isinstance(ref, str) or not ref.strip():
            raise refuse(f"{what}: give a Hub id (owner/name), an upload" +
                         ("" if self.settings.hosted else " or a local path"))
        ref = ref.strip()
        if len(ref) > 500:
            raise refuse(f"{what}: the reference is {len(ref)} characters long; that is not a model id or path")
        if "://" in ref or ref.lower().startswith(("http:", "https:", "file:", "ftp:")):
            raise refuse(f"{what}: URLs are not fetched by this app; " + (
                "give a Hub id (owner/name) or upload a .safetensors file" if self.settings.hosted else
                "download the file and give its path, or give a Hub id (owner/name)"))
        p = Path(ref).expanduser()
        if ".." in p.parts:
            raise refuse(f"{what}: {ref!r} contains '..' (path traversal is not allowed); give a path inside "
                         "the allowed folders, a Hub id or an upload")
        # "models/snoopy.ckpt" is a local file, not a Hub repo named "snoopy.ckpt".
        looks_like_file = p.suffix.lower() in CHECKPOINT_SUFFIXES and ref.count("/") == 1
        local = p.is_absolute() or ref.startswith(("~", "./")) or p.exists() or looks_like_file
        if local:
            resolved = p.resolve()
            if not any(resolved == r or r in resolved.parents for r in self.allowed_roots()):
                if self.settings.hosted:
                    raise refuse(f"{what}: local paths are disabled on this hosted app; give a Hub id "
                                 "(owner/name) or upload a .safetensors file")
                dirs = ", ".join(str(d) for d in self.settings.model_dirs) or "none"
                raise refuse(f"{what}: {ref!r} is outside the folders models may be read from ({dirs}); "
                             "set TAD_MODEL_DIRS to allow another folder")
            if not resolved.exists():
                raise refuse(f"{what}: {ref!r} not found")
            if resolved.is_dir():
                if not folder_ok:
                    raise refuse(f"{what}: {ref!r} is a folder; give a checkpoint file")
            elif resolved.suffix.lower() not in CHECKPOINT_SUFFIXES:
                raise refuse(f"{what}: {ref!r} is not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) or a "
                             "diffusers folder")
            self._check_pickle(resolved.name, what)
            return str(p)
        if HUB_ID.fullmatch(ref):
            if ref.count("/") > 1:
                self._check_pickle(ref, what)
            return ref
        raise refuse(f"{what}: {ref!r} is neither an existing path nor a Hub id (owner/name)")

    def _check_pickle(self, name: str, what: str) -> None:
        if self.settings.hosted and name.lower().endswith(PICKLE_SUFFIXES):
            raise refuse(f"{what}: pickle checkpoints ({', '.join(PICKLE_SUFFIXES)}) can run code when loaded and "
                         "are refused on this hosted app; convert it with `python -m tad_demo convert` and upload "
                         "the .safetensors")

    def custom_concept(self, name: str, anchor: str, source: str, what: str = "concept") -> str:
        """The dropdown value of a user's checkpoint: ``target → anchor @ source`` (checked)."""
        name, anchor = (name or "").strip(), (anchor or "").strip()
        for label, word in (("target", name), ("anchor", anchor)):
            if not NAME.fullmatch(word or ""):
                raise refuse(f"{what}: the {label} word {word!r} must be 1–60 letters/digits/spaces, starting "
                             "with a letter (it goes into the prompt and the CLIP captions)")
        return f"{name} → {anchor} @ {self.check_source(source, what, folder_ok=True)}"

    def add_model(self, role: str, ref: str | None, upload: str | None, name: str | None,
                  anchor: str | None) -> tuple[str, str, str]:
        """Check a user's model (a typed reference or an upload); returns (role, label, value) for a dropdown."""
        with user_errors("adding the model"):
            source = upload or ref
            if upload:
                if Path(upload).stat().st_size > self.settings.max_upload_mb * 2**20:
                    raise refuse(f"upload: larger than {self.settings.max_upload_mb} MB (TAD_MAX_UPLOAD_MB)")
                if Path(upload).suffix.lower() not in CHECKPOINT_SUFFIXES:
                    raise refuse(f"upload: {Path(upload).name} is not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
            if role == "base":
                value = self.check_source(source, "base model")
                return role, f"custom: {_short(value)}", value
            if role not in ("object", "style", "extra"):
                raise refuse(f"role {role!r} is not one of base, object, style, extra")
            value = self.custom_concept(name or "", anchor or "", source or "", f"{role} concept")
            return role, f"custom: {name} → {anchor} ({_short(source or '')})", value

    # --- validation ----------------------------------------------------------------------------------------
    def build(self, req: GridRequest) -> tuple[GridSpec, dict[str, Any]]:
        """Validate a request into a GridSpec (no model is loaded; Hub ids stay ids) and its normalized form."""
        s = self.settings
        base_id = (req.base or self.default_base()).strip()
        entry = self._base_entry(base_id)
        if entry is None:
            if base_id in (TOY,) and self.world is None:
                raise refuse(f"the toy world is not installed at {s.assets} (no world.json); set TAD_ASSETS or "
                             "pick a catalog model")
            base_source = self.check_source(base_id, "base model")
            family = "sd-1"
        else:
            base_source, family = entry.source, entry.family
        d = self.defaults_for(base_id)

        # 1. concepts on the axes and the extra vectors
        obj = self._concept(d["object"] if req.object is None else req.object, "object", base_id)
        sty = self._concept(d["style"] if req.style is None else req.style, "style", base_id)
        lam = {}
        for key in ("object_ablate", "object_enhance", "style_ablate", "style_enhance"):
            lam[key] = self._lambda(getattr(req, key), key.replace("_", " ") + " λ")
        extras = []
        for i in range(1, MAX_EXTRA_WIDGETS + 1):
            value = getattr(req, f"extra{i}")
            if not value:
                continue
            if len(extras) >= min(s.max_extra, MAX_EXTRA_WIDGETS):
                raise refuse(f"extra concepts: at most {min(s.max_extra, MAX_EXTRA_WIDGETS)} (TAD_MAX_EXTRA)")
            c = self._concept(value, f"extra concept {i}", base_id, any_kind=True)
            extras.append(ExtraVector(c.name, c.source, self._lambda(getattr(req, f"extra{i}_lambda"),
                                                                      f"extra concept {i} λ"), c.kind))

        # 2. sampling numbers
        seeds = self._seeds(req.seeds)
        steps = self._int(d["steps"] if req.steps is None else req.steps, "steps", 1, s.max_steps)
        guidance = self._number(d["guidance"] if req.guidance is None else req.guidance, "guidance", 0.0,
                                MAX_GUIDANCE)
        height = self._side(d["height"] if req.height is None else req.height, "height")
        width = self._side(d["width"] if req.width is None else req.width, "width")
        scale = self._number(req.conditioning_scale, "conditioning scale", 0.0, MAX_SCALE)
        template = self._template(d["template"] if req.prompt_template is None else req.prompt_template,
                                  obj, sty, family)

        # 3. merge method and its parameters
        try:
            method = get_method(req.merge_method or "linear")
        except ValueError as e:
            raise refuse(f"merge method: {e}") from None
        params = dict(req.merge_params or {})
        known = {p.name for p in method.params}
        params = {k: v for k, v in params.items() if k in known}  # the UI sends every method's widgets
        try:
            method.validate(params)
        except ValueError as e:
            raise refuse(f"merge {method.name}: {e}") from None

        # 4. controls and their conditions
        kinds = self._controls(req.controls)
        if req.resize_mode not in RESIZE_MODES:
            raise refuse(f"resize mode {req.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        controls = [self._control(k, req, base_id, family, width, height, scale) for k in kinds]

        # 5. size of the grid
        n_images = 3 ** (obj is not None) * 3 ** (sty is not None) * len(seeds) * len(kinds)
        if n_images > s.max_images:
            raise refuse(f"the grid asks for {n_images} images (cells × seeds × controls); the limit here is "
                         f"{s.max_images} (TAD_MAX_IMAGES): use fewer seeds or controls")
        clip = None
        if req.clip_metrics:
            clip = (self.world.clip if self.world else None) if family == TOY else self.catalog.clip.get(family)
        spec = GridSpec(base=base_source, object=obj, style=sty,
                        object_lambdas=(lam["object_ablate"], 0.0, lam["object_enhance"]),
                        style_lambdas=(lam["style_ablate"], 0.0, lam["style_enhance"]), extra=extras,
                        merge=method.name, merge_params=params, controls=controls, control_resize=req.resize_mode,
                        prompt_template=template, seeds=seeds, steps=steps, guidance=guidance, height=height,
                        width=width, clip=clip)
        with user_errors("validation"):
            spec.validate()
        normalized = {
            "base": base_id, "object": obj.name if obj else "", "style": sty.name if sty else "",
            "sources": [self._portable(c.source) for c in (obj, sty, *extras) if c],
            "controls": kinds, "condition": self._condition_key(req, kinds), "conditioning_scale": scale,
            "resize_mode": req.resize_mode, "controlnets": [self._portable(c.model) for c in controls if c.model],
            "prompt_template": template, "seeds": seeds, "steps": steps, "guidance": guidance, "height": height,
            "width": width, **lam, "extra": [[e.name, e.lam] for e in extras], "merge_method": method.name,
            "merge_params": params, "clip": self._portable(clip) if clip else None,
        }
        return spec, normalized

    def _portable(self, path: str) -> str:
        """A path inside the assets as ``assets:<relative>`` (cache keys must not depend on where they live)."""
        root = self.settings.assets.resolve()
        p = Path(path).resolve() if Path(path).exists() else None
        if p is not None and (p == root or root in p.parents):
            return f"assets:{p.relative_to(root).as_posix()}"
        return str(path)

    def _concept(self, value: Any, axis: str, base: str, any_kind: bool = False) -> ConceptSpec | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            raise refuse(f"{axis}: expected a concept name, got {type(value).__name__}")
        kind = None if any_kind else axis
        m = CUSTOM.fullmatch(value)
        if m:
            self.custom_concept(m["name"], m["anchor"], m["source"], axis)
            return ConceptSpec(m["name"], m["anchor"], self.check_source(m["source"], axis), "ablation")
        for c in self.concepts_for(base):
            if c.name == value.strip() and kind in (None, c.kind):
                if not Path(c.source).exists():
                    raise refuse(f"{axis} {c.name!r}: checkpoint {c.source} is not on this machine; download it "
                                 f"from {self.catalog.concept_page or 'its project page'} to that path")
                self._check_pickle(c.source, f"{axis} {c.name!r}")
                return ConceptSpec(c.name, c.anchor, c.source, "ablation")
        names = ", ".join(c.name for c in self.concepts_for(base) if kind in (None, c.kind)) or "none"
        raise refuse(f"{axis}: unknown concept {value!r} for this base model; known: {names} (or add a checkpoint "
                     "as 'target → anchor @ source')")

    def _lambda(self, v: Any, what: str) -> float:
        return self._number(v, what, -self.settings.max_lambda, self.settings.max_lambda,
                            hint=" (λ>0 ablates, 0 is the base, λ<0 enhances; TAD_MAX_LAMBDA)")

    @staticmethod
    def _number(v: Any, what: str, lo: float, hi: float, hint: str = "") -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise refuse(f"{what}: {v!r} is not a number") from None
        if not math.isfinite(v) or not lo <= v <= hi:
            raise refuse(f"{what}: {v:g} is outside [{lo:g}, {hi:g}]{hint}")
        return float(v)

    @staticmethod
    def _int(v: Any, what: str, lo: int, hi: int) -> int:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise refuse(f"{what}: {v!r} is not a whole number in {lo}..{hi}")
        if not lo <= v <= hi:
            raise refuse(f"{what}: {v} is outside {lo}..{hi}")
        return v

    def _side(self, v: Any, what: str) -> int:
        s = self.settings
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v % 8 or not s.min_side <= v <= s.max_side:
            raise refuse(f"{what}: {v!r} is not a multiple of 8 in {s.min_side}..{s.max_side} pixels (TAD_MAX_SIDE)")
        return v

    def _seeds(self, text: Any) -> list[int]:
        n = self.settings.max_seeds
        items = text if isinstance(text, (list, tuple)) else str(text if text is not None else "").replace(
            ";", ",").replace(" ", ",").split(",")
        items = [x for x in (str(i).strip() for i in items) if x]
        if not 1 <= len(items) <= n:
            raise refuse(f"seeds: give 1 to {n} whole numbers separated by commas, got {len(items)} (TAD_MAX_SEEDS)")
        out = []
        for x in items:
            if not re.fullmatch(r"\d{1,10}", x) or int(x) > SEED_MAX:
                raise refuse(f"seeds: {x!r} is not a whole number in 0..{SEED_MAX}")
            out.append(int(x))
        if len(set(out)) != len(out):
            raise refuse("seeds: each seed once, please")
        return out

    def _template(self, t: Any, obj: ConceptSpec | None, sty: ConceptSpec | None, family: str) -> str:
        if not isinstance(t, str) or not t.strip():
            raise refuse("prompt: write a prompt (the slots {object} and {style} are optional)")
        if len(t) > MAX_TEMPLATE:
            raise refuse(f"prompt: {len(t)} characters; keep it under {MAX_TEMPLATE}")
        used = slots(t)
        bad = [x for x in used if x not in ("object", "style")]
        if bad:
            raise refuse(f"prompt: unknown slot {{{bad[0]}}}; the slots are {{object}} and {{style}} (write literal "
                         "braces as {{ and }})")
        # A one-axis grid: the empty slot gets the family's neutral word (a circle, plain; a dog, painting).
        neutral = {"object": "circle", "style": "plain"} if family == TOY else \
            self.catalog.neutral.get(family, {"object": "object", "style": "painting"})
        if obj is None:
            t = t.replace("{object}", neutral["object"])
        if sty is None:
            t = t.replace("{style}", neutral["style"])
        return t.strip()

    def _controls(self, kinds: Any) -> list[str]:
        if isinstance(kinds, str):
            kinds = [kinds]
        kinds = list(dict.fromkeys(kinds or ["none"]))
        bad = [k for k in kinds if k not in CONTROL_KINDS]
        if bad:
            raise refuse(f"controls: {bad[0]!r} is not one of {', '.join(CONTROL_KINDS)}")
        return [k for k in CONTROL_KINDS if k in kinds]  # a stable order: none, canny, depth, scribble

    def _control(self, kind: str, req: GridRequest, base: str, family: str, width: int, height: int,
                 scale: float) -> ControlSpec:
        if kind == "none":
            return ControlSpec("none")
        if family == TOY:
            model = self.world.controlnets.get(kind) if self.world else None
            if model is None:
                raise refuse(f"control {kind}: the toy world has no {kind} ControlNet; train it with `python -m "
                             f"tad_demo.toyworld.train_controlnet --kinds {kind}`")
        else:
            versions = self.catalog.controlnets.get(family, {})
            version = req.controlnet_version if req.controlnet_version in versions else next(iter(versions), None)
            model = versions.get(version, {}).get(kind) if version else None
            if model is None:
                raise refuse(f"control {kind}: no {kind} ControlNet in the catalog for {base}")
        cond = self.condition(kind, req, width, height)
        return ControlSpec(kind, image=cond.image, model=model, scale=scale)

    def condition(self, kind: str, req: GridRequest, width: int, height: int):
        """The condition of one control kind from the request's source (example, photo, map or sketch)."""
        src = req.condition_source
        with user_errors("condition"):
            if src == "example":
                name = req.example or (self.world.examples[0] if self.world and self.world.examples else "smiley")
                if not example_ok(name):
                    raise refuse(f"example: unknown example {name!r}")
                from .toyworld.examples import example_condition

                # Renderer-made ground truth, drawn at the generation size (crisper than resizing a 64 px file).
                image = example_condition(kind, name, max(width, height))
                return make_condition(kind, image, source="map", width=width, height=height, mode=req.resize_mode)
            if src in ("image", "map"):
                if not req.condition_image:
                    raise refuse(f"control {kind}: upload a {'photo' if src == 'image' else 'condition map'} first")
                return make_condition(kind, req.condition_image, source=src, width=width, height=height,
                                      mode=req.resize_mode)
            if src == "sketch":
                if not req.sketch:
                    raise refuse(f"control {kind}: draw a sketch first")
                return make_condition(kind, req.sketch, source="sketch", width=width, height=height,
                                      mode=req.resize_mode)
            raise refuse(f"condition source {src!r} is not one of {', '.join(CONDITION_SOURCES)}")

    @staticmethod
    def _condition_key(req: GridRequest, kinds: list[str]) -> Any:
        """What identifies the conditions in a cache key: an example's name; None (not cacheable) otherwise."""
        if kinds == ["none"]:
            return "none"
        return f"example:{req.example}" if req.condition_source == "example" else None

    # --- cheap UI helpers -----------------------------------------------------------------------------------
    def preview(self, req: GridRequest) -> tuple[list[tuple[Image.Image, str]], str]:
        """Condition previews (one per control) and a line with the final size; annotators that need weights
        are not run here (they run with the grid), their input is shown instead."""
        kinds = [k for k in self._controls(req.controls) if k != "none"]
        if not kinds:
            return [], "No control selected: the grid has no condition."
        d = self.defaults_for(req.base or self.default_base())
        try:
            width = self._side(d["width"] if req.width is None else req.width, "width")
            height = self._side(d["height"] if req.height is None else req.height, "height")
        except gr.Error as e:
            return [], str(e)
        out, notes = [], []
        for kind in kinds:
            try:
                if req.condition_source == "image" and kind != "canny":
                    from .control import prepare

                    img, _ = prepare(req.condition_image, width, height, req.resize_mode)
                    out.append((img, f"{kind}: the annotator runs with the grid"))
                    continue
                cond = self.condition(kind, req, width, height)
                out.append((cond.image, cond.describe()))
            except gr.Error as e:
                notes.append(f"{kind}: {e}")
            except Exception as e:  # noqa: BLE001 - a preview must never break the page
                notes.append(f"{kind}: {type(e).__name__}: {e}")
        verb = {"resize": "resized", "crop": "cropped", "pad": "padded"}.get(req.resize_mode, req.resize_mode)
        line = f"Conditions are {verb} to **{width}×{height}** px (the generation size)."
        return out, "  \n".join([line, *notes])

    @staticmethod
    def random_seeds(current: str | None = None) -> str:
        n = max(1, len([x for x in str(current or "").replace(";", ",").split(",") if x.strip()]))
        return ", ".join(str(random.randrange(0, 2**31)) for _ in range(n))

    def status(self) -> str:
        d = self.models.describe()
        if not d["base"]:
            return "No model loaded yet (the first run loads it)."
        return (f"Loaded: {_short(d['base'])} on {d['device']}, {len(d['controlnets'])} ControlNet(s), "
                f"{d['vectors']} task vector(s), CLIP: {', '.join(_short(c) for c in d['clip']) or 'none'}.")

    # --- running -------------------------------------------------------------------------------------------
    def begin(self, session: str) -> threading.Event:
        """A fresh cancel flag for the session's run (a stale Cancel must not stop the next run)."""
        ev = threading.Event()
        with self._cancel_lock:
            self._cancel[session] = ev
        return ev

    def end(self, session: str, ev: threading.Event) -> None:
        with self._cancel_lock:
            if self._cancel.get(session) is ev:
                del self._cancel[session]

    def cancel(self, session: str) -> bool:
        """Ask the session's running grid to stop (it does within one denoising step and restores the weights)."""
        with self._cancel_lock:
            ev = self._cancel.get(session)
        if ev is None:
            return False
        ev.set()
        return True

    def materialize(self, spec: GridSpec) -> GridSpec:
        """Hub ids of checkpoints → files in the Hugging Face cache (bases, ControlNets and CLIP load from ids)."""
        def fetch(source: str, what: str) -> str:
            if Path(source).exists() or not HUB_ID.fullmatch(source):
                return source
            from huggingface_hub import hf_hub_download, snapshot_download

            try:
                if source.count("/") > 1:  # owner/name/path/in/repo.safetensors
                    owner, name, filename = source.split("/", 2)
                    return hf_hub_download(f"{owner}/{name}", filename)
                patterns = ["*.safetensors"] if self.settings.hosted else ["*.safetensors", *(
                    f"*{s}" for s in PICKLE_SUFFIXES)]
                folder = Path(snapshot_download(source, allow_patterns=patterns))
            except Exception as e:  # noqa: BLE001 - offline, gated, missing: all are "cannot download"
                raise refuse(f"{what}: cannot download {source!r} from the Hub ({type(e).__name__}); check the id "
                             "and the network, or give a local file") from None
            files = sorted(f for f in folder.rglob("*") if f.suffix in CHECKPOINT_SUFFIXES)
            if len(files) != 1:
                raise refuse(f"{what}: {source!r} holds {len(files)} checkpoint files; name one as "
                             "owner/name/path/to/file.safetensors")
            return str(files[0])

        obj = replace(spec.object, source=fetch(spec.object.source, "object")) if spec.object else None
        sty = replace(spec.style, source=fetch(spec.style.source, "style")) if spec.style else None
        extra = [replace(e, source=fetch(e.source, e.name)) for e in spec.extra]
        return replace(spec, object=obj, style=sty, extra=extra)

    def compute(self, normalized: Mapping[str, Any], spec: GridSpec, *,
                progress: Callable[[str, int, int], None] | None = None,
                cancel: Callable[[], bool] | None = None, out_dir: Path | None = None) -> Path:
        """Run the grid and write its folder (grid PNGs with the recipe in a text chunk, cells, CSV, YAML, zip)."""
        if progress:
            progress("loading", 0, 1)
        spec = self.materialize(spec)
        result = run_grid(spec, models=self.models, progress=progress, cancel=cancel)
        if progress:
            progress("saving", 0, 1)
        out = out_dir or self._new_run_dir()
        # The grid PNGs carry the run's recipe (tad_grid, written by save) and the request that made it.
        save(result, out, grid_text={"tad_request": json.dumps(normalized, sort_keys=True)})
        (out / "request.json").write_text(json.dumps({"key": request_key(normalized), "request": normalized,
                                                      "timings": result.timings}, indent=1, default=str))
        with zipfile.ZipFile(out / "cells.zip", "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(out.rglob("*")):
                if f.is_file() and f.name != "cells.zip":
                    z.write(f, f.relative_to(out))
        return out

    def _new_run_dir(self) -> Path:
        return new_run_dir(self.runs_dir, self.settings)

    # --- examples ------------------------------------------------------------------------------------------
    def example_rows(self) -> list[dict[str, Any]]:
        """The toy world's examples: name, label and a value for every request field."""
        if self.world is None or not self.world.concepts:
            return []
        d = self.defaults_for(TOY)
        objs = [c.name for c in self.world.concepts if c.kind == "object"]
        stys = [c.name for c in self.world.concepts if c.kind == "style"]
        base = {"base": TOY, "object": d["object"], "style": d["style"], "seeds": "42", "steps": d["steps"],
                "guidance": d["guidance"], "height": d["height"], "width": d["width"], "prompt_template": d["template"],
                "example": d["object"] if d["object"] in self.world.examples else None}
        rows = [{"name": "default", "label": f"{d['object']} × {d['style']}: the 3×3 grid", **base}]
        nets = [k for k in CONTROL_KINDS[1:] if k in self.world.controlnets]
        if nets:
            rows.append({"name": "controls", "label": f"{d['object']} × {d['style']} with {', '.join(nets)}",
                         **base, "controls": ["none", *nets]})
        if len(objs) > 1 and len(stys) > 1:
            rows.append({"name": "second", "label": f"{objs[1]} × {stys[1]}", **base, "object": objs[1],
                         "style": stys[1], "example": objs[1] if objs[1] in self.world.examples else None})
        defaults = {f.name: f.default_factory() if callable(f.default_factory) else f.default
                    for f in fields(GridRequest)}
        return [{**defaults, **row} for row in rows]

    @staticmethod
    def request_of(values: Mapping[str, Any]) -> GridRequest:
        """A GridRequest from widget values keyed by field name (other keys are ignored)."""
        return GridRequest(**{k: v for k, v in values.items() if k in REQUEST_FIELDS})

    def cached_run(self, normalized: Mapping[str, Any]) -> Path | None:
        """A precomputed (assets) or lazily cached (work dir) run folder of exactly this request, if any."""
        if normalized.get("condition") is None:
            return None
        key = request_key(normalized)
        for root in (self.precomputed_dir, self.example_cache):
            if not root.is_dir():
                continue
            for d in root.iterdir():
                meta = d / "request.json"
                if meta.is_file() and json.loads(meta.read_text()).get("key") == key and self._fresh(d):
                    return d
        return None

    def _fresh(self, run_dir: Path) -> bool:
        """Whether the inputs a cached run was made from are unchanged (retrained assets make it stale)."""
        key = str(run_dir)
        if key not in self._fingerprints:
            meta = json.loads((run_dir / "request.json").read_text())
            recorded = meta.get("fingerprint") or {}
            now = self.fingerprint(meta["request"])
            self._fingerprints[key] = recorded == now
            if recorded != now:
                log.warning("cached example %s was made from other model files; ignoring it", run_dir)
        return self._fingerprints[key]

    def fingerprint(self, normalized: Mapping[str, Any]) -> dict[str, str]:
        """sha256 of the model files a toy-world request reads, keyed by their path relative to the assets."""
        if normalized.get("base") != TOY or self.world is None:
            return {"base": str(normalized.get("base"))}
        paths = ["assets:base", *normalized.get("sources", []), *normalized.get("controlnets", [])]
        if normalized.get("clip"):
            paths.append(normalized["clip"])
        out = {}
        for p in paths:
            rp = self.settings.assets / p.removeprefix("assets:") if p.startswith("assets:") else Path(p)
            out[p] = sha256_path(rp) if rp.exists() else "missing"
        return out

    def remember_example(self, normalized: Mapping[str, Any], run_dir: Path) -> None:
        """Lazily cache a run that reproduces one of the examples (later clicks on it load instantly)."""
        key = request_key(normalized)
        if normalized.get("condition") is None or self.cached_run(normalized) is not None:
            return
        examples = []
        for row in self.example_rows():
            try:
                examples.append(request_key(self.build(self.request_of(row))[1]))
            except gr.Error:
                continue
        if key not in examples:
            return
        target = self.example_cache / key[:16]
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(run_dir, target)
        meta = json.loads((target / "request.json").read_text())
        meta["fingerprint"] = self.fingerprint(normalized)
        (target / "request.json").write_text(json.dumps(meta, indent=1, default=str))
        log.info("cached example %s", target)

    # --- outputs -------------------------------------------------------------------------------------------
    def outputs(self, run_dir: Path, cached: bool = False) -> dict[str, Any]:
        """What the UI and the API show for a run folder (fresh or cached)."""
        rows = _read_csv(run_dir / "metrics.csv")
        spec = yaml.safe_load((run_dir / "recipe.yaml").read_text())
        controls = [c["kind"] for c in spec.get("controls") or [{"kind": "none"}]]
        grids = {k: None for k in GRID_TABS}
        for k in controls:
            p = run_dir / f"grid_{k}.png"
            grids[k] = str(p if p.is_file() else run_dir / "grid.png")
        gallery = []
        for r in rows:
            cap = (f"{r['control']} · object λ={_lam(r['object_lambda'])} · style λ={_lam(r['style_lambda'])} · "
                   f"seed {r['seed']}")
            gallery.append((str(run_dir / r["image"]), cap))
        meta = json.loads((run_dir / "request.json").read_text()) if (run_dir / "request.json").is_file() else {}
        took = (meta.get("timings") or {}).get("total")
        n = len(rows)
        how = " — precomputed, loaded instantly" if cached else (f" in {float(took):.1f} s" if took else "")
        words = {k: (spec.get(k) or {}).get("name", "") for k in ("object", "style")}
        prompt = str(spec.get("prompt_template", "")).format(**words)
        seeds = ", ".join(str(s) for s in spec.get("seeds", []))
        status = f"**{len(controls)} grid(s), {n} image(s)**{how} · prompt “{prompt}” · seeds {seeds}"
        return {"grids": grids, "gallery": gallery, "table": summary_table(rows, spec),
                "metrics_note": metrics_note(spec), "files": {
                    "grid": str(run_dir / "grid.png"), "zip": str(run_dir / "cells.zip"),
                    "csv": str(run_dir / "metrics.csv"), "recipe": str(run_dir / "recipe.yaml")},
                "status": status, "controls": controls}

    # --- recipes -------------------------------------------------------------------------------------------
    def recipe_spec(self, path: str) -> tuple[GridSpec, dict[str, Any]]:
        """A GridSpec from an uploaded recipe.yaml (or a run's zip with its conditions), every reference and
        number checked as for widget values."""
        p = Path(path)
        if p.suffix.lower() not in RECIPE_SUFFIXES:
            raise refuse(f"recipe: upload the recipe.yaml (or cells.zip) of a run, not {p.suffix or 'this file'}")
        if p.stat().st_size > 50 * 2**20:
            raise refuse("recipe: the file is larger than 50 MB")
        with user_errors("reading the recipe"):
            folder = self._unzip_recipe(p) if p.suffix.lower() == ".zip" else None
            text = (folder / "recipe.yaml").read_text(errors="replace") if folder else p.read_text(errors="replace")
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise refuse(f"recipe: not valid YAML ({str(e).splitlines()[0]})") from None
            for c in (data.get("controls") or []) if isinstance(data, dict) else []:
                # Condition images come only from the run's zip: a path must not read files of this server.
                img = c.get("image") if isinstance(c, dict) else None
                if img and (folder is None or not re.fullmatch(r"conditions/\w+\.png", str(img))):
                    raise refuse("recipe: a controlled run's conditions travel in its cells.zip; upload the zip "
                                 "(a recipe.yaml alone cannot carry the condition images)")
            spec = GridSpec.from_dict(data, base_dir=folder, origin="recipe")
        return self._check_spec(spec)

    def _unzip_recipe(self, p: Path) -> Path:
        out = self.settings.work_dir / "recipes" / uuid.uuid4().hex[:12]
        out.mkdir(parents=True)
        with zipfile.ZipFile(p) as z:
            wanted = [n for n in z.namelist() if n == "recipe.yaml" or re.fullmatch(r"conditions/\w+\.png", n)]
            if "recipe.yaml" not in wanted:
                raise refuse("recipe: the zip has no recipe.yaml at its top level")
            for n in wanted:  # fixed names only: nothing in the archive chooses where files go
                if z.getinfo(n).file_size > 20 * 2**20:
                    raise refuse(f"recipe: {n} in the zip is too large")
                (out / n).parent.mkdir(parents=True, exist_ok=True)
                (out / n).write_bytes(z.read(n))
        return out

    def _check_spec(self, spec: GridSpec) -> tuple[GridSpec, dict[str, Any]]:
        s = self.settings
        base = spec.base
        toy = self.world is not None and Path(base).resolve() == Path(self.world.base).resolve()
        if not toy and base not in {b.source for b in self.catalog.bases.values()}:
            self.check_source(base, "recipe base")
        for c in [spec.object, spec.style, *spec.extra]:
            if c is not None:
                self.check_source(c.source, f"recipe {c.name}")
        allowed_clip = {self.world.clip if self.world else None, *self.catalog.clip.values(), None}
        if spec.clip not in allowed_clip:
            self.check_source(spec.clip, "recipe clip")
        nets = {m for fam in self.catalog.controlnets.values() for v in fam.values() for m in v.values()}
        nets |= set(self.world.controlnets.values()) if self.world else set()
        for c in spec.controls:
            if c.model and c.model not in nets:
                self.check_source(c.model, f"recipe {c.kind} ControlNet")
        for lam in (*spec.object_lambdas, *spec.style_lambdas, *(e.lam for e in spec.extra)):
            self._lambda(lam, "recipe λ")
        self._int(spec.steps, "recipe steps", 1, s.max_steps)
        self._side(spec.height, "recipe height")
        self._side(spec.width, "recipe width")
        if len(spec.seeds) > s.max_seeds:
            raise refuse(f"recipe seeds: at most {s.max_seeds} (TAD_MAX_SEEDS)")
        if spec.n_images > s.max_images:
            raise refuse(f"recipe: {spec.n_images} images is over this app's limit of {s.max_images}")
        normalized = {"recipe": spec.to_dict(image_paths={c.kind: "-" for c in spec.controls}), "condition": None}
        return spec, normalized

    def recipe_fields(self, spec: GridSpec) -> dict[str, Any]:
        """Widget values that show an uploaded recipe (what can be shown; the run itself uses the recipe)."""
        lam = lambda t, i: float(t[i]) if len(t) > i else 0.0  # noqa: E731
        return {"controls": [c.kind for c in spec.controls], "seeds": ", ".join(str(x) for x in spec.seeds),
                "steps": spec.steps, "guidance": spec.guidance, "height": spec.height, "width": spec.width,
                "prompt_template": spec.prompt_template, "object_ablate": lam(spec.object_lambdas, 0),
                "object_enhance": lam(spec.object_lambdas, 2), "style_ablate": lam(spec.style_lambdas, 0),
                "style_enhance": lam(spec.style_lambdas, 2), "merge_method": spec.merge}


# --- helpers -----------------------------------------------------------------------------------------------

def request_key(normalized: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(normalized, sort_keys=True, default=str).encode()).hexdigest()


def _short(ref: str, n: int = 48) -> str:
    ref = str(ref)
    return ref if len(ref) <= n else "…" + ref[-(n - 1):]


def _lam(v: Any) -> str:
    if v in (None, ""):
        return "–"
    v = float(v)
    return "0" if v == 0 else f"{v:+g}".replace("-", "−")


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _f(x: Any) -> float | None:
    return None if x in (None, "") else float(x)


def summary_table(rows: Sequence[Mapping[str, Any]], spec: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics per cell (means over seeds) as a Dataframe value {headers, data}."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["control"], r["row"], r["col"]), []).append(r)
    obj = (spec.get("object") or {}).get("name", "object")
    sty = (spec.get("style") or {}).get("name", "style")
    headers = ["control", "object λ", "style λ", f"CLIP score ‘{obj}’", f"CLIP acc ‘{obj}’",
               f"CLIP score ‘{sty}’", f"CLIP acc ‘{sty}’", "seeds"]
    data = []
    for (control, _, _), rs in groups.items():
        row: list[Any] = [control, _lam(rs[0]["object_lambda"]), _lam(rs[0]["style_lambda"])]
        for m in ("clip_score_object", "clip_accuracy_object", "clip_score_style", "clip_accuracy_style"):
            vals = [v for v in (_f(r[m]) for r in rs) if v is not None]
            row.append(round(sum(vals) / len(vals), 3) if vals else "–")
        row.append(len(rs))
        data.append(row)
    return {"headers": headers, "data": data}


def metrics_note(spec: Mapping[str, Any]) -> str:
    clip = spec.get("clip")
    if not clip:
        return "CLIP metrics off (no CLIP model for this base, or unticked)."
    return (f"`{FORMULA}`  \nScale {SCORE_SCALE:g} (Hessel et al.'s CLIPScore), bare concept strings as in Kumari et al.'s "
            f"`evaluate.py`; accuracy per cell = share of its seeds where the target beats the anchor. "
            f"CLIP model: `{_short(clip, 80)}`.")


def new_run_dir(root: Path, settings: Settings, prefix: str = "") -> Path:
    """A fresh, uniquely named folder in ``root``, after bounding the folders there: those older than the TTL
    go, then the oldest beyond ``max_runs`` (grid runs and research views alike)."""
    root.mkdir(parents=True, exist_ok=True)
    dirs = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
    now = time.time()
    for i, d in enumerate(dirs):
        if now - d.stat().st_mtime > settings.cache_ttl or len(dirs) - i >= settings.max_runs:
            shutil.rmtree(d, ignore_errors=True)
    d = root / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    d.mkdir(parents=True)
    return d
