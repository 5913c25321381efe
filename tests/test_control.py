"""Condition images: canny, sketches → scribbles, resize modes, missing-annotator errors, toy-world examples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tad_demo.core.world import World
from tad_demo.runtime import control
from tad_demo.runtime.control import AnnotatorUnavailable, ControlError, from_sketch, make_condition, prepare
from tad_demo.toyworld import examples, world


def _sketch(mode: str = "RGB", size=(40, 30)) -> Image.Image:
    """A diagonal stroke: dark on white (RGB) or opaque black on transparent (RGBA)."""
    if mode == "RGBA":
        im = Image.new("RGBA", size, (0, 0, 0, 0))
        ImageDraw.Draw(im).line([(2, 2), (size[0] - 3, size[1] - 3)], fill=(0, 0, 0, 255), width=3)
    else:
        im = Image.new("RGB", size, "white")
        ImageDraw.Draw(im).line([(2, 2), (size[0] - 3, size[1] - 3)], fill=(20, 20, 20), width=3)
    return im


# --- canny -----------------------------------------------------------------------------------------------

def test_canny_gives_white_edges_on_black_at_the_requested_size():
    img = world.render(examples.example_scene("smiley"), 64)
    edges = np.asarray(control.canny(img, low=50, high=120))
    assert edges.shape == (64, 64, 3)
    assert (edges == 0).mean() > 0.6, "mostly black background"
    assert (edges > 200).sum() > 50, "white edges along the shape"
    # a size that CannyDetector would round (it snaps sides to multiples of 64) comes back exact
    cond = make_condition("canny", img, width=48, height=32, mode="crop")
    assert cond.size == (48, 32) and cond.image.mode == "RGB"
    assert "48×32" in cond.describe()


# --- sketches ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_sketch_becomes_white_strokes_on_black(mode):
    out = np.asarray(from_sketch(_sketch(mode)))
    assert out.shape == (30, 40, 3)
    assert set(np.unique(out)) == {0, 255}
    assert out[15, 20].tolist() == [255, 255, 255], "the stroke is white"
    assert out[2, 37].tolist() == [0, 0, 0], "the background is black"
    assert (out == 255).mean() < 0.3


def test_sketch_already_white_on_black_is_kept_and_editor_values_work():
    src = Image.fromarray(255 - np.asarray(_sketch("RGB")))  # light strokes on dark
    assert np.array_equal(np.asarray(from_sketch(src)), np.asarray(from_sketch(_sketch("RGB"))))
    # gr.Sketchpad / gr.ImageEditor value: a dict with a composite (or background + layers)
    value = {"background": None, "layers": [np.asarray(_sketch("RGBA"))], "composite": None}
    assert np.array_equal(np.asarray(from_sketch(value)), np.asarray(from_sketch(_sketch("RGBA"))))
    value = {"composite": np.asarray(_sketch("RGBA"))}
    assert (np.asarray(from_sketch(value)) == 255).any()


def test_empty_sketch_is_an_error():
    with pytest.raises(ControlError, match="sketch is empty"):
        from_sketch(Image.new("RGB", (16, 16), "white"))
    with pytest.raises(ControlError, match="sketch is empty"):
        from_sketch(Image.new("RGBA", (16, 16), (0, 0, 0, 0)))


def test_sketch_condition_at_generation_size():
    cond = make_condition("scribble", _sketch("RGBA", (200, 100)), source="sketch", width=64, height=64, mode="pad")
    arr = np.asarray(cond.image)
    assert cond.size == (64, 64) and set(np.unique(arr)) <= {0, 255} and (arr == 255).any()


# --- resizing ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["resize", "crop", "pad"])
@pytest.mark.parametrize("size", [(64, 64), (48, 32), (32, 80)])
def test_resize_modes_give_the_requested_size(mode, size):
    src = Image.new("RGB", (100, 50), "white")
    out, final = prepare(src, *size, mode=mode)
    assert out.size == final == size and out.mode == "RGB"


def test_pad_fills_black_and_crop_keeps_the_centre():
    src = Image.new("RGB", (100, 50), "white")
    padded = np.asarray(prepare(src, 64, 64, "pad")[0])
    assert padded[0, 32].tolist() == [0, 0, 0] and padded[32, 32].tolist() == [255, 255, 255]
    wide = Image.new("RGB", (90, 30), "black")
    ImageDraw.Draw(wide).rectangle([30, 0, 59, 29], fill="white")  # the middle third is white
    cropped = np.asarray(prepare(wide, 30, 30, "crop")[0])
    assert (cropped > 200).mean() > 0.9


def test_bad_requests_fail_early_with_one_line():
    with pytest.raises(ControlError, match="resize mode 'stretch'"):
        prepare(Image.new("RGB", (8, 8)), 8, 8, mode="stretch")
    with pytest.raises(ControlError, match="width"):
        prepare(Image.new("RGB", (8, 8)), 0, 8)
    with pytest.raises(ControlError, match="needs an image"):
        make_condition("depth", None, width=8, height=8)
    with pytest.raises(ControlError, match="not one of"):
        make_condition("none", Image.new("RGB", (8, 8)), width=8, height=8)


def test_uploaded_map_is_used_as_is():
    depth = world.condition("depth", examples.example_scene("die"), 64)
    cond = make_condition("depth", depth, source="map", width=64, height=64)
    assert np.array_equal(np.asarray(cond.image), np.asarray(depth))


# --- annotators without weights ------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "filename"), [("depth", "dpt_hybrid-midas-501f0c75.pt"),
                                                ("scribble", "ControlNetHED.pth")])
def test_missing_annotator_names_what_to_download(kind, filename, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("TAD_ANNOTATORS", str(tmp_path / "annotators"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(AnnotatorUnavailable) as e:
        make_condition(kind, Image.new("RGB", (32, 32), "gray"), width=32, height=32)
    msg = str(e.value)
    assert "\n" not in msg
    assert "lllyasviel/Annotators" in msg and filename in msg and "TAD_ANNOTATORS" in msg
    assert f"upload a ready {kind} map" in msg


def test_annotator_files_are_found_in_the_env_folder(monkeypatch, tmp_path):
    (tmp_path / "ControlNetHED.pth").write_bytes(b"")
    monkeypatch.setenv("TAD_ANNOTATORS", str(tmp_path))
    assert control.annotator_path("ControlNetHED.pth") == tmp_path / "ControlNetHED.pth"


# --- the toy world's examples ----------------------------------------------------------------------------------

def test_toy_examples_are_written_with_their_maps(tmp_path):
    files = examples.write_examples(tmp_path / "examples", size=64)
    index = json.loads((tmp_path / "examples" / "examples.json").read_text())["examples"]
    assert {e["name"] for e in index} == set(examples.EXAMPLES)
    assert len(files) == len(examples.EXAMPLES) * 4 + 1
    for e in index:
        for kind in ("canny", "depth", "scribble"):
            with Image.open(tmp_path / "examples" / e["files"][kind]) as im:
                saved = np.asarray(im.convert("RGB"))
            assert np.array_equal(saved, np.asarray(examples.example_condition(kind, e["name"])))
    # a world folder with these examples gives the same maps to the grid and the app (read back from the files)
    World(root=tmp_path).save()
    assert np.array_equal(np.asarray(control.example_condition(World.load(tmp_path), "scribble", "smiley")),
                          np.asarray(examples.example_condition("scribble", "smiley")))
    with pytest.raises(ControlError, match="no example named 'snoopy'"):
        control.example_condition(World.load(tmp_path), "canny", "snoopy")
    with pytest.raises(ValueError, match="no example named"):
        examples.example_scene("snoopy")
