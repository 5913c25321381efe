"""What the app offers: its world (``TAD_ASSETS``, read with ``core.world``) and the real models of
``assets/catalog.yaml``.

    catalog = Catalog.load(Path("assets/catalog.yaml"))
    catalog.bases["sd-v1-4"].source, catalog.controlnets["sd-1"]["v1.1"]["canny"], catalog.clip["sd-1"]
    world = app_world(Path("assets/toyworld"))   # the world with the concepts whose checkpoints exist; or None
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import WorldError
from ..core.world import Concept, World
from .request import TOY

log = logging.getLogger(__name__)


@dataclass
class BaseEntry:
    id: str
    name: str
    source: str
    family: str
    gpu: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)  # steps, guidance, height, width
    note: str = ""


@dataclass
class Catalog:
    """``assets/catalog.yaml``: real base models, ControlNets, CLIP and concept checkpoints, by family."""

    bases: dict[str, BaseEntry] = field(default_factory=dict)
    controlnets: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)  # family → version → kind
    clip: dict[str, str] = field(default_factory=dict)
    concepts: dict[str, list[Concept]] = field(default_factory=dict)
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
            cat.concepts[fam] = [Concept(c["name"], c["kind"], c["anchor"], c["checkpoint"],
                                         hard_negatives=tuple(c.get("hard_negatives") or ()))
                                 for c in ca.get("concepts") or []]
            cat.neutral[fam] = dict(ca.get("neutral") or {})
            cat.concept_page = ca.get("models_page", "")
        return cat


def app_world(root: Path) -> World | None:
    """The app's world: its concepts whose checkpoint is on this machine; None (with a warning) when the folder
    has no world.json."""
    try:
        world = World.load(root)
    except WorldError as e:
        log.warning("%s: train the toy world or set TAD_ASSETS", e)
        return None
    return world.with_concepts(world.available_concepts())


def world_entry(world: World) -> BaseEntry:
    """The world as a base model of the app's list."""
    return BaseEntry(id=TOY, name="Toy world (tiny, CPU, ships with the app)", source=str(world.base_path),
                     family=TOY, defaults={"steps": world.steps, "guidance": world.guidance, "height": world.height,
                                           "width": world.width})
