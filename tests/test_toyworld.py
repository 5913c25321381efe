"""The shapes world: renderer determinism, caption/condition consistency, tokenizer, smoke training."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from tad_demo.toyworld import world
from tad_demo.toyworld.tokenizer import check_tokenizer, write_tokenizer


def test_renderer_is_deterministic():
    a = [world.sample_scene(random.Random(3)) for _ in range(2)]
    b = [world.sample_scene(random.Random(3)) for _ in range(2)]
    assert a == b
    for s, t in zip(a, b):
        assert np.array_equal(np.asarray(world.render(s)), np.asarray(world.render(t)))
        for kind in world.CONDITIONS:
            assert np.array_equal(np.asarray(world.condition(kind, s)), np.asarray(world.condition(kind, t)))


@pytest.mark.parametrize("obj", world.OBJECTS)
def test_caption_and_conditions_match_the_scene(obj):
    scene = world.sample_scene(random.Random(obj), object=obj, style="plain", color="red", background="black")
    cap = scene.caption(world.PROMPT_TEMPLATES[3])
    for word in (obj, "plain", "red", "black", scene.size):
        assert word in cap.split()
    img = np.asarray(world.render(scene)).astype(int)
    from scipy import ndimage

    shape = np.abs(img - np.array(world.BACKGROUNDS["black"])).sum(-1) > 60  # pixels that are not background
    shape = ndimage.binary_fill_holes(shape)  # dark details (eyes, pips) are inside the silhouette
    inner, outer = ndimage.binary_erosion(shape, iterations=2), ~ndimage.binary_dilation(shape, iterations=2)
    depth = np.asarray(world.depth_map(scene))[..., 0]
    scribble = np.asarray(world.scribble_map(scene))[..., 0] > 128
    canny = np.asarray(world.canny_map(scene))[..., 0] > 0
    # Depth: the shape is nearer (brighter) than the background, everywhere inside it.
    assert depth[inner].min() > depth[outer].max()
    # Canny and scribble lie on or next to the silhouette's boundary, white on black.
    ys, xs = np.nonzero(shape)
    box = (ys.min() - 3, ys.max() + 3, xs.min() - 3, xs.max() + 3)
    for m in (canny, scribble):
        yy, xx = np.nonzero(m)
        assert len(yy) > 20
        assert yy.min() >= box[0] and yy.max() <= box[1] and xx.min() >= box[2] and xx.max() <= box[3]


def _render(scene, **change) -> np.ndarray:
    return np.asarray(world.render(world.Scene(**{**scene.__dict__, **change}))).astype(int)


def test_targets_differ_from_anchors_only_by_details():
    for target, anchor in world.OBJECT_TARGETS.items():
        s = world.sample_scene(random.Random(0), object=target, style="plain", detail=1.0)
        diff = np.abs(_render(s) - _render(s, object=anchor)).sum(-1) > 30
        assert 0.01 < diff.mean() < 0.15, target  # some ink, not a different shape
        # strength 0 is the anchor itself; the ink grows with the strength
        assert np.array_equal(_render(s, detail=0.0), _render(s, object=anchor)), target
        ink = [np.abs(_render(s, detail=d) - _render(s, object=anchor)).sum() for d in (0.35, 0.6, 0.85, 1.0)]
        assert ink == sorted(ink) and ink[0] < 0.5 * ink[-1], (target, ink)


def test_styles_cover_the_whole_picture():
    s = world.sample_scene(random.Random(1), object="heart", style="plain", background="grey", size="small")
    inside = np.asarray(world.shape_mask(s, 64)) > 250
    outside = ~(np.asarray(world.shape_mask(s, 64)) > 0)
    plain = _render(s)
    for style in world.STYLE_TARGETS:
        img = _render(s, style=style, pattern=1.0)
        changed = np.abs(img - plain).sum(-1) > 30
        assert changed[outside].mean() > 0.1 and changed[inside].mean() > 0.1, style  # background and object
        assert np.array_equal(_render(s, style=style, pattern=0.0), plain), style  # strength 0 is plain
        faint = np.abs(_render(s, style=style, pattern=0.35) - plain).sum()
        assert faint < 0.5 * np.abs(img - plain).sum(), style


def test_caption_weights_grade_targets_by_strength():
    s = world.sample_scene(random.Random(2), object="smiley", style="striped", color="red", detail=0.3, pattern=0.8)
    w = world.caption_weight
    assert w(s, {"object": "smiley"}) == pytest.approx(0.3) and w(s, {"object": "circle"}) == pytest.approx(0.7)
    assert w(s, {"object": "square"}) == 0 and w(s, {"color": "blue"}) == 0 and w(s, {"color": "red"}) == 1
    assert w(s, {"object": "smiley", "style": "plain"}) == pytest.approx(0.3 * 0.2)
    c = world.sample_scene(random.Random(3), object="heart", style="plain")
    assert w(c, {"object": "heart", "style": "plain"}) == 1 and w(c, {"object": "circle"}) == 0
    # the CLIP's second phase: a faint target is already mostly the target (0.3**0.5 of it), the rest exact
    assert w(s, {"object": "smiley"}, 0.5) == pytest.approx(0.3 ** 0.5)
    assert w(s, {"object": "circle"}, 0.5) == pytest.approx(1 - 0.3 ** 0.5)
    assert w(s, {"object": "smiley", "color": "red"}, 0.5) == pytest.approx(0.3 ** 0.5)
    assert w(c, {"object": "heart"}, 0.5) == 1 and w(s, {"object": "square"}, 0.5) == 0
    # the base model's data: middling strengths only; the CLIP's: every strength
    rng = random.Random(4)
    base = [world.sample_scene(rng).detail for _ in range(500)]
    assert world.BASE_STRENGTH[0] <= min(base) and max(base) <= world.BASE_STRENGTH[1]
    full = [world.sample_scene(rng, world.FULL_STRENGTH).detail for _ in range(500)]
    assert min(full) < 0.1 and max(full) > 0.9
    # the base's tuning data: a generic share at strength 0 (the bare anchor), the rest visible up to full
    tune = [world.sample_scene(rng, world.TUNE_STRENGTH, world.GENERIC_SHARE).pattern for _ in range(2000)]
    generic = sum(t == 0 for t in tune) / len(tune)
    assert abs(generic - world.GENERIC_SHARE) < 0.05
    assert min(t for t in tune if t) >= world.TUNE_STRENGTH[0] and max(tune) > 0.95


def test_base_tuning_conditions_a_share_beyond_the_word_and_further_for_stronger_details():
    """The tuning data's line past a target's word: only pictures showing a target, about ``BEYOND_SHARE`` of
    them, t in (1, BEYOND_MAX], rising with strength; ``GENERIC_AT_WORD`` of the pictures left at the word are
    generic; the anchor caption swaps exactly that word."""
    from tad_demo.toyworld.train_base import batch_captions

    rng = random.Random(5)
    heart = world.sample_scene(rng, object="heart", style="plain")
    generic = world.sample_scene(rng, object="smiley", style="plain", detail=0.0)
    assert all(world.beyond_the_word(s, rng) is None for s in (heart, generic) for _ in range(200))

    def ts(detail: float) -> list[float]:
        scene = world.sample_scene(random.Random(6), object="die", style="plain", detail=detail)
        lines = [world.beyond_the_word(scene, rng) for _ in range(4000)]
        assert {line[0] for line in lines if line} == {"object"}
        return [line[1] for line in lines if line]

    strong, middling = ts(1.0), ts(0.6)
    assert abs(len(strong) / 4000 - world.BEYOND_SHARE) < 0.03
    assert 1.0 <= min(strong) and max(strong) <= world.BEYOND_MAX and max(strong) > world.BEYOND_MAX - 0.1
    assert np.mean(strong) > np.mean(middling) + 0.3 > 1.3

    # the rendered generic share is lower than the one at the word: the pictures moved past it are all detailed
    at_word: dict[str, list[bool]] = {"object": [], "style": []}
    for _ in range(20_000):
        scene = world.sample_scene(rng, world.TUNE_STRENGTH, world.GENERIC_SHARE)
        line = world.beyond_the_word(scene, rng)
        for attr, s, targets in (("object", scene.detail, world.OBJECT_TARGETS),
                                 ("style", scene.pattern, world.STYLE_TARGETS)):
            if getattr(scene, attr) in targets and not (line and line[0] == attr):
                at_word[attr].append(s == 0)
    for attr, generic in at_word.items():
        assert abs(np.mean(generic) - world.GENERIC_AT_WORD) < 0.04, attr

    scenes = [world.sample_scene(rng, world.TUNE_STRENGTH, world.GENERIC_SHARE) for _ in range(2000)]
    captions, anchors, line_t = batch_captions(scenes, random.Random(7), beyond=True)
    moved = [i for i, t in enumerate(line_t) if t > 1]
    assert 0.05 < len(moved) / len(scenes) < world.BEYOND_SHARE
    for i in moved:
        target = {w for w in captions[i].split() if w in {**world.OBJECT_TARGETS, **world.STYLE_TARGETS}}
        swapped = [(a, b) for a, b in zip(captions[i].split(), anchors[i].split()) if a != b]
        assert len(swapped) == 1 and swapped[0][0] in target
        assert swapped[0][1] == {**world.OBJECT_TARGETS, **world.STYLE_TARGETS}[swapped[0][0]]
    assert all(a == c for a, c, t in zip(anchors, captions, line_t) if t == 1)
    plain, _, plain_t = batch_captions(scenes, random.Random(7), beyond=False)
    assert set(plain_t) == {1.0} and sum(c == "" for c in plain) > 0.05 * len(scenes)  # CFG dropout


def test_clip_phase_two_shifts_each_image_on_its_own_and_half_not_at_all():
    """Checkered's squares line up with the CLIP's patches in every render: phase 2 must keep half the images
    aligned and shift the others independently (phase 1 shifted a whole batch by one offset)."""
    import torch

    from tad_demo.toyworld.train_clip import augment

    x = torch.zeros(200, 3, 16, 16)
    x[:, :, 7:10, 7:10] = 1.0  # a marked block per image: where its centre lands is the image's shift
    out = augment(x, torch.Generator().manual_seed(0), per_image_shift=True)
    def centre(img):
        ys, xs = torch.nonzero(img[0] > 0.5, as_tuple=True)
        return round(ys.float().mean().item()), round(xs.float().mean().item())

    where = [centre(o) for o in out]
    unshifted = sum(w == (8, 8) for w in where) / len(where)
    assert 0.4 < unshifted < 0.65  # half kept aligned (plus the shifts that happen to be 0)
    assert len(set(where)) > 20   # the others scattered, image by image
    batch = augment(x, torch.Generator().manual_seed(0))
    assert len({centre(o) for o in batch}) == 1  # phase 1: one offset per batch


def test_resume_checkpoints_are_named_after_the_run_settings():
    """A 1 000-step run must not resume a finished 500-step run (its weights, schedule and random state): the
    checkpoint's name holds the run's settings as well as the sources' digest."""
    from tad_demo.toyworld.data import checkpoint

    trainer = Path(world.__file__).with_name("train_clip.py")
    a = checkpoint("clip_sharpen", trainer, sharpen_steps=500, start="x")
    assert a == checkpoint("clip_sharpen", trainer, start="x", sharpen_steps=500)  # same run: resumes
    assert a != checkpoint("clip_sharpen", trainer, sharpen_steps=1000, start="x")
    assert a != checkpoint("clip_sharpen", trainer, sharpen_steps=500, start="y")
    assert checkpoint("clip_sharpen", trainer).name.startswith("clip_sharpen_")


