"""The app's examples: a few requests on its world whose results load instantly, precomputed into the assets
(``python -m tad_demo.app.precompute``) or cached lazily in the work folder the first time someone runs them.
A cached result is only used while the model files it was made from are unchanged (their sha256)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ...core.recipe import sha256_path
from ...core.world import World
from ...runtime.control import CONTROL_KINDS
from ..errors import UserError
from ..request import TOY, GridRequest, request_defaults
from ..settings import Settings
from .runs import request_key

log = logging.getLogger(__name__)

Build = Callable[[GridRequest], tuple[Any, dict[str, Any]]]  # request → (spec, normalized)


class Examples:
    def __init__(self, settings: Settings, world: World | None, defaults: dict[str, Any], build: Build):
        self.settings, self.world, self.defaults, self.build = settings, world, defaults, build
        self.example_cache = settings.work_dir / "examples"
        self.precomputed_dir = settings.assets / "examples" / "precomputed"
        self._fresh_cache: dict[str, bool] = {}

    def rows(self) -> list[dict[str, Any]]:
        """The world's examples: name, label and a value for every request field."""
        w = self.world
        if w is None or not w.concepts:
            return []
        d, names = self.defaults, w.example_names()
        objs = [c.name for c in w.concepts if c.kind == "object"]
        stys = [c.name for c in w.concepts if c.kind == "style"]
        base = {"base": TOY, "object": d["object"], "style": d["style"], "seeds": "42", "steps": d["steps"],
                "guidance": d["guidance"], "height": d["height"], "width": d["width"], "prompt_template": d["template"],
                "example": d["object"] if d["object"] in names else None}
        rows = [{"name": "default", "label": f"{d['object']} × {d['style']}: the 3×3 grid", **base}]
        nets = [k for k in CONTROL_KINDS[1:] if k in w.controlnet_paths()]
        if nets:
            rows.append({"name": "controls", "label": f"{d['object']} × {d['style']} with {', '.join(nets)}",
                         **base, "controls": ["none", *nets]})
        if len(objs) > 1 and len(stys) > 1:
            rows.append({"name": "second", "label": f"{objs[1]} × {stys[1]}", **base, "object": objs[1],
                         "style": stys[1], "example": objs[1] if objs[1] in names else None})
        defaults = request_defaults()
        return [{**defaults, **row} for row in rows]

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
        if key not in self._fresh_cache:
            meta = json.loads((run_dir / "request.json").read_text())
            recorded = meta.get("fingerprint") or {}
            now = self.fingerprint(meta["request"])
            self._fresh_cache[key] = recorded == now
            if recorded != now:
                log.warning("cached example %s was made from other model files; ignoring it", run_dir)
        return self._fresh_cache[key]

    def fingerprint(self, normalized: Mapping[str, Any]) -> dict[str, str]:
        """sha256 of the model files a request on the world reads, keyed by their path relative to the assets."""
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

    def remember(self, normalized: Mapping[str, Any], run_dir: Path) -> None:
        """Lazily cache a run that reproduces one of the examples (later clicks on it load instantly)."""
        key = request_key(normalized)
        if normalized.get("condition") is None or self.cached_run(normalized) is not None:
            return
        examples = []
        for row in self.rows():
            try:
                examples.append(request_key(self.build(GridRequest.of(row))[1]))
            except UserError:
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
