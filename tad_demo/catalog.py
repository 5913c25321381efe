"""What the app offers: the toy world (from ``world.json``) and the real models of ``assets/catalog.yaml``.

    world = World.load(Path("assets/toyworld"))   # None when its assets are missing
    catalog = Catalog.load(Path("assets/catalog.yaml"))
    catalog.bases["sd-v1-4"].source, catalog.controlnets["sd-1"]["v1.1"]["canny"], catalog.clip["sd-1"]
"""

from __future__ import annotations

import json
import logging
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

TOY = "toyworld"


@dataclass
class BaseEntry:
    id: str
    name: str
    source: str
    family: str
    gpu: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class ConceptEntry:
    name: str
    kind: str          # object | style
    anchor: str
    source: str        # checkpoint path (relative to the cwd) or Hub id
    note: str = ""


@dataclass
class Catalog:
    """``assets/catalog.yaml``: real base models, ControlNets, CLIP and concept checkpoints, by family."""

    bases: dict[str, BaseEntry] = field(default_factory=dict)
    controlnets: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)  # family → version → kind
    clip: dict[str, str] = field(default_factory=dict)
    concepts: dict[str, list[ConceptEntry]] = field(default_factory=dict)
    neutral: dict[str, dict[str, str]] = field(default_factory=dict)
    concept_page: str = ""

    @classmethod
    def load(cls, path: Path) -> Catalog:
        if not path.is_file():
            log.warning("no catalog at %s: only the toy world is offered", path)
            return cls()
        d = yaml.safe_load(path.read_text()) or {}
        cat = cls()
        for b in d.get("base_models") or []:
            cat.bases[b["id"]] = BaseEntry(id=b["id"], name=b.get("name", b["id"]), source=b["hub"],
                                           family=b.get("family", "sd-1"), gpu=bool(b.get("gpu")),
                                           defaults=dict(b.get("defaults") or {}), note=b.get("note", ""))
        for fam, versions in (d.get("controlnets") or {}).items():
            cat.controlnets[fam] = {v: {k: e["hub"] for k, e in kinds.items()} for v, kinds in versions.items()}
        cat.clip = {fam: e["spec"] for fam, e in (d.get("clip") or {}).items()}
        ca = d.get("concept_ablation") or {}
        if ca:
            fam = ca.get("family", "sd-1")
            cat.concepts[fam] = [ConceptEntry(c["name"], c["kind"], c["anchor"], c["checkpoint"])
                                 for c in ca.get("concepts") or []]
            cat.neutral[fam] = dict(ca.get("neutral") or {})
            cat.concept_page = ca.get("models_page", "")
        return cat


@dataclass
class World:
    """The toy world as the app sees it (from ``world.json``); ``None`` fields when its assets are missing."""

    root: Path
    concepts: list[ConceptEntry]
    defaults: dict[str, Any]
    template: str
    controlnets: dict[str, str]   # kind → folder that exists
    clip: str | None
    examples: list[str]

    @classmethod
    def load(cls, root: Path) -> World | None:
        wj = root / "world.json"
        if not wj.is_file():
            log.warning("toy world not found at %s (no world.json): train it or set TAD_ASSETS", root)
            return None
        w = json.loads(wj.read_text())
        concepts = [ConceptEntry(c["name"], c["kind"], c["anchor"], str(root / c["checkpoint"]))
                    for c in w.get("concepts", []) if (root / c["checkpoint"]).is_file()]
        nets = {k: str(root / p) for k, p in (w.get("controlnets") or {}).items()
                if (root / p / "config.json").is_file()}
        clip_dir = root / w.get("clip", "clip")
        templates = [t for t in w.get("prompt_templates") or [] if set(slots(t)) <= {"object", "style"}]
        from .toyworld.examples import EXAMPLES

        index = root / "examples" / "examples.json"
        names = [e["name"] for e in json.loads(index.read_text())["examples"]] if index.is_file() else list(EXAMPLES)
        d = w.get("defaults") or {}
        return cls(root=root, concepts=concepts, template=templates[0] if templates else "a {object} in {style} style",
                   defaults={"steps": int(d.get("num_inference_steps", 20)),
                             "guidance": float(d.get("guidance_scale", 5.0)),
                             "height": int(d.get("height", 64)), "width": int(d.get("width", 64))},
                   controlnets=nets, clip=str(clip_dir) if (clip_dir / "open_clip_config.json").is_file() else None,
                   examples=[n for n in names if example_ok(n)])

    @property
    def base(self) -> str:
        return str(self.root / "base")


def example_ok(name: str) -> bool:
    """Whether the toy world has an example scene of that name."""
    from .toyworld.examples import example_scene

    try:
        example_scene(name)
        return True
    except ValueError:
        return False


def slots(template: str) -> list[str]:
    """The ``{slot}`` names of a prompt template (``["<bad>"]`` when it does not parse)."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError:
        return ["<bad>"]