def test_colour_blotches_recolour_coloured_pixels_keep_greys_and_spare_the_rest():
    """Phase 2's colour blotches, on a red object over a grey background with a dark pip: inside a blotch the red
    turns another colour and the dark pip may lean towards a palette colour, the grey never changes; images not
    drawn for blotches (share 0.5) come back bit-identical, and share 0 changes nothing."""
    import torch

    from tad_demo.toyworld.train_clip import colour_blotches

    x = torch.zeros(64, 3, 32, 32)  # grey background (0 in [-1, 1])
    x[:, :, 8:24, 8:24] = torch.tensor([0.73, -0.69, -0.69])[:, None, None]  # the red of world.COLORS
    x[:, :, 14:18, 14:18] = -0.81  # the ink of world.INK
    out = colour_blotches(x, torch.Generator().manual_seed(0), 0.5)
    changed = (out != x).flatten(1).any(1)
    assert 0.3 < changed.float().mean() < 0.7  # about half the images
    assert torch.equal(out[:, :, :8], x[:, :, :8]) and torch.equal(out[:, :, 24:], x[:, :, 24:])  # grey kept
    red = out[changed][:, :, 8:24, 8:24]
    assert (red[:, 0] < 0.7).flatten(1).any(1).float().mean() > 0.6  # the red recoloured (swapping G and B keeps it)
    assert torch.equal(colour_blotches(x, torch.Generator().manual_seed(0), 0.0), x)


