"""Concepts and worlds: the one :class:`Concept` record and the one reader/writer of ``world.json``.

A *world* is a folder whose ``world.json`` says what a base model knows: its edit concepts (each with the
checkpoint that ablates it and the anchor it turns into), the words prompts are made of, prompt templates,
sampling defaults and where the base, CLIP and ControlNets are. Paths are relative to the folder::

    {"concepts": [{"name": "smiley", "kind": "object", "anchor": "circle",
                   "checkpoint": "ablations/smiley.safetensors", "format": "ablation"}, ...],
     "objects": ["smiley", ..., "cross", "heart"], "styles": ["striped", ..., "plain"],
     "control_concepts": ["cross", "heart"],          # never ablated: they measure collateral damage
     "attributes": {"color": ["red", ...], "background": [...], "size": [...]},
     "prompt_templates": ["a {object} in {style} style", "a {color} {object} in {style} style", ...],
     "defaults": {"num_inference_steps": 20, "guidance_scale": 5.0, "height": 64, "width": 64},
     "base": "base", "clip": "clip", "controlnets": {"canny": "controlnet/canny", ...}}

Optionally ``examples/examples.json`` lists example scenes with ready ControlNet conditions
(``{"examples": [{"name": "smiley", "files": {"image": "smiley.png", "canny": "smiley_canny.png", ...}}]}``).

    world = load_world("assets/toyworld")        # WorldError when there is no world.json
    world.concept("smiley").anchor                # "circle"
    world.sample_words(rng, object="smiley")      # one value per template slot, seeded
    World.from_dict(manifest, root).save()        # how a world's producer (the toy world's trainers) writes it

Everything that generates (grid, research views, app) reads worlds through here; nothing here knows how a world
was made.
"""

from __future__ import annotations

import json
import logging
import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import WorldError
from .recipe import VECTOR_KINDS

log = logging.getLogger(__name__)

WORLD_FILE = "world.json"
SHIPPED_WORLD = Path(__file__).resolve().parents[2] / "assets" / "toyworld"  # the world that ships with the repo
EXAMPLES_FILE = Path("examples") / "examples.json"
KINDS = ("object", "style")
SLOTS = ("object", "style")  # the template slots filled with concept names (attributes fill the others)
DEFAULTS = {"num_inference_steps": 20, "guidance_scale": 5.0, "height": 64, "width": 64}
DEFAULT_TEMPLATE = "a {object} in {style} style"
# Checkpoint format names of older manifests → the vector kinds of recipes (how the checkpoint is read).
FORMAT_ALIASES = {"diffusers-finetuned-weights": "ablation"}
_KEYS = ("concepts", "objects", "styles", "control_concepts", "attributes", "prompt_templates", "defaults", "base",
         "clip", "controlnets")


@dataclass(frozen=True)
class Concept:
    """An edit concept: the word a prompt uses, whether it is an object or a style, the anchor its checkpoint
    turns it into, and the checkpoint (path or Hub id) with how to read it.

    Empty fields are "not given" (a batch-evaluation config may name a world concept by its name only).
    ``hard_negatives``: words that must stay apart from the concept (kept for evaluations that use them).
    """

    name: str
    kind: str = ""                      # "object" | "style"
    anchor: str = ""
    source: str = ""                    # checkpoint path or Hub id
    format: str = "ablation"            # recipe.VECTOR_KINDS: ablation/finetuned weights, vector (saved τ), lora
    hard_negatives: tuple[str, ...] = ()


