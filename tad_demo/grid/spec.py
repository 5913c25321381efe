"""What a grid is: :class:`GridSpec` (validated, YAML round-trip) and the default spec of a world folder.

    spec = world_spec("assets/toyworld", object="smiley", style="striped", controls=("none", "canny"))
    spec.validate()                  # GridError naming the first bad field
    GridSpec.load("out/recipe.yaml") # a run's recipe.yaml is a spec

The grid's contract:
* rows = object axis, columns = style axis, one grid per control; λ > 0 ablates, 0 is the base, λ < 0 enhances;
* every cell uses the same seeds, hence the same initial latents, and the same prompt: the template filled with
  the *target* concept names (the weights change, the prompt doesn't);
* extra vectors (multi-concept addition) apply to every cell with their own λ.
"""

from __future__ import annotations

import hashlib
import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from ..core.errors import ControlError, GridError, TadError, WorldError
from ..core.limits import HARD
from ..core.merge_methods import get_method
from ..core.recipe import VECTOR_KINDS, check_hashes, sha256_path
from ..core.safe_yaml import load_yaml
from ..core.scopes import check_scope
from ..core.world import SLOTS, Concept, World, default_world
from ..runtime.control import CONTROL_KINDS, RESIZE_MODES, example_condition

GRID_VERSION = 1


@dataclass
class ExtraVector:
    """A vector applied to every cell with its own λ (multi-concept addition)."""

    name: str
    source: str
    lam: float = 1.0
    format: str = "ablation"  # recipe.VECTOR_KINDS: how the checkpoint is read