def test_twin_captions_swap_one_word_for_its_twin_and_weigh_by_strength():
    """The CLIP's hard negatives: the caption of the scene with the object's (or style's) word swapped for its
    twin; a full-strength target scores 0 for its anchor's caption, a half-strength one 0.5."""
    from tad_demo.toyworld.train_clip import twin, twin_caption

    rng = random.Random(0)
    assert twin("object", "smiley", rng) == "circle" and twin("style", "dotted", rng) == "plain"
    assert twin("object", "circle", rng) == "smiley" and twin("object", "cross", rng) is None
    assert twin("style", "plain", rng) in world.STYLE_TARGETS
    for strength, expected in ((1.0, 0.0), (0.5, 0.5)):
        scene = world.Scene(object="die", style="plain", color="red", background="grey", size="large", cx=0.5,
                            cy=0.5, seed=0, detail=strength)
        seen = set()
        for _ in range(40):
            text, asserted = twin_caption(scene, random.Random(len(seen) * 1000 + _))
            swapped = {a: v for a, v in asserted.items() if v != getattr(scene, a)}
            assert len(swapped) == 1, (text, asserted)  # exactly one word differs from the scene
            (attr, value), = swapped.items()
            seen.add(attr)
            assert value in text
            if attr == "object":
                assert value == "square" and world.caption_weight(scene, asserted) == pytest.approx(expected)
        assert seen == {"object", "style"}
    control = world.Scene(object="cross", style="plain", color="red", background="grey", size="large", cx=0.5,
                          cy=0.5, seed=0)
    assert all(twin_caption(control, random.Random(i))[1].get("style") in world.STYLE_TARGETS for i in range(10))