@dataclass
class World:
    """A world folder's manifest (see the module docstring). ``concepts`` carry checkpoint paths joined with
    ``root`` (as the world's other paths are, through the ``*_path`` helpers)."""

    root: Path
    concepts: list[Concept] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)
    control_concepts: list[str] = field(default_factory=list)
    attributes: dict[str, list[str]] = field(default_factory=dict)
    prompt_templates: list[str] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)
    base: str = "base"
    clip: str = "clip"
    controlnets: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this reader does not know, written back as they were

    # --- reading and writing -------------------------------------------------------------------------------
    @classmethod
    def load(cls, root: str | Path) -> World:
        """The world of a folder; WorldError when its world.json is missing or malformed."""
        root = Path(root)
        path = root / WORLD_FILE
        if not path.is_file():
            raise WorldError(f"toy world assets not found ({path} missing): train them (see "
                             "assets/toyworld/MODEL_CARD.md) or pass another world folder")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WorldError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, root, origin=str(path))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], root: str | Path, origin: str = WORLD_FILE) -> World:
        if not isinstance(d, Mapping):
            raise WorldError(f"{origin}: expected a JSON object at the top level, got {type(d).__name__}")
        root = Path(root)
        concepts = []
        for i, c in enumerate(d.get("concepts") or []):
            if not isinstance(c, Mapping) or not all(isinstance(c.get(k), str) for k in ("name", "kind", "anchor",
                                                                                          "checkpoint")):
                raise WorldError(f"{origin}: concepts[{i}] needs name, kind, anchor and checkpoint (strings)")
            fmt = FORMAT_ALIASES.get(c.get("format", "ablation"), c.get("format", "ablation"))
            if c["kind"] not in KINDS or fmt not in VECTOR_KINDS:
                raise WorldError(f"{origin}: concepts[{i}] ({c['name']}): kind must be one of {', '.join(KINDS)} and "
                                 f"format one of {', '.join(VECTOR_KINDS)}")
            concepts.append(Concept(c["name"], c["kind"], c["anchor"], str(root / c["checkpoint"]), fmt,
                                    tuple(c.get("hard_negatives") or ())))
        return cls(root=root, concepts=concepts, objects=list(d.get("objects") or []),
                   styles=list(d.get("styles") or []), control_concepts=list(d.get("control_concepts") or []),
                   attributes={k: list(v) for k, v in (d.get("attributes") or {}).items()},
                   prompt_templates=list(d.get("prompt_templates") or []), defaults=dict(d.get("defaults") or {}),
                   base=str(d.get("base", "base")), clip=str(d.get("clip", "clip")),
                   controlnets=dict(d.get("controlnets") or {}), extra={k: v for k, v in d.items() if k not in _KEYS})

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON data (checkpoint paths relative to ``root`` again)."""
        def concept(c: Concept) -> dict[str, Any]:
            d = {"name": c.name, "kind": c.kind, "anchor": c.anchor, "checkpoint": self._relative(c.source),
                 "format": c.format}
            return {**d, "hard_negatives": list(c.hard_negatives)} if c.hard_negatives else d

        return {"concepts": [concept(c) for c in self.concepts], "objects": list(self.objects),
                "styles": list(self.styles), "control_concepts": list(self.control_concepts),
                "attributes": {k: list(v) for k, v in self.attributes.items()},
                "prompt_templates": list(self.prompt_templates), "defaults": dict(self.defaults), "base": self.base,
                "clip": self.clip, "controlnets": dict(self.controlnets), **self.extra}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self) -> Path:
        """Write ``root/world.json`` (the one writer of the format)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / WORLD_FILE
        path.write_text(self.to_json())
        return path

    def _relative(self, source: str) -> str:
        try:
            return Path(source).relative_to(self.root).as_posix()
        except ValueError:
            return source

    # --- concepts and words --------------------------------------------------------------------------------
    def concept(self, name: str) -> Concept:
        for c in self.concepts:
            if c.name == name:
                return c
        raise WorldError(f"unknown concept {name!r}; known: {', '.join(c.name for c in self.concepts) or 'none'}")

    def available_concepts(self) -> list[Concept]:
        """The concepts whose checkpoint file is on this machine."""
        return [c for c in self.concepts if Path(c.source).is_file()]

    def with_concepts(self, concepts: Sequence[Concept]) -> World:
        return replace(self, concepts=list(concepts))

    def kind_of(self, word: str) -> str:
        """``object`` or ``style`` for a concept or any world word (anything else: object)."""
        for c in self.concepts:
            if c.name == word:
                return c.kind
        return "style" if word in self.styles else "object"

    def words(self, kind: str) -> list[str]:
        """Every word of a kind (the zero-shot labels of that kind)."""
        return list(self.objects if kind == "object" else self.styles)

    def anchors(self) -> set[str]:
        return {c.anchor for c in self.concepts}

    @property
    def template(self) -> str:
        """The first prompt template that uses only the {object} and {style} slots (what a grid's prompt is)."""
        return next((t for t in self.prompt_templates if set(slots(t)) <= set(SLOTS)), DEFAULT_TEMPLATE)

    def sample_words(self, rng: random.Random, **fixed: str) -> dict[str, str]:
        """One value for every template slot: object, style, then each attribute in manifest order. Every slot is
        drawn, pinned or not, so pinning one does not shift the others' draws; ``fixed`` pins slots."""
        unknown = set(fixed) - {*SLOTS, *self.attributes}
        if unknown:
            raise WorldError(f"unknown slot(s) {sorted(unknown)}; this world's slots: "
                             f"{', '.join([*SLOTS, *self.attributes])}")
        words = {"object": rng.choice(self.objects), "style": rng.choice(self.styles)}
        words.update({k: rng.choice(v) for k, v in self.attributes.items()})
        words.update(fixed)
        return words

    def templates_with(self, slot: str) -> list[str]:
        """The prompt templates that name ``slot`` (every caption of them mentions it)."""
        return [t for t in self.prompt_templates if "{" + slot + "}" in t]

    # --- sampling defaults ---------------------------------------------------------------------------------
    def default(self, key: str) -> Any:
        """A sampling default of world.json (``num_inference_steps``, ``guidance_scale``, ``height``, ``width``)."""
        return self.defaults.get(key, DEFAULTS[key])

    @property
    def steps(self) -> int:
        return int(self.default("num_inference_steps"))

    @property
    def guidance(self) -> float:
        return float(self.default("guidance_scale"))

    @property
    def height(self) -> int:
        return int(self.default("height"))

    @property
    def width(self) -> int:
        return int(self.default("width"))

    # --- files ---------------------------------------------------------------------------------------------
    @property
    def base_path(self) -> Path:
        return self.root / self.base

    @property
    def clip_path(self) -> Path | None:
        """The world's open_clip folder, when it is there."""
        p = self.root / self.clip
        return p if (p / "open_clip_config.json").is_file() else None

    def controlnet_paths(self) -> dict[str, Path]:
        """kind → ControlNet folder, for the ControlNets that are there."""
        return {k: self.root / p for k, p in self.controlnets.items() if (self.root / p / "config.json").is_file()}

    def examples(self) -> list[dict[str, Any]]:
        """The example scenes of ``examples/examples.json`` (name, files by kind), or [] without one."""
        index = self.root / EXAMPLES_FILE
        if not index.is_file():
            return []
        return list(json.loads(index.read_text()).get("examples") or [])

    def example_names(self) -> list[str]:
        return [e["name"] for e in self.examples()]

    def example_file(self, name: str, kind: str) -> Path:
        """The file of an example's ``kind`` (image, canny, depth, scribble); WorldError when there is none."""
        for e in self.examples():
            if e["name"] == name:
                f = (e.get("files") or {}).get(kind)
                if f and (self.root / EXAMPLES_FILE.parent / f).is_file():
                    return self.root / EXAMPLES_FILE.parent / f
                raise WorldError(f"example {name!r} has no {kind} file in {self.root / EXAMPLES_FILE.parent}")
        raise WorldError(f"no example named {name!r}; examples: {', '.join(self.example_names()) or 'none'}")


def load_world(root: str | Path) -> World:
    """The world of a folder (``World.load``)."""
    return World.load(root)


def default_world() -> Path:
    """``assets/toyworld`` of the working directory when it has a world.json, else the one shipped with the repo."""
    local = Path("assets/toyworld")
    return local if (local / WORLD_FILE).is_file() else SHIPPED_WORLD


def slots(template: str) -> list[str]:
    """The ``{slot}`` names of a prompt template (``["<bad>"]`` when it does not parse)."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError:
        return ["<bad>"]


__all__ = ["DEFAULTS", "KINDS", "SLOTS", "Concept", "World", "WorldError", "default_world", "load_world", "slots"]