@dataclass
class ControlSpec:
    """One control layer: ``kind`` in CONTROL_KINDS, a ready condition ``image`` (PIL) and the ControlNet ``model``."""

    kind: str = "none"
    image: Image.Image | None = None
    model: str | None = None
    scale: float = 1.0
    image_path: str | None = None  # where the condition came from (YAML round-trip, provenance)

    @property
    def name(self) -> str:
        return self.kind


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_in(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


@dataclass
class GridSpec:
    """Everything that determines a grid's images and metrics (YAML round-trip: ``to_yaml``/``from_yaml``).

    The axis concepts are :class:`~tad_demo.core.world.Concept`s (name = the prompt word, anchor, checkpoint
    ``source`` and its ``format``); without one, an axis has the single value "none".
    """

    base: str
    object: Concept | None = None
    style: Concept | None = None
    object_lambdas: tuple[float, ...] = (1.0, 0.0, -1.0)
    style_lambdas: tuple[float, ...] = (1.0, 0.0, -1.0)
    extra: list[ExtraVector] = field(default_factory=list)
    merge: str = "linear"
    merge_params: dict[str, Any] = field(default_factory=dict)
    scope: str | None = None
    controls: list[ControlSpec] = field(default_factory=lambda: [ControlSpec("none")])
    control_resize: str = "resize"
    prompt_template: str = "a {object} in {style} style"
    seeds: list[int] = field(default_factory=lambda: [42])
    steps: int = 20
    guidance: float = 5.0
    height: int = 64
    width: int = 64
    clip: str | None = None
    hashes: dict[str, str] = field(default_factory=dict)

    # --- derived ---------------------------------------------------------------------------------------
    @property
    def row_lambdas(self) -> list[float | None]:
        return [float(x) for x in self.object_lambdas] if self.object else [None]

    @property
    def col_lambdas(self) -> list[float | None]:
        return [float(x) for x in self.style_lambdas] if self.style else [None]

    @property
    def prompt(self) -> str:
        """The template filled with the target names: one prompt for every cell."""
        fill = {"object": self.object.name if self.object else "", "style": self.style.name if self.style else ""}
        return self.prompt_template.format(**fill).strip()

    @property
    def n_images(self) -> int:
        return len(self.row_lambdas) * len(self.col_lambdas) * len(self.seeds) * len(self.controls)

    def vector_names(self) -> list[str]:
        return ([self.object.name] if self.object else []) + ([self.style.name] if self.style else []) + \
            [e.name for e in self.extra]

    # --- validation ------------------------------------------------------------------------------------
    def validate(self) -> GridSpec:
        """Raise GridError on the first problem (bounds: ``core.limits.HARD``); returns self so calls chain."""
        if not self.base or not isinstance(self.base, str):
            raise GridError("base: a diffusers folder, a .safetensors file or a Hub id is required")
        self._validate_vectors()
        self._validate_template()
        self._validate_controls()
        self._validate_sampling()
        if self.clip is not None and (not isinstance(self.clip, str) or not self.clip):
            raise GridError("clip: a CLIP model spec (folder, NAME/PRETRAINED or NAME:FILE) or None for no metrics")
        if self.scope is not None:
            try:
                check_scope(self.scope)
            except TadError as e:
                raise GridError(str(e)) from None
        check_hashes(self.hashes, "grid", GridError)
        return self

    def _validate_vectors(self) -> None:
        lam_max = HARD.lambda_
        for axis, concept, lams in (("object", self.object, self.object_lambdas),
                                    ("style", self.style, self.style_lambdas)):
            if concept is None:
                continue
            if not isinstance(concept, Concept):
                raise GridError(f"{axis}: expected a Concept(name, kind, anchor, source), got {type(concept).__name__}")
            for f in ("name", "anchor", "source"):
                if not isinstance(getattr(concept, f), str) or not getattr(concept, f).strip():
                    raise GridError(f"{axis}.{f} is empty; every axis concept needs a name, an anchor and a "
                                    "checkpoint source")
            for f in ("name", "anchor"):
                if len(getattr(concept, f)) > HARD.name:
                    raise GridError(f"{axis}.{f} is {len(getattr(concept, f))} characters; at most {HARD.name}")
            if concept.format not in VECTOR_KINDS:
                raise GridError(f"{axis}.kind {concept.format!r} is not one of {', '.join(VECTOR_KINDS)}")
            if not lams or len(lams) > HARD.axis:
                raise GridError(f"{axis}_lambdas: give 1 to {HARD.axis} values, got {len(lams or ())}")
            for lam in lams:
                if not _finite(lam) or abs(lam) > lam_max:
                    raise GridError(f"{axis}_lambdas: {lam!r} is not a number in [-{lam_max:g}, {lam_max:g}] "
                                    "(λ>0 ablates, 0 is the base, λ<0 enhances)")
        for i, e in enumerate(self.extra):
            if not isinstance(e, ExtraVector) or not e.name or not e.source:
                raise GridError(f"extra[{i}]: needs a name and a source")
            if len(e.name) > HARD.name:
                raise GridError(f"extra[{i}].name is {len(e.name)} characters; at most {HARD.name}")
            if e.format not in VECTOR_KINDS:
                raise GridError(f"extra[{i}] ({e.name}).kind {e.format!r} is not one of {', '.join(VECTOR_KINDS)}")
            if not _finite(e.lam) or abs(e.lam) > lam_max:
                raise GridError(f"extra[{i}] ({e.name}): λ {e.lam!r} is not a number in [-{lam_max:g}, {lam_max:g}]")
        names = self.vector_names()
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise GridError(f"concept/vector name(s) {dup} used twice; give every vector its own name")
        try:
            get_method(self.merge).validate(dict(self.merge_params))
        except ValueError as e:
            raise GridError(f"merge: {e}") from None

    def _validate_template(self) -> None:
        if not isinstance(self.prompt_template, str) or not self.prompt_template.strip():
            raise GridError("prompt_template is empty; write a prompt (slots {object} and {style} are optional)")
        if len(self.prompt_template) > HARD.template:
            raise GridError(f"prompt_template is {len(self.prompt_template)} characters; at most {HARD.template}")
        try:
            parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(self.prompt_template)
                      if f is not None]
        except ValueError as e:
            raise GridError(f"prompt_template: {e} (write literal braces as {{{{ and }}}})") from None
        for f, spec, conv in parsed:
            if spec or conv:  # {object:>10000000} would pad the prompt to ten million characters
                raise GridError(f"prompt_template: write the slot as {{{f}}}, without a format or conversion "
                                f"({{{f}{'!' + conv if conv else ''}{':' + spec if spec else ''}}})")
        for f, _, _ in parsed:
            if f not in SLOTS:
                raise GridError(f"prompt_template: unknown slot {{{f}}}; the slots are {{object}} and {{style}}")
            if getattr(self, f) is None:
                raise GridError(f"prompt_template uses {{{f}}} but no {f} concept is selected; pick one or write "
                                f"the {f} into the prompt")

    def _validate_controls(self) -> None:
        if not self.controls:
            raise GridError("controls: give at least one (\"none\" for no control)")
        if self.control_resize not in RESIZE_MODES:
            raise GridError(f"control_resize {self.control_resize!r} is not one of {', '.join(RESIZE_MODES)}")
        kinds = [c.kind for c in self.controls]
        max_scale = HARD.conditioning_scale
        for c in self.controls:
            if c.kind not in CONTROL_KINDS:
                raise GridError(f"control {c.kind!r} is not one of {', '.join(CONTROL_KINDS)}")
            if kinds.count(c.kind) > 1:
                raise GridError(f"control {c.kind!r} is listed twice; one grid per control")
            if c.kind == "none":
                continue
            if c.image is None:
                raise GridError(f"control {c.kind!r} needs a condition image: upload one, pick an example or draw "
                                "a sketch")
            if not isinstance(c.image, Image.Image):
                raise GridError(f"control {c.kind!r}: the condition must be a PIL image, got "
                                f"{type(c.image).__name__}")
            if not c.model:
                raise GridError(f"control {c.kind!r} needs a ControlNet model (folder or Hub id)")
            if not _finite(c.scale) or not 0 <= c.scale <= max_scale:
                raise GridError(f"control {c.kind!r}: conditioning scale {c.scale!r} is not a number in "
                                f"[0, {max_scale:g}]")

    def _validate_sampling(self) -> None:
        if not self.seeds:
            raise GridError("seeds: give at least one seed")
        for s in self.seeds:
            if not _int_in(s, 0, HARD.seed):
                raise GridError(f"seeds: {s!r} is not an integer in [0, 2^63)")
        if not _int_in(self.steps, 1, HARD.steps):
            raise GridError(f"steps: {self.steps!r} is not an integer in 1..{HARD.steps}")
        if not _finite(self.guidance) or not 0 <= self.guidance <= HARD.guidance:
            raise GridError(f"guidance: {self.guidance!r} is not a number in [0, {HARD.guidance:g}]")
        for f in ("height", "width"):
            v = getattr(self, f)
            if not _int_in(v, HARD.min_side, HARD.max_side) or v % HARD.side_multiple:
                raise GridError(f"{f}: {v!r} is not a multiple of {HARD.side_multiple} in "
                                f"{HARD.min_side}..{HARD.max_side}")
        if self.n_images > HARD.images:
            raise GridError(f"the grid asks for {self.n_images} images (cells × seeds × controls); the limit is "
                            f"{HARD.images}: use fewer seeds, λ values or controls")

    # --- YAML ------------------------------------------------------------------------------------------
    def to_dict(self, image_paths: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A plain dict; condition images are referenced by path (``image_paths[kind]`` or ``image_path``).
        A concept's and a vector's ``kind`` key in the YAML is how its checkpoint is read (``format``)."""
        def concept(c: Concept | None):
            return None if c is None else {"name": c.name, "anchor": c.anchor, "source": c.source, "kind": c.format}

        controls = []
        for c in self.controls:
            d: dict[str, Any] = {"kind": c.kind}
            if c.kind != "none":
                d.update(model=c.model, scale=float(c.scale),
                         image=(image_paths or {}).get(c.kind, c.image_path))
            controls.append(d)
        return {
            "tad_grid": GRID_VERSION,
            "base": self.base,
            "object": concept(self.object),
            "style": concept(self.style),
            "object_lambdas": [float(x) for x in self.object_lambdas],
            "style_lambdas": [float(x) for x in self.style_lambdas],
            "extra": [{"name": e.name, "source": e.source, "kind": e.format, "lambda": float(e.lam)}
                      for e in self.extra],
            "merge": {"method": self.merge, "params": dict(self.merge_params)},
            "scope": self.scope,
            "controls": controls,
            "control_resize": self.control_resize,
            "prompt_template": self.prompt_template,
            "seeds": [int(s) for s in self.seeds],
            "steps": int(self.steps),
            "guidance": float(self.guidance),
            "height": int(self.height),
            "width": int(self.width),
            "clip": self.clip,
            "hashes": dict(self.hashes),
        }

    def to_yaml(self, image_paths: Mapping[str, str] | None = None) -> str:
        return yaml.safe_dump(self.to_dict(image_paths), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: str | Path | None = None, origin: str = "grid") -> GridSpec:
        """Read a dict written by ``to_dict``; relative condition image paths are resolved against ``base_dir``."""
        if not isinstance(d, Mapping):
            raise GridError(f"{origin}: expected a mapping at the top level, got {type(d).__name__}")
        if d.get("tad_grid") != GRID_VERSION:
            raise GridError(f"{origin}: missing or unsupported 'tad_grid: {GRID_VERSION}' version header "
                            f"(found {d.get('tad_grid')!r})")
        known = set(cls(base="x").to_dict())
        unknown = set(d) - known
        if unknown:
            raise GridError(f"{origin}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")

        def concept(key: str) -> Concept | None:
            c = d.get(key)
            if c is None:
                return None
            if not isinstance(c, Mapping) or not {"name", "anchor", "source"} <= set(c):
                raise GridError(f"{origin}: {key} needs name, anchor and source")
            return Concept(str(c["name"]), key, str(c["anchor"]), str(c["source"]), str(c.get("kind", "ablation")))

        merge = _typed(d, "merge", Mapping, origin) or {}
        params = _typed(merge, "params", Mapping, origin, "merge.params") or {}
        extra_items = _typed(d, "extra", list, origin) or []
        for i, e in enumerate(extra_items):
            if not isinstance(e, Mapping) or "source" not in e:
                raise GridError(f"{origin}: extra[{i}] needs a mapping with at least 'source'")
        extra = [ExtraVector(str(e.get("name") or Path(str(e["source"])).stem), str(e["source"]),
                             e.get("lambda", 1.0), str(e.get("kind", "ablation"))) for e in extra_items]
        defaults = cls(base="x")
        lambdas = {k: tuple(_typed(d, k, list, origin) or getattr(defaults, k))
                   for k in ("object_lambdas", "style_lambdas")}
        spec = cls(
            base=str(d.get("base") or ""), object=concept("object"), style=concept("style"), **lambdas,
            extra=extra, merge=str(merge.get("method", "linear")), merge_params=dict(params),
            scope=d.get("scope"), controls=_controls_from(d, base_dir, origin),
            control_resize=d.get("control_resize", "resize"),
            prompt_template=d.get("prompt_template", defaults.prompt_template),
            seeds=list(_typed(d, "seeds", list, origin) or defaults.seeds), steps=d.get("steps", defaults.steps),
            guidance=d.get("guidance", defaults.guidance), height=d.get("height", defaults.height),
            width=d.get("width", defaults.width), clip=d.get("clip"),
            hashes=check_hashes(d.get("hashes"), origin, GridError))
        return spec.validate()

    @classmethod
    def from_yaml(cls, text: str, base_dir: str | Path | None = None, origin: str = "grid") -> GridSpec:
        return cls.from_dict(load_yaml(text, origin, error=GridError), base_dir, origin)

    @classmethod
    def load(cls, path: str | Path) -> GridSpec:
        p = Path(path)
        if not p.is_file():
            raise GridError(f"grid config {str(p)!r} not found")
        return cls.from_yaml(p.read_text(), base_dir=p.parent, origin=str(p))

    # --- provenance ------------------------------------------------------------------------------------
    def inputs(self) -> list[str]:
        """Every file/folder/Hub id the grid reads."""
        out = [self.base] + [c.source for c in (self.object, self.style) if c] + [e.source for e in self.extra]
        out += [c.model for c in self.controls if c.model]
        if self.clip:
            out.append(self.clip.removeprefix("local-dir:"))
        return list(dict.fromkeys(out))

    def with_hashes(self) -> GridSpec:
        """A copy with the sha256 of every local input and of each condition image's pixels."""
        hashes = {}
        for src in self.inputs():
            p = Path(src)
            hashes[src] = sha256_path(p) if p.exists() else "not-a-local-path"
        for c in self.controls:
            if c.image is not None:
                im = c.image.convert("RGB")
                h = hashlib.sha256(f"{im.size[0]}x{im.size[1]}".encode() + im.tobytes()).hexdigest()
                hashes[f"condition:{c.kind}"] = h
        return replace(self, hashes=hashes)


def _typed(d: Mapping[str, Any], key: str, kind: type, origin: str, name: str | None = None) -> Any:
    """``d[key]`` when it is None/absent or of ``kind`` (a mapping, a list); a one-line GridError otherwise."""
    v = d.get(key)
    if v is not None and not isinstance(v, kind):
        noun = "a mapping" if kind is Mapping else "a list"
        raise GridError(f"{origin}: {name or key} must be {noun}, got {type(v).__name__}")
    return v


def _controls_from(d: Mapping[str, Any], base_dir: str | Path | None, origin: str) -> list[ControlSpec]:
    controls = []
    for i, c in enumerate(_typed(d, "controls", list, origin) or [{"kind": "none"}]):
        if not isinstance(c, Mapping) or "kind" not in c:
            raise GridError(f"{origin}: controls[{i}] needs a kind")
        img, path = None, c.get("image")
        if path:
            p = Path(path) if Path(path).is_absolute() or base_dir is None else Path(base_dir) / path
            if not p.is_file():
                raise GridError(f"{origin}: controls[{i}] condition image {str(p)!r} not found")
            img = _condition_image(p, f"{origin}: controls[{i}] condition image")
        controls.append(ControlSpec(kind=str(c["kind"]), image=img, model=c.get("model"), scale=c.get("scale", 1.0),
                                    image_path=path))
    return controls


def _condition_image(path: Path, what: str) -> Image.Image:
    """An RGB image from a file, refused (one line) when it is not an image or larger than
    ``HARD.condition_side`` on a side — checked from the header, before any pixel is decoded."""
    try:
        with Image.open(path) as im:
            if max(im.size) > HARD.condition_side:
                raise GridError(f"{what} is {im.size[0]}×{im.size[1]} px; at most {HARD.condition_side} px a side")
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, GridError):
            raise
        raise GridError(f"{what} is not a readable image ({type(e).__name__})") from None