def test_strength_ranking_orders_a_targets_cosine_by_strength_with_its_anchor_at_zero():
    """Phase 2's ranking term, against hand-computed hinges: two smileys at 0.2 and 0.8 with the same cosine
    violate the margin by 0.1 · 0.6; a circle (smiley's anchor, strength 0) above a smiley violates it too; a
    heart takes no part; ordered cosines cost nothing."""
    import torch

    from tad_demo.toyworld.train_clip import strength_ranking

    def scene(obj: str, detail: float) -> world.Scene:
        return world.Scene(object=obj, style="plain", color="red", background="grey", size="large", cx=0.5,
                           cy=0.5, seed=0, detail=detail)

    text = {t: torch.tensor([1.0, 0.0]) for t in [*world.OBJECT_TARGETS, *world.STYLE_TARGETS]}
    feats = lambda *cos: torch.tensor([[c, (1 - c * c) ** 0.5] for c in cos])  # noqa: E731
    same = strength_ranking(feats(0.5, 0.5), [scene("smiley", 0.2), scene("smiley", 0.8)], text, 0.1)
    assert same.item() == pytest.approx(0.1 * 0.6)
    ordered = strength_ranking(feats(0.4, 0.6, 0.9), [scene("smiley", 0.2), scene("smiley", 0.8),
                                                      scene("heart", 1.0)], text, 0.1)
    assert ordered.item() == 0.0
    anchor = strength_ranking(feats(0.6, 0.5), [scene("circle", 1.0), scene("smiley", 0.5)], text, 0.1)
    assert anchor.item() == pytest.approx(0.1 * 0.5 + 0.1)


def test_vae_loss_weighs_edges_more_than_flat_areas():
    import torch

    from tad_demo.toyworld.train_vae import EDGE_WEIGHT, edge_weights

    x = -torch.ones(1, 3, 8, 8)
    x[..., 4:, :] = 1.0  # one horizontal edge between rows 3 and 4
    w = edge_weights(x)
    assert w[0, 0, 0, 0] == 1.0 and w[0, 0, 3, 0] == pytest.approx(1 + EDGE_WEIGHT)


