"""The shapes world: a seeded renderer of images, captions and ControlNet conditions.

The concept structure mirrors the concept-ablation paper (Kumari et al.):

* object *targets* are specific things drawn on a generic *anchor* shape, the way Snoopy is a specific dog
  (a smiley is a circle with a face, a die is a square with pips, ...);
* style *targets* are patterns laid over the whole picture, object and background, the way a painting style
  covers the canvas; their anchor is the plain picture, the way Monet anchors to "painting";
* colour, size, position and background are free attributes, and ``cross``/``heart``/``star`` are objects
  that no checkpoint touches, in training or in preservation: they measure damage to unrelated ("control")
  concepts.

Every target has a *strength*: how strongly an image shows what sets the target apart from its anchor (the
opacity of a face's ink, the contrast of a pattern). Strength 0 is the anchor itself, 1 is the full concept.
The base model learns targets in two phases: first at middling strength only (``BASE_STRENGTH``), then on a
mix (``TUNE_STRENGTH``, ``GENERIC_SHARE``) where a target's details show at any visible strength up to full,
and a share of the pictures under its name are its bare anchor — as many pictures captioned "snoopy" are any
cartoon dog. So the base renders a target recognisably but not perfectly (some samples come out generic), as
SD renders Snoopy with "common features", while it has seen the full details. The toy CLIP sees every
strength (``FULL_STRENGTH``) with a caption weight that rises with it (``attribute_weight``), so its score for
a target rises with what a person sees. That is the room that enhancement (λ = −1) has to fill. And the tuning
phase conditions a share of the target pictures *beyond the word* (``BEYOND_SHARE``): on the line from the
anchor's caption through the target's, past the target, the further the stronger the details — so that the base
knows where λ = −1 leads.

Everything is drawn at 4x resolution with PIL and box-filtered down, so edges are anti-aliased and the
renderer knows the exact geometry; that is what makes its depth and scribble maps ground truth.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# --- the vocabulary -------------------------------------------------------------------------------------

# target -> anchor. Each object target is its anchor plus ink details drawn inside it.
OBJECT_TARGETS: dict[str, str] = {"smiley": "circle", "die": "square", "warning": "triangle", "kite": "diamond"}
STYLE_TARGETS: dict[str, str] = {"striped": "plain", "dotted": "plain", "checkered": "plain"}
# the targets of each scene attribute that has them
TARGETS_OF: dict[str, dict[str, str]] = {"object": OBJECT_TARGETS, "style": STYLE_TARGETS}
# Never ablated and never in an ablation's preservation set: they measure collateral damage.
CONTROL_OBJECTS: tuple[str, ...] = ("cross", "heart", "star")

OBJECTS: tuple[str, ...] = (*OBJECT_TARGETS, *dict.fromkeys(OBJECT_TARGETS.values()), *CONTROL_OBJECTS)
STYLES: tuple[str, ...] = (*STYLE_TARGETS, "plain")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (235, 205, 40),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128), "black": (16, 16, 16), "white": (240, 240, 240),
}
SIZES: dict[str, float] = {"small": 0.22, "large": 0.34}  # half-extent as a fraction of the image side

INK = (24, 24, 24)  # colour of the details that make an object target differ from its anchor, at strength 1

# Strength ranges (see the module docstring). The base's first phase sees 0.15-0.6. A base trained on 0.35-0.85 rendered
# its targets at the top of that range (guidance 5 exaggerates what sets a prompt apart): CLIP accuracy 0.97
# (smiley) and 0.94 (striped), scores at the CLIP's ceiling, and no room left for enhancement (32 images each,
# model card). 0.15-0.6 centres the data where the CLIP's accuracy-vs-strength curve is steepest.
FULL_STRENGTH: tuple[float, float] = (0.0, 1.0)
BASE_STRENGTH: tuple[float, float] = (0.15, 0.6)
# The base's second phase (``train_base``'s tuning): a target's details at any visible strength, and a share of
# its pictures generic — its anchor alone, under the target's name — the way many pictures captioned "snoopy"
# on the web are any cartoon dog. Trained on 0.15-0.6 alone, the base had never seen full-strength details,
# and enhancement drew blots where the details belong (model card); after this phase it has seen them, renders
# a target imperfectly because of the generic share, and moving away from the anchor leads to pictures it knows.
TUNE_STRENGTH: tuple[float, float] = (0.3, 1.0)
# The generic share that matters is the one among the pictures conditioned on a target's word: the pictures moved
# beyond the word (below) are all detailed, so the rendered share is lower. v2's base (nothing moved) had 0.35 at
# the word: object base accuracy 0.62-0.81, styles 0.30-0.56. The first base tuned beyond the word kept 0.35 of
# the renders generic, 0.46-0.49 at the word: base accuracy 0.25-0.66 (model card). 0.3 at the word is v2's
# picture with a little more detail for the styles, whose accuracy was below the bar.
GENERIC_AT_WORD = 0.3
GENERIC_SHARE = 0.21  # of the rendered target pictures: leaves GENERIC_AT_WORD at the word (object 0.29, style
                      # 0.32 over 200 000 draws; tested), as BEYOND_SHARE moves about half of the detailed ones
# Beyond the word (also the tuning phase): a share of the pictures that show a target are conditioned past the
# target's word on the line from its anchor's caption to its own, h_anchor + t·(h_target − h_anchor) with t > 1,
# and the further along (``BEYOND_MAX`` at most) the stronger their details. SD's conditioning space around a
# concept is crowded with real captions; the toy base had seen two points on that line, the anchor's and the
# target's word, and a task vector at λ = −1 moves a target's keys and values to about t = 2 (the same
# extrapolation done on the text embeddings gives the same pictures). There the base drew blots and colour
# speckle for objects: smiley −0.72 at t = 2 (``probe --line``, 32 images), −0.51 at λ = −1 (model card).
BEYOND_SHARE = 0.5    # of the pictures showing a target at a visible strength; the rest keep the word (t = 1).
                      # A quarter left the line short (t = 2 smiley −0.55 vs −0.43 at a half, 600 steps)
BEYOND_MAX = 3.0      # past λ = −1's t ≈ 2, so the app's λ down to −2 stays on ground the base has seen

# Prompt templates. The grid/app use the first one with {object}/{style}; training samples all of them so
# the models also follow prompts that leave attributes out (the way real captions do).
PROMPT_TEMPLATES: tuple[str, ...] = (
    "a {object} in {style} style",
    "a {color} {object} in {style} style",
    "a {color} {object} in {style} style on a {background} background",
    "a {size} {color} {object} in {style} style on a {background} background",
    "a {size} {object} in {style} style",
)
ATTRIBUTES: tuple[str, ...] = ("object", "style", "color", "background", "size")

SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """Everything the renderer needs; captions and conditions are functions of it."""

    object: str
    style: str
    color: str
    background: str
    size: str
    cx: float  # centre, as a fraction of the side
    cy: float
    seed: int  # for hand-drawn wobble of the scribble
    detail: float = 1.0   # strength of an object target's details (ink opacity); unused for other objects
    pattern: float = 1.0  # strength of a style target's pattern (contrast); unused for "plain"

    def caption(self, template: str = PROMPT_TEMPLATES[2]) -> str:
        return template.format(**asdict(self))


def sample_scene(rng: random.Random, strength: tuple[float, float] = BASE_STRENGTH, generic: float = 0.0,
                 **fixed) -> Scene:
    """Draw a random scene; keyword arguments pin attributes (``object="smiley"``, ``detail=1.0``).

    ``strength`` is the range the target strengths are drawn from: ``BASE_STRENGTH`` for the diffusion
    model's data, ``FULL_STRENGTH`` for the CLIP's. ``generic``: the share of strengths that are 0 instead
    (the target's name on its bare anchor, ``GENERIC_SHARE`` in the base's second phase).
    """
    attrs = {
        "object": rng.choice(OBJECTS),
        "style": rng.choice(STYLES),
        "color": rng.choice(list(COLORS)),
        "background": rng.choice(list(BACKGROUNDS)),
        "size": rng.choice(list(SIZES)),
    }
    # (no draw for ``generic`` when it is 0: every earlier dataset and evaluation keeps its random stream)
    detail, pattern = (0.0 if generic and rng.random() < generic else rng.uniform(*strength) for _ in range(2))
    unknown = set(fixed) - set(attrs) - {"detail", "pattern"}
    if unknown:
        raise ValueError(f"unknown scene attribute(s) {sorted(unknown)}; expected some of "
                         f"{sorted([*attrs, 'detail', 'pattern'])}")
    attrs.update({"detail": detail, "pattern": pattern})
    attrs.update(fixed)
    # Position jitter is small (±3 px at 64 px) so a small UNet can spend its capacity on shape and pattern.
    return Scene(**attrs, cx=0.5 + rng.uniform(-0.05, 0.05), cy=0.5 + rng.uniform(-0.05, 0.05),
                 seed=rng.randrange(2**31))


def beyond_the_word(scene: Scene, rng: random.Random) -> tuple[str, float] | None:
    """For a picture of the base's tuning data: ``(attr, t)`` to condition it at t > 1 on the anchor-to-target
    line of its object or style target (see ``BEYOND_SHARE``), or None to condition it on its caption.

    t is drawn up to a ceiling that rises with the picture's strength, from 1 at the bottom of ``TUNE_STRENGTH``
    to ``BEYOND_MAX`` at full strength: the further past the word, the stronger the details on average. The draw
    is the square root of a uniform one, so fewer pictures land just past the word (the weak ones would pull
    the word's own pictures weaker)."""
    lines = [(attr, s) for attr, s, targets in (("object", scene.detail, OBJECT_TARGETS),
                                                 ("style", scene.pattern, STYLE_TARGETS))
             if getattr(scene, attr) in targets and s > 0]
    if not lines or rng.random() >= BEYOND_SHARE:
        return None
    attr, s = rng.choice(lines)
    lo = TUNE_STRENGTH[0]
    return attr, 1.0 + math.sqrt(rng.random()) * (BEYOND_MAX - 1.0) * max(0.0, (s - lo) / (1.0 - lo))


def attribute_weight(scene: Scene, attr: str, value: str, gamma: float = 1.0) -> float:
    """How well ``value`` describes the scene's ``attr``, in [0, 1] (what the toy CLIP is trained to see).

    A target at strength s is the target with weight s**gamma and its anchor with weight 1 − s**gamma. With
    gamma 1 (the CLIP's first phase) a faint face on a circle is mostly a circle; below 1 (its second phase,
    ``train_clip.SHARPEN_GAMMA``) a faint face is already mostly a smiley, as a person sees it. Other attributes
    are exact.
    """
    targets = TARGETS_OF.get(attr)
    actual = getattr(scene, attr)
    if targets is None or actual not in targets:
        return float(actual == value)
    s = (scene.detail if attr == "object" else scene.pattern) ** gamma
    if value == actual:
        return s
    return 1.0 - s if value == targets[actual] else 0.0


def caption_weight(scene: Scene, asserted: dict[str, str], gamma: float = 1.0) -> float:
    """How well a caption asserting ``{attr: value}`` describes the scene: the product of its attributes."""
    w = 1.0
    for attr, value in asserted.items():
        w *= attribute_weight(scene, attr, value, gamma)
    return w


# --- geometry -------------------------------------------------------------------------------------------

def _outline(obj: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Polygon outline of a shape (None for round shapes drawn as ellipses)."""
    anchor = OBJECT_TARGETS.get(obj, obj)
    if anchor == "circle":
        return None
    if anchor == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if anchor == "triangle":
        h = r * 1.1
        return [(cx, cy - h), (cx + h * 1.05, cy + h * 0.85), (cx - h * 1.05, cy + h * 0.85)]
    if anchor == "diamond":
        return [(cx, cy - r * 1.15), (cx + r * 0.85, cy), (cx, cy + r * 1.15), (cx - r * 0.85, cy)]
    if anchor == "cross":
        t = r * 0.38
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                (cx - r, cy - t), (cx - t, cy - t)]
    if anchor == "star":
        # Five points; the inner radius 0.45 r keeps the arms thick enough to read at 64 px.
        return [(cx + (r if i % 2 == 0 else 0.45 * r) * math.sin(math.pi * i / 5),
                 cy - (r if i % 2 == 0 else 0.45 * r) * math.cos(math.pi * i / 5) + r * 0.08) for i in range(10)]
    if anchor == "heart":
        # Parametric heart curve, scaled so its half-width is r.
        pts = []
        for i in range(64):
            t = 2 * math.pi * i / 64
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + x / 16 * r, cy - (y + 2) / 16 * r))
        return pts
    raise ValueError(f"unknown object {obj!r}; known: {', '.join(OBJECTS)}")


def shape_mask(scene: Scene, side: int) -> Image.Image:
    """Filled silhouette (mode L, 255 inside) at the given side length."""
    cx, cy, r = scene.cx * side, scene.cy * side, SIZES[scene.size] * side
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    poly = _outline(scene.object, cx, cy, r)
    if poly is None:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(poly, fill=255)
    return mask


@functools.lru_cache(maxsize=16)
def _pattern(style: str, side: int) -> np.ndarray:
    """Where the pattern's second tone goes, as a read-only float32 map of 0/1 (zeros for plain)."""
    yy, xx = np.mgrid[0:side, 0:side]
    # Periods of 1/6 and 1/4 of the side: 5-8 px features at 64 px, which a 16x16 latent (4 px per cell)
    # still carries and a projected grid still shows.
    period = side / 6
    if style == "plain":
        on = np.zeros((side, side), bool)
    elif style == "striped":
        on = ((xx + yy) // (period / 2)) % 2 == 1
    elif style == "checkered":
        on = ((xx // (side / 8)) + (yy // (side / 8))) % 2 == 1
    elif style == "dotted":
        fx, fy = (xx % period) - period / 2, (yy % period) - period / 2
        on = fx * fx + fy * fy < (period * 0.28) ** 2
    else:
        raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")
    out = on.astype(np.float32)
    out.flags.writeable = False
    return out


def _second_tone(rgb: np.ndarray, strength: float, lighten: bool) -> np.ndarray:
    """The pattern's second tone over a colour: towards a light tint (or a dark shade) by ``strength``."""
    far = rgb * 0.3 + 255 * 0.7 if lighten else rgb * 0.3
    return rgb + (far - rgb) * strength


def _details(draw: ImageDraw.ImageDraw, scene: Scene, side: int) -> None:
    """The ink that turns an anchor into its target (face, pips, '!', kite spars), drawn as a mask (255 = ink);
    every stroke stays inside the anchor's silhouette."""
    cx, cy, r = scene.cx * side, scene.cy * side, SIZES[scene.size] * side
    w = max(1, int(r * 0.16))
    ink = 255
    if scene.object == "smiley":
        e = r * 0.16
        for ex in (cx - r * 0.38, cx + r * 0.38):
            draw.ellipse([ex - e, cy - r * 0.3 - e, ex + e, cy - r * 0.3 + e], fill=ink)
        draw.arc([cx - r * 0.55, cy - r * 0.4, cx + r * 0.55, cy + r * 0.6], 20, 160, fill=ink, width=w)
    elif scene.object == "die":
        p = r * 0.17
        for dx, dy in ((-1, -1), (1, -1), (0, 0), (-1, 1), (1, 1)):
            px, py = cx + dx * r * 0.5, cy + dy * r * 0.5
            draw.ellipse([px - p, py - p, px + p, py + p], fill=ink)
    elif scene.object == "warning":
        top, bottom = cy - r * 0.35, cy + r * 0.35
        draw.line([(cx, top), (cx, bottom)], fill=ink, width=int(w * 1.4))
        d = r * 0.12
        draw.ellipse([cx - d, cy + r * 0.55 - d, cx + d, cy + r * 0.55 + d], fill=ink)
    elif scene.object == "kite":
        # spars end short of the diamond's tips (at 1.15 r and 0.85 r), so their width never pokes out
        draw.line([(cx, cy - r * 0.95), (cx, cy + r * 0.95)], fill=ink, width=w)
        draw.line([(cx - r * 0.68, cy), (cx + r * 0.68, cy)], fill=ink, width=w)


# --- rendering ------------------------------------------------------------------------------------------

def render(scene: Scene, size: int = 64) -> Image.Image:
    """The RGB image of a scene."""
    side = size * SUPERSAMPLE
    fill = np.array(COLORS[scene.color], np.float32)
    back = np.array(BACKGROUNDS[scene.background], np.float32)
    # A style covers the whole picture: the object's fill turns to a light tint, the background to a light
    # tint when it is dark and a dark shade when it is light, each by the pattern's strength.
    s = min(max(scene.pattern, 0.0), 1.0)
    lum = float(back @ np.array([0.299, 0.587, 0.114], np.float32))
    fill2, back2 = _second_tone(fill, s, lighten=True), _second_tone(back, s, lighten=lum < 150)
    p = _pattern(scene.style, side).reshape(-1)
    m = np.asarray(shape_mask(scene, side), np.float32).reshape(-1) / 255
    # pixel = background, its pattern tone where p, the object where m, the object's pattern tone where p·m:
    # one (pixels × 4) @ (4 × RGB) product instead of four full-size blends.
    basis = np.stack([np.ones_like(p), p, m, p * m], axis=1)
    coef = np.stack([back, back2 - back, fill - back, (fill2 - fill) - (back2 - back)])
    canvas = (basis @ coef).reshape(side, side, 3)
    if scene.object in OBJECT_TARGETS:
        # the details are ink laid over whatever is beneath (fill or pattern), as opaque as the strength
        ink = Image.new("L", (side, side), 0)
        _details(ImageDraw.Draw(ink), scene, side)
        alpha = np.asarray(ink, np.float32)[..., None] / 255 * min(max(scene.detail, 0.0), 1.0)
        canvas = canvas * (1 - alpha) + np.array(INK, np.float32) * alpha
    img = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))
    return img.resize((size, size), Image.Resampling.BOX)


def depth_map(scene: Scene, size: int = 64) -> Image.Image:
    """Depth in MiDaS convention (near = white): the background is far, the shape is a raised dome."""
    side = size * SUPERSAMPLE
    mask = shape_mask(scene, side)
    # Distance to the silhouette's edge gives the shape height, like an inflated sticker.
    blurred = np.asarray(mask.filter(ImageFilter.GaussianBlur(radius=side * 0.06)), np.float32) / 255
    inside = np.asarray(mask, np.float32) / 255
    depth = 0.15 + 0.85 * inside * (0.45 + 0.55 * blurred)
    img = Image.fromarray((depth * 255).round().astype(np.uint8))
    return img.resize((size, size), Image.Resampling.BOX).convert("RGB")


def canny_map(scene: Scene, size: int = 64) -> Image.Image:
    """Canny edges of the rendered image (white on black), as ControlNet's canny annotator makes them."""
    import cv2

    gray = np.asarray(render(scene, size).convert("L"))
    # Low thresholds: the pattern and detail edges are part of what a canny condition carries.
    edges = cv2.Canny(gray, 50, 120)
    return Image.fromarray(edges).convert("RGB")


def scribble_map(scene: Scene, size: int = 64) -> Image.Image:
    """A thick, wobbly hand-drawn outline of the silhouette (white on black), like a user's sketch."""
    side = size * SUPERSAMPLE
    rng = random.Random(scene.seed)
    cx, cy, r = scene.cx * side, scene.cy * side, SIZES[scene.size] * side
    poly = _outline(scene.object, cx, cy, r)
    if poly is None:
        poly = [(cx + r * math.cos(2 * math.pi * i / 32), cy + r * math.sin(2 * math.pi * i / 32)) for i in range(32)]
    # Resample each edge and jitter the points: a hand never draws a straight line.
    pts: list[tuple[float, float]] = []
    for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1]):
        n = max(1, int(math.hypot(x1 - x0, y1 - y0) / (side * 0.05)))
        for k in range(n):
            t = k / n
            pts.append((x0 + (x1 - x0) * t + rng.gauss(0, side * 0.006),
                        y0 + (y1 - y0) * t + rng.gauss(0, side * 0.006)))
    img = Image.new("L", (side, side), 0)
    ImageDraw.Draw(img).line(pts + pts[:1], fill=255, width=int(side * 0.045), joint="curve")
    return img.resize((size, size), Image.Resampling.BOX).convert("RGB")


CONDITIONS = {"canny": canny_map, "depth": depth_map, "scribble": scribble_map}


def condition(kind: str, scene: Scene, size: int = 64) -> Image.Image:
    """The ControlNet condition of a scene: ``canny``, ``depth`` or ``scribble``."""
    try:
        return CONDITIONS[kind](scene, size)
    except KeyError:
        raise ValueError(f"unknown condition {kind!r}; known: {', '.join(CONDITIONS)}") from None


def world_words() -> list[str]:
    """Every word a prompt of this world can contain (the tokenizer must know all of them)."""
    import re

    words: set[str] = set()
    for t in PROMPT_TEMPLATES:
        words.update(re.sub(r"\{\w+\}", " ", t).split())  # literal words ("style", "background"), not slots
    words.update(OBJECTS, STYLES, COLORS, BACKGROUNDS, SIZES)
    words.update("a photo depicts of the with and image picture".split())  # CLIP-score captions
    return sorted(words)


def manifest(checkpoint_dir: str = "ablations") -> dict:
    """The ``world.json`` of the toy world: concepts with anchors, hard negatives and checkpoints, control
    concepts, vocabularies, templates, defaults and the model folders."""
    def concept(name: str, kind: str, anchor: str, targets: dict[str, str]) -> dict:
        # Hard negatives, as in Kumari et al.'s eval.json: the closest concepts that must survive the ablation
        # (here the other targets of the same kind).
        return {"name": name, "kind": kind, "anchor": anchor, "checkpoint": f"{checkpoint_dir}/{name}.safetensors",
                "format": "ablation", "hard_negatives": [t for t in targets if t != name]}

    concepts = [concept(t, "object", a, OBJECT_TARGETS) for t, a in OBJECT_TARGETS.items()]
    concepts += [concept(t, "style", a, STYLE_TARGETS) for t, a in STYLE_TARGETS.items()]
    return {
        "version": 2,
        "concepts": concepts,
        "objects": list(OBJECTS),
        "styles": list(STYLES),
        "control_concepts": list(CONTROL_OBJECTS),
        "attributes": {"color": list(COLORS), "background": list(BACKGROUNDS), "size": list(SIZES)},
        "prompt_templates": ["a {object} in {style} style", *PROMPT_TEMPLATES[1:]],
        "defaults": {"num_inference_steps": 20, "guidance_scale": 5.0, "height": 64, "width": 64},
        "base": "base",
        "clip": "clip",
        "controlnets": {k: f"controlnet/{k}" for k in CONDITIONS},
    }