# --- the default spec of a world folder ------------------------------------------------------------------------

def _world(folder: str | Path | World | None) -> World:
    if isinstance(folder, World):
        return folder
    try:
        return World.load(Path(folder) if folder is not None else default_world())
    except WorldError as e:
        raise GridError(str(e)) from None


def world_control(kind: str, world: str | Path | World | None = None, *, example: str | None = None,
                  size: int = 64, scale: float = 1.0) -> ControlSpec:
    """A control layer of a world: its ControlNet and the ready condition map of one of its example scenes
    (``example``, else the first example), resized to ``size``."""
    if kind == "none":
        return ControlSpec("none")
    if kind not in CONTROL_KINDS:
        raise GridError(f"control {kind!r} is not one of {', '.join(CONTROL_KINDS)}")
    w = _world(world)
    model = w.root / w.controlnets.get(kind, f"controlnet/{kind}")
    if not (model / "config.json").is_file():
        raise GridError(f"the world has no {kind} ControlNet at {model}: train it (the toy world: "
                        f"`python -m tad_demo.toyworld.train_controlnet --kinds {kind}`)")
    names = w.example_names()
    if not names:
        raise GridError(f"the world at {w.root} has no example conditions (examples/examples.json); give the "
                        "condition image in a grid config")
    name = example if example in names else names[0]
    try:
        image = example_condition(w, kind, name)
    except ControlError as e:
        raise GridError(str(e)) from None
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return ControlSpec(kind, image=image, model=str(model), scale=scale)


