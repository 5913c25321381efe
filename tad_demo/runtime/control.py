"""ControlNet condition images: annotators, sketches, resizing, and a world's ready example maps.

    cond = make_condition("canny", photo, width=512, height=512, mode="crop")   # annotator on an image
    cond = make_condition("scribble", sketch, source="sketch", width=64, height=64)  # drawn in the app
    cond = make_condition("depth", depth_png, source="map", width=64, height=64)     # a ready condition map
    cond.image, cond.size                                                             # PIL RGB, (w, h)

Annotators (controlnet_aux): canny needs no weights (OpenCV). Depth (MiDaS, else ZoeDepth) and scribble (HED,
else PiDiNet) need files from the Hub repo ``lllyasviel/Annotators``; they are looked up, never downloaded here,
in ``$TAD_ANNOTATORS`` (a folder holding the files) and then in the Hugging Face cache. When neither has them,
:class:`AnnotatorUnavailable` names the file to download and says that a ready condition map can be uploaded.

Conventions ControlNet expects (lllyasviel's annotators): canny = white edges on black, depth = near is white,
scribble = white strokes on black. Every condition is RGB at the generation size.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..core.errors import AnnotatorUnavailable, ControlError, WorldError
from ..core.limits import HARD
from ..core.world import World
from .loading import LOADING

log = logging.getLogger(__name__)

CONTROL_KINDS = ("none", "canny", "depth", "scribble")
RESIZE_MODES = ("resize", "crop", "pad")
SOURCES = ("image", "map", "sketch")
ANNOTATOR_REPO = "lllyasviel/Annotators"
ANNOTATOR_ENV = "TAD_ANNOTATORS"
# kind -> [(detector, file in lllyasviel/Annotators)], in order of preference.
ANNOTATOR_FILES: dict[str, list[tuple[str, str]]] = {
    "depth": [("midas", "dpt_hybrid-midas-501f0c75.pt"), ("zoe", "ZoeD_M12_N.pt")],
    "scribble": [("hed", "ControlNetHED.pth"), ("pidinet", "table5_pidinet.pth")],
}
MAX_SIDE = HARD.condition_side  # larger requests are mistakes (or abuse), not images

@dataclass(frozen=True)
class Condition:
    """A ControlNet condition at its final size, and how it was made (shown in the UI next to the preview)."""

    kind: str
    image: Image.Image
    source: str = "map"
    mode: str = "resize"

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def describe(self) -> str:
        w, h = self.size
        return f"{self.kind} condition from {self.source}, {self.mode} to {w}×{h}"


# --- inputs ----------------------------------------------------------------------------------------------

def to_pil(image: Any) -> Image.Image:
    """A PIL image from PIL / numpy (H×W[×C], uint8 or floats in [0, 1]) / a path / a Gradio editor value."""
    if isinstance(image, Mapping):  # gr.ImageEditor / gr.Sketchpad value: {"background", "layers", "composite"}
        image = _editor_composite(image)
    if isinstance(image, (str, Path)):
        p = Path(image)
        if not p.is_file():
            raise ControlError(f"condition image {str(p)!r} not found")
        with Image.open(p) as im:
            image = im.copy()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
        image = Image.fromarray(arr)
    if not isinstance(image, Image.Image):
        raise ControlError(f"expected an image (PIL, numpy array or path), got {type(image).__name__}")
    return image


def _editor_composite(value: Mapping[str, Any]) -> Any:
    """The drawn picture of a Gradio editor value: its composite, else its layers over its background."""
    if value.get("composite") is not None:
        return value["composite"]
    layers = [to_pil(x).convert("RGBA") for x in value.get("layers") or [] if x is not None]
    bg = value.get("background")
    if bg is None and not layers:
        raise ControlError("the sketch is empty: draw something, upload a condition map or pick an example")
    canvas = to_pil(bg).convert("RGBA") if bg is not None else Image.new("RGBA", layers[0].size, (0, 0, 0, 0))
    for layer in layers:
        canvas.alpha_composite(layer.resize(canvas.size))
    return canvas


def _check_size(width: int, height: int) -> None:
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SIDE:
            raise ControlError(f"{name} must be an integer in 1..{MAX_SIDE}, got {v!r}")


# --- geometry --------------------------------------------------------------------------------------------

def prepare(image: Any, width: int, height: int, mode: str = "resize",
            resample: Image.Resampling = Image.Resampling.LANCZOS) -> tuple[Image.Image, tuple[int, int]]:
    """Bring an image to exactly ``width``×``height`` (RGB) and return it with its final size.

    Modes: ``resize`` stretches (aspect ratio not kept); ``crop`` scales to cover and cuts the centre;
    ``pad`` scales to fit and fills the rest with black (a condition's "nothing here").
    """
    _check_size(width, height)
    if mode not in RESIZE_MODES:
        raise ControlError(f"resize mode {mode!r} is not one of {', '.join(RESIZE_MODES)}")
    img = to_pil(image).convert("RGB")
    if img.size == (width, height):
        return img, (width, height)
    if mode == "resize":
        out = img.resize((width, height), resample)
    elif mode == "crop":
        out = ImageOps.fit(img, (width, height), method=resample, centering=(0.5, 0.5))
    else:
        out = ImageOps.pad(img, (width, height), method=resample, color=(0, 0, 0), centering=(0.5, 0.5))
    return out, out.size


# --- sketches --------------------------------------------------------------------------------------------

def from_sketch(image: Any, threshold: int = 128, thicken: int = 0) -> Image.Image:
    """A user's sketch as the white-on-black scribble ControlNet expects.

    Accepts dark strokes on a light background, light strokes on a dark one (kept), and RGBA drawings whose
    background is transparent (gr.Sketchpad): there the strokes are wherever the alpha is opaque, whatever
    their colour. ``thicken`` dilates strokes by that many pixels (thin mouse lines are weaker than the
    HED-style scribbles the model was trained on).
    """
    img = to_pil(image)
    alpha = None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        a = np.asarray(img.convert("RGBA"))[..., 3]
        if (a < 250).mean() > 0.05:  # a real transparent background, not an opaque image stored as RGBA
            alpha = a
    if alpha is not None:
        strokes = alpha >= threshold
    else:
        lum = np.asarray(img.convert("L"), dtype=np.uint8)
        # The background is the majority tone: dark strokes on white paper, or already white on black.
        strokes = lum < threshold if np.median(lum) >= threshold else lum >= threshold
    if not strokes.any():
        raise ControlError("the sketch is empty: draw something, upload a condition map or pick an example")
    if strokes.all():
        raise ControlError("the sketch has no background (everything is ink); draw strokes on a blank canvas")
    out = Image.fromarray((strokes * 255).astype(np.uint8))
    if thicken > 0:
        from PIL import ImageFilter

        out = out.filter(ImageFilter.MaxFilter(2 * int(thicken) + 1))
    return out.convert("RGB")


# --- annotators ------------------------------------------------------------------------------------------

def annotator_path(filename: str) -> Path | None:
    """A local copy of an ``lllyasviel/Annotators`` file: ``$TAD_ANNOTATORS/<file>``, else the HF cache."""
    env = os.environ.get(ANNOTATOR_ENV)
    if env:
        p = Path(env).expanduser() / filename
        if p.is_file():
            return p
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ANNOTATOR_REPO, filename)
    except Exception:  # noqa: BLE001 - a broken cache is the same as no cache here
        cached = None
    return Path(cached) if isinstance(cached, (str, Path)) and Path(cached).is_file() else None


def _missing_message(kind: str) -> str:
    first = ANNOTATOR_FILES[kind][0][1]
    alts = " or ".join(f for _, f in ANNOTATOR_FILES[kind])
    return (f"the {kind} annotator needs {alts} from the Hub repo {ANNOTATOR_REPO}, not found in "
            f"${ANNOTATOR_ENV} or the Hugging Face cache: download it (`hf download {ANNOTATOR_REPO} {first}`, or "
            f"put the file in a folder named by ${ANNOTATOR_ENV}), or upload a ready {kind} map instead")


def _import_aux(name: str):
    # controlnet_aux imports every detector (timm, mediapipe warnings...) on first use: keep it out of startup
    # and keep its deprecation noise out of the logs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import controlnet_aux

    return getattr(controlnet_aux, name)


@lru_cache(maxsize=4)
def _detector(name: str, path: str):
    folder, filename = str(Path(path).parent), Path(path).name
    cls = {"midas": "MidasDetector", "zoe": "ZoeDetector", "hed": "HEDdetector", "pidinet": "PidiNetDetector"}[name]
    log.info("loading %s annotator from %s", name, path)
    with LOADING, warnings.catch_warnings():  # one load at a time in a process (see loading.py)
        warnings.simplefilter("ignore")
        return _import_aux(cls).from_pretrained(folder, filename=filename)


def _find_detector(kind: str):
    for name, filename in ANNOTATOR_FILES[kind]:
        p = annotator_path(filename)
        if p is not None:
            return name, _detector(name, str(p))
    raise AnnotatorUnavailable(_missing_message(kind))


def canny(image: Any, low: int = 100, high: int = 200) -> Image.Image:
    """Canny edges (white on black) with controlnet_aux's CannyDetector, at the image's own resolution."""
    img = to_pil(image).convert("RGB")
    if not 0 <= low < high <= 1000:
        raise ControlError(f"canny thresholds must satisfy 0 ≤ low < high ≤ 1000, got {low}, {high}")
    # CannyDetector rounds sides to multiples of 64 (and to 0 below 32 px): detect at ≥ 64 px, then come back.
    res = max(64, -(-min(img.size) // 64) * 64)
    out = _import_aux("CannyDetector")()(img, low_threshold=low, high_threshold=high, detect_resolution=res,
                                          image_resolution=res, output_type="pil")
    return out.convert("RGB").resize(img.size, Image.Resampling.BILINEAR) if out.size != img.size else out


def depth(image: Any) -> Image.Image:
    """A MiDaS (or ZoeDepth) depth map, near = white, at the image's size."""
    img = to_pil(image).convert("RGB")
    _, det = _find_detector("depth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = det(img, output_type="pil")
    out = out[0] if isinstance(out, tuple) else out  # MiDaS returns (depth, normal) when asked for both
    return out.convert("RGB").resize(img.size, Image.Resampling.BILINEAR)


def scribble(image: Any) -> Image.Image:
    """A scribble (white strokes on black) of a picture via HED (or PiDiNet) in scribble mode."""
    img = to_pil(image).convert("RGB")
    name, det = _find_detector("scribble")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = det(img, scribble=True, output_type="pil") if name == "hed" else \
            det(img, scribble=True, safe=True, output_type="pil")
    return out.convert("RGB").resize(img.size, Image.Resampling.NEAREST)


ANNOTATORS = {"canny": canny, "depth": depth, "scribble": scribble}


def detect(kind: str, image: Any, **kwargs: Any) -> Image.Image:
    """Run the annotator of ``kind`` on an image (kwargs: canny's ``low``/``high`` thresholds)."""
    if kind not in ANNOTATORS:
        raise ControlError(f"no annotator for {kind!r}; choose one of {', '.join(ANNOTATORS)}")
    return ANNOTATORS[kind](image, **kwargs)


# --- the one entry point ------------------------------------------------------------------------------------

def make_condition(kind: str, image: Any, *, source: str = "image", width: int, height: int,
                   mode: str = "resize", **annotator_kwargs: Any) -> Condition:
    """A condition of ``kind`` at exactly ``width``×``height``.

    1. check the request (kind, source, size, mode) before any work;
    2. bring the input to the generation size with the named resize mode;
    3. make the map: run the annotator (``source="image"``), convert a sketch (``"sketch"``), or take an
       uploaded map as it is (``"map"``);
    4. land on the exact size again (annotators round sides to multiples of 64).
    """
    if kind not in CONTROL_KINDS or kind == "none":
        raise ControlError(f"condition kind {kind!r} is not one of {', '.join(CONTROL_KINDS[1:])}")
    if source not in SOURCES:
        raise ControlError(f"condition source {source!r} is not one of {', '.join(SOURCES)}")
    _check_size(width, height)
    if mode not in RESIZE_MODES:
        raise ControlError(f"resize mode {mode!r} is not one of {', '.join(RESIZE_MODES)}")
    if image is None:
        raise ControlError(f"the {kind} control needs an image: upload one, pick an example or draw a sketch")
    if source == "sketch":
        # Convert before resizing: thresholding a resampled sketch would lose thin strokes.
        sized, _ = prepare(from_sketch(image), width, height, mode, resample=Image.Resampling.BILINEAR)
        cond = from_sketch(sized, threshold=64)
    else:
        sized, _ = prepare(image, width, height, mode)
        cond = detect(kind, sized, **annotator_kwargs) if source == "image" else sized
    cond, _ = prepare(cond, width, height, "resize")
    return Condition(kind=kind, image=cond, source=source, mode=mode)


# --- a world's example conditions -------------------------------------------------------------------------

def example_condition(world: World, kind: str, name: str) -> Image.Image:
    """The ready ``kind`` map (canny/depth/scribble) of one of a world's example scenes (its ``examples/``), RGB."""
    try:
        path = world.example_file(name, kind)
    except WorldError as e:
        raise ControlError(str(e)) from None
    with Image.open(path) as im:
        return im.convert("RGB")