def test_controls_are_in_no_ablation_prompt():
    """Held-out control concepts: never an anchor image, never in the preservation set, in any ablation."""
    import torch

    from tad_demo.toyworld.train_ablations import batch_maker, keep_indices, without_controls

    controls = set(world.CONTROL_OBJECTS)
    keep_scenes = [world.sample_scene(random.Random(f"k{i}")) for i in range(300)]
    assert any(s.object in controls for s in keep_scenes)  # the raw data has them: the filter must act
    for concept, (kind, anchor) in {**{t: ("object", a) for t, a in world.OBJECT_TARGETS.items()},
                                    **{t: ("style", a) for t, a in world.STYLE_TARGETS.items()}}.items():
        scenes = [world.sample_scene(random.Random(f"a{i}"), **{kind: anchor}) for i in range(100)]
        scenes = [scenes[i] for i in without_controls(scenes)]
        keep = keep_indices(keep_scenes, kind, concept)
        assert keep and all(getattr(keep_scenes[i], kind) != concept for i in keep)
        next_batch = batch_maker(scenes, torch.zeros(len(scenes), 1), kind, concept, keep_scenes,
                                 torch.zeros(len(keep_scenes), 1), keep, 16, random.Random(0))
        words = set()
        for step in range(20):
            b = next_batch(step)
            assert all(concept in p.split() for p in b.target_prompts)
            for p in b.target_prompts + b.anchor_prompts + b.keep_prompts:
                words.update(p.split())
        assert not words & controls, (concept, words & controls)
        assert anchor in words  # the anchor is regularised, as Kumari et al. do


def test_text_encoder_is_the_clip_text_tower_exactly(tmp_path):
    """The base's text encoder is the toy CLIP's text tower converted to transformers: same features."""
    import sys

    from transformers import CLIPTokenizer

    from tad_demo.toyworld.text_encoder import check_same_as_open_clip, text_encoder_from_clip

    sys.path.insert(0, str(Path(__file__).parent))
    from app_world import _tiny_clip

    _tiny_clip(tmp_path / "clip")
    tok = CLIPTokenizer.from_pretrained(tmp_path / "clip")
    model = text_encoder_from_clip(tmp_path / "clip", tok)
    prompts = ["smiley", "a large red smiley in striped style on a grey background", "A photo depicts star"]
    assert check_same_as_open_clip(tmp_path / "clip", model, tok, prompts) < 1e-5
    # and it is not trivially equal: another prompt gives other features
    ids = tok(prompts[:2], padding="max_length", return_tensors="pt").input_ids
    out = model(ids).last_hidden_state
    assert out.shape == (2, tok.model_max_length, model.config.hidden_size) and not out[0].allclose(out[1])