def world_spec(world: str | Path | World | None = None, object: str | None = "smiley",
               style: str | None = "striped", controls: Sequence[str] = ("none",), *, seeds: Sequence[int] = (42,),
               lambdas: Sequence[float] = (1.0, 0.0, -1.0), steps: int | None = None,
               conditioning_scale: float = 1.0) -> GridSpec:
    """A world's 3×3 grid of two of its concepts (sampling defaults from world.json; seed 42; example conditions).

    A missing axis (``object=None`` or ``style=None``) makes a one-axis grid; its slot in the prompt gets the
    anchor of the world's first concept of that kind."""
    w = _world(world)

    def concept(name: str | None, kind: str) -> Concept | None:
        if name is None:
            return None
        c = next((c for c in w.concepts if c.name == name and c.kind == kind), None)
        if c is None:
            known = ", ".join(c.name for c in w.concepts if c.kind == kind) or "none"
            raise GridError(f"the world has no {kind} concept {name!r}; available: {known}")
        return c

    template = w.prompt_templates[0] if w.prompt_templates else "a {object} in {style} style"
    for slot, name in (("object", object), ("style", style)):
        if name is None:  # the neutral word: the anchor of the world's first concept of that kind
            neutral = next((c.anchor for c in w.concepts if c.kind == slot), slot)
            template = template.replace("{" + slot + "}", neutral)
    ctl_specs = [world_control(k, w, example=object, size=w.width, scale=conditioning_scale) for k in controls]
    clip = w.clip_path
    return GridSpec(
        base=str(w.base_path), object=concept(object, "object"), style=concept(style, "style"),
        object_lambdas=tuple(lambdas), style_lambdas=tuple(lambdas), controls=ctl_specs,
        prompt_template=template, seeds=[int(s) for s in seeds], steps=int(steps if steps is not None else w.steps),
        guidance=w.guidance, height=w.height, width=w.width, clip=str(clip) if clip else None,
    ).validate()
