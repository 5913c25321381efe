"""A request → a validated GridSpec and its normalized form (the cache key of its result). No model is loaded;
Hub ids stay ids. Every number is checked against the settings' caps and refused with a one-line message
naming the field (an API client can bypass every widget).

    spec, normalized = RequestBuilder(settings, choices, sources, conditions, budget=12).build(GridRequest(steps=4))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.limits import HARD
from ...core.merge_methods import get_method
from ...core.world import Concept
from ...grid import ControlSpec, ExtraVector, GridSpec
from ...runtime.control import CONTROL_KINDS, RESIZE_MODES
from ..errors import UserError
from ..request import TOY, GridRequest
from ..settings import Settings
from ..validation import (
    check_template,
    ordered_subset,
    parse_axis,
    parse_int,
    parse_lambda,
    parse_number,
    parse_seeds,
    parse_side,
)
from .caps import check_caps
from .choices import Choices
from .conditions import Conditions
from .guard import guard
from .sources import CUSTOM, Sources


class RequestBuilder:
    def __init__(self, settings: Settings, choices: Choices, sources: Sources, conditions: Conditions,
                 budget: float):
        self.settings, self.choices, self.sources, self.conditions = settings, choices, sources, conditions
        self.budget = budget  # megapixel-steps of one grid on this app's device (Settings.budget)

    def build(self, req: GridRequest) -> tuple[GridSpec, dict[str, Any]]:
        """Validate a request into a GridSpec and its normalized form (see the module docstring)."""
        s = self.settings
        base_id, base_source, family = self._base(req)
        d = self.choices.defaults_for(base_id)
        # 1. concepts on the axes and the extra vectors
        obj = self.concept(d["object"] if req.object is None else req.object, "object", base_id)
        sty = self.concept(d["style"] if req.style is None else req.style, "style", base_id)
        lam = {f"{axis}_lambdas": parse_axis(getattr(req, f"{axis}_lambdas"), f"{axis} λ", HARD.axis, s.max_lambda)
               for axis in ("object", "style")}
        extras = self._extras(req, base_id)
        # 2. sampling numbers
        seeds = parse_seeds(req.seeds, s.max_seeds, s.max_seed)
        steps = parse_int(d["steps"] if req.steps is None else req.steps, "steps", 1, s.max_steps)
        guidance = parse_number(d["guidance"] if req.guidance is None else req.guidance, "guidance", 0.0,
                                s.max_guidance)
        height = self.side(d["height"] if req.height is None else req.height, "height")
        width = self.side(d["width"] if req.width is None else req.width, "width")
        scale = parse_number(req.conditioning_scale, "conditioning scale", 0.0, s.max_scale)
        template = self._template(d["template"] if req.prompt_template is None else req.prompt_template, obj, sty,
                                  family)
        # 3. merge method and its parameters
        method, params = self._merge(req)
        # 4. controls and their conditions
        kinds = self.controls(req.controls)
        if req.resize_mode not in RESIZE_MODES:
            raise UserError(f"resize mode {req.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        controls = [self._control(k, req, base_id, family, width, height, scale) for k in kinds]
        # 5. CLIP (the grid's size and cost are checked with every other cap in check_caps)
        clip = self.choices.clip_for(family) if req.clip_metrics else None
        spec = GridSpec(base=base_source, object=obj, style=sty,
                        object_lambdas=lam["object_lambdas"], style_lambdas=lam["style_lambdas"], extra=extras,
                        merge=method, merge_params=params, controls=controls, control_resize=req.resize_mode,
                        prompt_template=template, seeds=seeds, steps=steps, guidance=guidance, height=height,
                        width=width, clip=clip)
        with guard("validation"):
            spec.validate()
        check_caps(spec, s, budget=self.budget)
        normalized = {
            "base": base_id, "object": obj.name if obj else "", "style": sty.name if sty else "",
            "sources": [self.portable(c.source) for c in (obj, sty, *extras) if c],
            "controls": kinds, "condition": self.conditions.key(req, kinds), "conditioning_scale": scale,
            "resize_mode": req.resize_mode, "controlnets": [self.portable(c.model) for c in controls if c.model],
            "prompt_template": template, "seeds": seeds, "steps": steps, "guidance": guidance, "height": height,
            "width": width, **{k: list(v) for k, v in lam.items()}, "extra": [[e.name, e.lam] for e in extras],
            "merge_method": method,
            "merge_params": params, "clip": self.portable(clip) if clip else None,
        }
        return spec, normalized

    # --- the parts -----------------------------------------------------------------------------------------
    def _base(self, req: GridRequest) -> tuple[str, str, str]:
        """(base id, its source, its family)."""
        base_id = (req.base or self.choices.default_base()).strip()
        entry = self.choices.base_entry(base_id)
        if entry is not None:
            return base_id, entry.source, entry.family
        if base_id == TOY and self.choices.world is None:
            raise UserError(f"the toy world is not installed at {self.settings.assets} (no world.json); set "
                            "TAD_ASSETS or pick a catalog model")
        return base_id, self.sources.check(base_id, "base model"), "sd-1"

    def concept(self, value: Any, axis: str, base: str, any_kind: bool = False) -> Concept | None:
        """A concept of the base's list, or a user's ``target → anchor @ source``; None for "no such axis"."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            raise UserError(f"{axis}: expected a concept name, got {type(value).__name__}")
        kind = None if any_kind else axis
        m = CUSTOM.fullmatch(value)
        if m:
            self.sources.custom_concept(m["name"], m["anchor"], m["source"], axis)
            return Concept(m["name"], kind or "object", m["anchor"], self.sources.check(m["source"], axis))
        known = [c for c in self.choices.concepts_for(base) if kind in (None, c.kind)]
        for c in known:
            if c.name == value.strip():
                if not Path(c.source).exists():
                    raise UserError(f"{axis} {c.name!r}: checkpoint {c.source} is not on this machine; download it "
                                    f"from {self.choices.catalog.concept_page or 'its project page'} to that path")
                self.sources.check_pickle(c.source, f"{axis} {c.name!r}")
                return Concept(c.name, c.kind, c.anchor, c.source, "ablation")
        names = ", ".join(c.name for c in known) or "none"
        raise UserError(f"{axis}: unknown concept {value!r} for this base model; known: {names} (or add a checkpoint "
                        "as 'target → anchor @ source')")

    def _extras(self, req: GridRequest, base: str) -> list[ExtraVector]:
        limit = self.settings.max_extra
        extras = []
        for i in range(1, 4):
            value = getattr(req, f"extra{i}")
            if not value:
                continue
            if len(extras) >= limit:
                raise UserError(f"extra concepts: at most {limit} (TAD_MAX_EXTRA)")
            c = self.concept(value, f"extra concept {i}", base, any_kind=True)
            lam = parse_lambda(getattr(req, f"extra{i}_lambda"), f"extra concept {i} λ", self.settings.max_lambda)
            extras.append(ExtraVector(c.name, c.source, lam, c.format))
        return extras

    def side(self, v: Any, what: str) -> int:
        return parse_side(v, what, self.settings.min_side, self.settings.max_side)

    def _template(self, t: Any, obj: Concept | None, sty: Concept | None, family: str) -> str:
        t = check_template(t, self.settings.max_template)
        # A one-axis grid: the empty slot gets the family's neutral word (a circle, plain; a dog, painting).
        neutral = self.choices.neutral_words(family)
        if obj is None:
            t = t.replace("{object}", neutral["object"])
        if sty is None:
            t = t.replace("{style}", neutral["style"])
        return t.strip()

    def _merge(self, req: GridRequest) -> tuple[str, dict[str, Any]]:
        try:
            method = get_method(req.merge_method or "linear")
        except ValueError as e:
            raise UserError(f"merge method: {e}") from None
        known = {p.name for p in method.params}
        given = req.merge_params or {}
        if not isinstance(given, dict):
            raise UserError(f"merge_params: expected a mapping of parameter → value (e.g. {{\"density\": 0.2}}), got "
                            f"{type(given).__name__}")
        params = {k: v for k, v in given.items() if k in known}  # the UI sends every widget
        try:
            method.validate(params)
        except ValueError as e:
            raise UserError(f"merge {method.name}: {e}") from None
        return method.name, params

    @staticmethod
    def controls(kinds: Any) -> list[str]:
        """The requested control kinds, each once, in a stable order: none, canny, depth, scribble."""
        return ordered_subset(kinds, "controls", CONTROL_KINDS, "none")

    def _control(self, kind: str, req: GridRequest, base: str, family: str, width: int, height: int,
                 scale: float) -> ControlSpec:
        if kind == "none":
            return ControlSpec("none")
        if family == TOY:
            nets = self.choices.world.controlnet_paths() if self.choices.world else {}
            if kind not in nets:
                raise UserError(f"control {kind}: the toy world has no {kind} ControlNet; train it with `python -m "
                                f"tad_demo.toyworld.train_controlnet --kinds {kind}`")
            model = str(nets[kind])
        else:
            versions = self.choices.catalog.controlnets.get(family, {})
            version = req.controlnet_version if req.controlnet_version in versions else next(iter(versions), None)
            model = versions.get(version, {}).get(kind) if version else None
            if model is None:
                raise UserError(f"control {kind}: no {kind} ControlNet in the catalog for {base}")
        cond = self.conditions.make(kind, req, width, height)
        return ControlSpec(kind, image=cond.image, model=model, scale=scale)

    def portable(self, path: str) -> str:
        """A path inside the assets as ``assets:<relative>`` (cache keys must not depend on where they live)."""
        root = self.settings.assets.resolve()
        p = Path(path).resolve() if Path(path).exists() else None
        if p is not None and (p == root or root in p.parents):
            return f"assets:{p.relative_to(root).as_posix()}"
        return str(path)