def test_tokenizer_knows_every_world_word(tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(write_tokenizer(tmp_path / "tok"))
    check_tokenizer(tok)  # raises if a word is not one known token
    assert tok.eos_token_id == len(tok) - 1  # CLIPTextModel pools at the argmax id
    ids = tok("a large red smiley in striped style on a grey background", padding=False).input_ids
    assert len(ids) == 13 and tok.unk_token_id not in ids[1:-1]  # 11 words, one token each, + BOS/EOS
    # Unknown words fall back to characters, never to the end-of-text id.
    assert tok.eos_token_id not in tok("zebra", add_special_tokens=False).input_ids


def test_smoke_training_of_every_trainer(tmp_path):
    """The one-command rebuild (train_all) with a few steps of each trainer, chained as in the real run."""
    import json

    from diffusers import ControlNetModel, StableDiffusionPipeline
    from safetensors.torch import load_file

    from tad_demo import TaskVector
    from tad_demo.toyworld import train_all

    out = tmp_path / "world"
    train_all.main(["--smoke", "--out", str(out), "--work", str(tmp_path / "work")])
    pipe = StableDiffusionPipeline.from_pretrained(out / "base")
    assert pipe.vae_scale_factor == 4
    assert (out / "clip" / "open_clip_config.json").is_file()
    meta = json.loads((out / "world.json").read_text())
    assert {c["name"] for c in meta["concepts"]} == {*world.OBJECT_TARGETS, *world.STYLE_TARGETS}
    weights = load_file(out / "ablations" / "smiley.safetensors")
    assert weights and all("attn2.to_k" in k or "attn2.to_v" in k for k in weights)
    tv = TaskVector.from_pair(out / "base", out / meta["concepts"][0]["checkpoint"])
    assert len(tv) == len(weights)
    for kind in ("canny", "depth", "scribble"):
        ControlNetModel.from_pretrained(out / "controlnet" / kind)
    assert (out / "examples" / "smiley_canny.png").is_file()
    with pytest.raises(SystemExit, match="unknown stage"):
        train_all.main(["--smoke", "--skip", "nope"])


ASSETS = Path(__file__).resolve().parents[1] / "assets" / "toyworld"


def test_assets_load_offline_with_plain_libraries():
    """The shipped models load with plain diffusers / open_clip, no project code."""
    import open_clip
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(ASSETS / "base")
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{ASSETS / 'clip'}")
    tok = open_clip.get_tokenizer(f"local-dir:{ASSETS / 'clip'}")
    assert model.encode_text(tok(["A photo depicts smiley"])).shape[-1] == 64
    meta = json.loads((ASSETS / "world.json").read_text())
    assert meta["concepts"] and all((ASSETS / c["checkpoint"]).is_file() for c in meta["concepts"])


@pytest.fixture(scope="module")
def shipped_eval():
    """The evaluation's machinery on the shipped world, 16 images per measurement (features cached across tests)."""
    from tad_demo.toyworld.evaluate import Evaluator, Sizes

    return Evaluator(ASSETS, Sizes(per_measure=16))


def test_quick_ablation_lowers_the_target_and_a_random_vector_does_not(shipped_eval):
    """λ = +1 flips most of 16 smileys to the anchor; a random vector with the same per-tensor norms does not."""
    from tad_demo.core.diagnostics import random_like

    ev = shipped_eval
    base = ev.target("smiley", {})["hit"].mean()
    ablated = ev.target("smiley", {"smiley": 1.0})["hit"].mean()
    random = ev.target("smiley", "random", combo=[(random_like(ev.vectors["smiley"], seed=0), 1.0)])["hit"].mean()
    assert ablated <= base - 0.4  # at least 7 of 16 images flip
    assert abs(random - base) <= 0.25


def test_quick_object_and_style_ablate_together(shipped_eval):
    """τ_smiley + τ_striped applied at once lowers both targets' accuracy by at least 4 of 16 images (fails if
    the sum is not applied; the model card's bar, both ≤ 0.15, is measured on 64 images by evaluate)."""
    ev = shipped_eval
    both = {"smiley": 1.0, "striped": 1.0}
    for name in ("smiley", "striped"):
        assert ev.target(name, both)["hit"].mean() <= ev.target(name, {})["hit"].mean() - 0.25, name


def test_quick_style_enhancement_raises_the_clip_score(shipped_eval):
    """λ = −1 raises striped's CLIP score over the same 16 prompts and seeds, by 2 standard errors of the paired
    difference (an unapplied vector gives a difference of exactly 0)."""
    ev = shipped_eval
    gain = ev.target("striped", {"striped": -1.0})["score"] - ev.target("striped", {})["score"]
    assert gain.mean() > 2 * gain.std(ddof=1) / len(gain) ** 0.5


def test_quick_enhancement_raises_the_clip_score(shipped_eval):
    """λ = −1 raises the target's CLIP score over the same 16 prompts and seeds: pooled over the seven targets by
    2 standard errors of the paired difference, and smiley's (an object whose enhancement the CLIP long scored
    below its base) by one; an unapplied vector gives a difference of exactly 0. The model card's bar, above
    base for every target, is measured on 64 images per target by evaluate."""
    import numpy as np

    ev = shipped_eval
    gains = {t: ev.target(t, {t: -1.0})["score"] - ev.target(t, {})["score"] for t in ev.vectors}
    pooled = np.concatenate(list(gains.values()))
    assert pooled.mean() > 2 * pooled.std(ddof=1) / len(pooled) ** 0.5
    smiley = gains["smiley"]
    assert smiley.mean() > smiley.std(ddof=1) / len(smiley) ** 0.5


def test_evaluate_writes_the_model_card_tables_on_a_tiny_world(tmp_path):
    """``evaluate --quick`` on a tiny random world: every section runs and the card's results block is rewritten
    (the text around it kept)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from app_world import build_tiny_world

    from tad_demo.toyworld import evaluate
    from tad_demo.toyworld.model_card import BEGIN, END

    root = build_tiny_world(tmp_path / "world")
    (root / "MODEL_CARD.md").write_text(f"# card\n\nintro kept\n\n{BEGIN}\nold\n{END}\n\nafter kept\n")
    evaluate.main(["--assets", str(root), "--quick", "--json", str(tmp_path / "res.json")])
    card = (root / "MODEL_CARD.md").read_text()
    assert "intro kept" in card and "after kept" in card and "\nold\n" not in card
    res = json.loads((tmp_path / "res.json").read_text())
    assert set(evaluate.SECTIONS) <= set(res)
    assert "| smiley → circle |" in card and "±" in card
    assert "| α | 1 − similarity | calibrated |" in card
    assert set(res["adaptive"]["auc_calibrated"]) == {"0.5", "1.0", "2.0"} and "| 0.5 and 2 (probe) | – |" in card
    assert res["adaptive"]["probe"]["alphas"] == [0.5, 2.0] and "| own AUC, probe 0.5 and 2 |" in card


def test_probe_prints_each_target_at_each_lambda_with_the_vector_applied(tmp_path, capsys):
    """``probe`` on a tiny random world: one line per checkpoint, every λ, and the vectors move the scores (every
    Δ would be +0.000 if they were never applied; the random CLIP scores striped at 0, clamped, so not every one)."""
    import re
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from app_world import build_tiny_world

    from tad_demo.toyworld import probe

    root = build_tiny_world(tmp_path / "world")
    probe.main(["--assets", str(root), "--ablations", str(root / "ablations"), "--n", "2", "--lambdas", "1,-1"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " → " in ln]
    assert [ln.split(" → ")[0] for ln in lines] == ["smiley", "striped"]
    deltas = []
    for ln in lines:
        assert "λ=+1 score" in ln and "λ=-1 score" in ln and "controls" in ln
        deltas += [float(d) for d in re.findall(r"Δ ([+-]\d\.\d+)", ln)]
    assert len(deltas) == 4 and any(d != 0 for d in deltas), lines
    # every λ names its images with words of the target's kind
    assert all(ln.count("named ") == 3 for ln in lines)
    assert re.search(r"named (smiley|die|warning|kite|circle|square|triangle|diamond|cross|heart|star) \d", lines[0])
    assert re.search(r"named (striped|dotted|checkered|plain) \d", lines[1])

    # --line: the base alone along each target's anchor-to-target line; t = 1 is the prompt itself, and moving
    # along the line changes the pictures (every Δ would be +0.000 if t were not applied)
    probe.main(["--assets", str(root), "--line", "0,2", "--n", "2", "--concepts", "smiley,die"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " → " in ln]
    assert [ln.split(" → ")[0] for ln in lines] == ["smiley", "die"]
    assert all("t=1 score" in ln and "t=0 score" in ln and "t=2 score" in ln for ln in lines)
    line_deltas = [float(d) for ln in lines for d in re.findall(r"Δ ([+-]\d\.\d+)", ln)]
    assert len(line_deltas) == 4 and any(d != 0 for d in line_deltas), lines

    # --directions: one line per template, every pair of targets of its kind, cosines in [-1, 1]
    probe.main(["--assets", str(root), "--ablations", str(root / "ablations"), "--directions"])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(probe.DIRECTION_PROMPTS)
    assert "smiley·die" in out[0] and "warning·kite" in out[0] and "striped·dotted" in out[2]
    cosines = [float(c) for ln in out for c in re.findall(r" ([+-]\d\.\d\d)", ln)]
    assert len(cosines) == 2 * 6 + 2 * 3 and all(-1 <= c <= 1 for c in cosines)
    assert len(set(cosines)) > 1  # real measurements, not one constant
    # --clip reads the text tower from a CLIP folder: on the shipped world, whose base's text encoder is converted
    # from its CLIP, the same numbers (this tiny world's text encoder is random, not its CLIP's)
    shipped = Path(__file__).parents[1] / "assets" / "toyworld"
    probe.main(["--assets", str(shipped), "--directions"])
    from_base = capsys.readouterr().out.splitlines()
    probe.main(["--directions", "--clip", str(shipped / "clip")])
    assert capsys.readouterr().out.splitlines() == from_base and len(from_base) == len(probe.DIRECTION_PROMPTS)
