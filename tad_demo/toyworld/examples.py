"""Example condition images of the toy world: a few renders with their renderer-made canny/depth/scribble maps.

Run: ``python -m tad_demo.toyworld.examples [--out assets/toyworld/examples] [--size 64]``. Writes, per example,
``<name>.png`` (the render), ``<name>_canny.png``, ``<name>_depth.png``, ``<name>_scribble.png`` and an
``examples.json`` index (scene attributes, caption, files). The maps are ground truth from the renderer's
geometry, so they work without any annotator weights; the app offers them as ready conditions.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from . import world
from .data import ASSETS

log = logging.getLogger(__name__)

# Fixed scenes (not sampled: the examples must not change when the sampler does). Centred, large shapes on a
# light background read best on a projector; "heart" is a control concept no checkpoint touches.
EXAMPLES: dict[str, world.Scene] = {
    "smiley": world.Scene("smiley", "plain", "yellow", "white", "large", 0.5, 0.5, seed=1),
    "die": world.Scene("die", "plain", "red", "white", "large", 0.5, 0.5, seed=2),
    "warning": world.Scene("warning", "plain", "yellow", "grey", "large", 0.5, 0.52, seed=3),
    "kite": world.Scene("kite", "plain", "blue", "white", "large", 0.5, 0.5, seed=4),
    "heart": world.Scene("heart", "plain", "red", "white", "large", 0.5, 0.5, seed=5),
}
KINDS = tuple(world.CONDITIONS)  # canny, depth, scribble


def example_scene(name: str) -> world.Scene:
    """The fixed scene of an example; an object with no example of its own gets a centred render of itself."""
    if name in EXAMPLES:
        return EXAMPLES[name]
    if name in world.OBJECTS:
        return world.Scene(name, "plain", "red", "white", "large", 0.5, 0.5, seed=0)
    raise ValueError(f"no example named {name!r}; examples: {', '.join(EXAMPLES)} (or any object: "
                     f"{', '.join(world.OBJECTS)})")


def example_condition(kind: str, name: str = "smiley", size: int = 64) -> Image.Image:
    """The renderer-made ``kind`` map of an example scene."""
    return world.condition(kind, example_scene(name), size)


def write_examples(out: str | Path = ASSETS / "examples", size: int = 64) -> list[Path]:
    """Write every example's render and maps plus ``examples.json``; returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    index = []
    for name, scene in EXAMPLES.items():
        files = {"image": f"{name}.png"}
        world.render(scene, size).save(out / files["image"])
        for kind in KINDS:
            files[kind] = f"{name}_{kind}.png"
            world.condition(kind, scene, size).save(out / files[kind])
        written += [out / f for f in files.values()]
        index.append({"name": name, "scene": asdict(scene), "caption": scene.caption(world.PROMPT_TEMPLATES[0]),
                      "size": size, "files": files})
    (out / "examples.json").write_text(json.dumps({"examples": index}, indent=2) + "\n")
    written.append(out / "examples.json")
    log.info("wrote %d files to %s", len(written), out)
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ASSETS / "examples"), help="output folder")
    ap.add_argument("--size", type=int, default=64, help="side in pixels (the toy models' resolution is 64)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    files = write_examples(args.out, args.size)
    print(f"wrote {len(files)} files to {args.out}")


if __name__ == "__main__":
    main()
