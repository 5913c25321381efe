"""The one reader/writer of world.json (tad_demo/core/world.py) and the one table of limits."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tad_demo.core.errors import WorldError
from tad_demo.core.limits import APP, HARD
from tad_demo.core.world import Concept, World
from tad_demo.toyworld import world as toy

ROOT = Path(__file__).resolve().parents[1]


def test_the_toy_worlds_manifest_round_trips_through_the_one_writer(tmp_path):
    manifest = toy.manifest()
    w = World.from_dict(manifest, tmp_path)
    assert [c.name for c in w.concepts] == [c["name"] for c in manifest["concepts"]]
    smiley = w.concept("smiley")
    assert smiley == Concept("smiley", "object", "circle", str(tmp_path / "ablations" / "smiley.safetensors"),
                             "ablation", smiley.hard_negatives)
    w.save()
    back = json.loads((tmp_path / "world.json").read_text())
    assert back["concepts"][0]["checkpoint"] == "ablations/smiley.safetensors"  # relative again
    assert {k: v for k, v in back.items() if k != "concepts"} == \
        {k: v for k, v in manifest.items() if k != "concepts"}
    assert World.load(tmp_path).to_dict() == back


def test_the_shipped_world_reads_with_defaults_and_vocabulary():
    w = World.load(ROOT / "assets" / "toyworld")
    assert (w.steps, w.guidance, w.height, w.width) == (20, 5.0, 64, 64)
    assert w.template == "a {object} in {style} style"
    assert w.kind_of("plain") == "style" and w.kind_of("cross") == "object" and w.kind_of("striped") == "style"
    assert set(w.control_concepts) <= set(w.objects)
    assert "smiley" in w.example_names() and w.example_file("smiley", "canny").is_file()


def test_words_are_drawn_in_manifest_order_and_pinned_slots_do_not_shift_the_others():
    w = World.from_dict(toy.manifest(), "toy")
    a = w.sample_words(random.Random(3))
    b = w.sample_words(random.Random(3), object="heart")
    assert list(a) == ["object", "style", *w.attributes]
    assert b["object"] == "heart" and {k: v for k, v in a.items() if k != "object"} == \
        {k: v for k, v in b.items() if k != "object"}
    with pytest.raises(WorldError, match="unknown slot"):
        w.sample_words(random.Random(0), mood="happy")


def test_bad_worlds_are_named(tmp_path):
    with pytest.raises(WorldError, match="world.json missing"):
        World.load(tmp_path)
    (tmp_path / "world.json").write_text("{not json")
    with pytest.raises(WorldError, match="not valid JSON"):
        World.load(tmp_path)
    bad = {"concepts": [{"name": "x", "kind": "shape", "anchor": "y", "checkpoint": "x.safetensors"}]}
    with pytest.raises(WorldError, match=r"concepts\[0\] \(x\): kind must be one of object, style"):
        World.from_dict(bad, tmp_path)


def test_the_apps_caps_never_exceed_the_hard_bounds():
    hard = {"max_steps": HARD.steps, "max_side": HARD.max_side, "max_images": HARD.images,
            "max_lambda": HARD.lambda_, "max_guidance": HARD.guidance, "max_scale": HARD.conditioning_scale,
            "max_seed": HARD.seed, "max_lambdas": HARD.axis}
    for name, cap in APP.items():
        assert cap.lo <= cap.default <= cap.hi, name
        if name in hard:
            assert cap.hi == hard[name], name
