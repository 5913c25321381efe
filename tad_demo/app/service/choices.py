"""What the UI offers for a base model: the base models, their concepts, defaults, controls and ControlNets.

The app's world (``TAD_ASSETS``) is the base ``toyworld``; the catalog's models come after it, by family.
"""

from __future__ import annotations

from typing import Any

from ...core.world import Concept, World
from ...runtime.control import CONTROL_KINDS
from ..catalog import BaseEntry, Catalog, world_entry
from ..request import TOY

DEFAULTS = {"steps": 30, "guidance": 6.0, "height": 512, "width": 512}  # a catalog base without its own
TEMPLATE = "a photo of {object} in the style of {style}"                  # the catalog bases' prompt template


class Choices:
    def __init__(self, catalog: Catalog, world: World | None):
        self.catalog, self.world = catalog, world

    def bases(self) -> list[BaseEntry]:
        return ([world_entry(self.world)] if self.world is not None else []) + list(self.catalog.bases.values())

    def base_choices(self) -> list[tuple[str, str]]:
        return [(b.name + (" — GPU recommended" if b.gpu else ""), b.id) for b in self.bases()]

    def default_base(self) -> str:
        return TOY if self.world is not None else next(iter(self.catalog.bases), TOY)

    def base_entry(self, base: str) -> BaseEntry | None:
        return next((b for b in self.bases() if b.id == base), None)

    def family_of(self, base: str) -> str:
        entry = self.base_entry(base)
        return entry.family if entry else "sd-1"

    def concepts_for(self, base: str) -> list[Concept]:
        if self.family_of(base) == TOY:
            return list(self.world.concepts) if self.world else []
        return list(self.catalog.concepts.get(self.family_of(base), []))

    def concept_choices(self, base: str, kind: str | None = None) -> list[tuple[str, str]]:
        """(label, value) pairs; ``kind`` None lists both kinds (extra concepts)."""
        out = [(f"{c.name} → {c.anchor}" + ("" if kind else f" ({c.kind})"), c.name)
               for c in self.concepts_for(base) if kind in (None, c.kind)]
        return [("(none)", "")] + out

    def defaults_for(self, base: str) -> dict[str, Any]:
        """steps, guidance, height, width, template and the first object/style concept of a base."""
        entry = self.base_entry(base)
        d = {**DEFAULTS, **(entry.defaults if entry else {})}
        d["template"] = self.world.template if (self.family_of(base) == TOY and self.world) else TEMPLATE
        d.update({k: next((c.name for c in self.concepts_for(base) if c.kind == k), "") for k in ("object", "style")})
        return d

    def neutral_words(self, family: str) -> dict[str, str]:
        """The words an empty prompt slot gets (a one-axis grid): the anchors of the world's first concepts."""
        if family == TOY and self.world is not None:
            return {k: next((c.anchor for c in self.world.concepts if c.kind == k), v)
                    for k, v in (("object", "circle"), ("style", "plain"))}
        return self.catalog.neutral.get(family, {"object": "object", "style": "painting"})

    def controlnet_versions(self, base: str) -> list[str]:
        fam = self.family_of(base)
        return ["toy world"] if fam == TOY else list(self.catalog.controlnets.get(fam, {})) or ["v1.1"]

    def control_kinds(self, base: str) -> list[str]:
        """Control kinds that can run with this base (a world without a ControlNet offers only none)."""
        if self.family_of(base) == TOY:
            nets = self.world.controlnet_paths() if self.world else {}
            return ["none", *(k for k in CONTROL_KINDS[1:] if k in nets)]
        return list(CONTROL_KINDS)

    def clip_for(self, family: str) -> str | None:
        if family == TOY:
            clip = self.world.clip_path if self.world else None
            return str(clip) if clip else None
        return self.catalog.clip.get(family)

    def on_base_change(self, base: str) -> dict[str, Any]:
        """What changes with the base: concept lists, defaults, available controls and ControlNet versions."""
        base = base or self.default_base()
        return {"object_choices": self.concept_choices(base, "object"),
                "style_choices": self.concept_choices(base, "style"), "extra_choices": self.concept_choices(base),
                "defaults": self.defaults_for(base), "available_controls": self.control_kinds(base),
                "controlnet_versions": self.controlnet_versions(base)}
