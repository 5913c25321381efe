"""Recipes (YAML round trip, validation, provenance) and the CLI subcommands on tiny components."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import perturbed
from safetensors.torch import load_file, safe_open, save_file

from tad_demo import TaskVector
from tad_demo.cli import main as cli_main
from tad_demo.core.recipe import Recipe, RecipeError, sha256_path


@pytest.fixture(scope="module")
def ablation_files(tiny_pipeline_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """Two toy-style ablation checkpoints: fine-tuned k/v weights with bare diffusers names."""
    from diffusers import UNet2DConditionModel

    base = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir / "unet").state_dict()
    keys = [k for k in base if "attn2.to_k" in k or "attn2.to_v" in k]
    out = tmp_path_factory.mktemp("abl")
    files = {}
    for name, seed in (("alpha", 1), ("beta", 2)):
        ft = perturbed(base, keys, seed=seed)
        files[name] = out / f"{name}.safetensors"
        save_file({k: ft[k].contiguous() for k in keys}, str(files[name]))
    return files


def _recipe(tiny_pipeline_dir, ablation_files, **kw) -> Recipe:
    text = f"""
tad_recipe: 1
base: {tiny_pipeline_dir}
vectors:
  - {{name: alpha, source: {ablation_files['alpha']}, kind: ablation, lambda: 1.0}}
  - {{name: beta, source: {ablation_files['beta']}, lambda: -0.5}}
merge: {{method: linear, params: {{}}}}
scope: cross_attn_kv
"""
    return Recipe.from_yaml(text)


def test_recipe_roundtrip(tiny_pipeline_dir, ablation_files):
    r = _recipe(tiny_pipeline_dir, ablation_files)
    assert [v.name for v in r.vectors] == ["alpha", "beta"] and r.vectors[1].lam == -0.5
    again = Recipe.from_yaml(r.to_yaml())
    assert again.to_dict() == r.to_dict()


def test_recipe_hashes_are_sha256_of_inputs(tiny_pipeline_dir, ablation_files):
    r = _recipe(tiny_pipeline_dir, ablation_files).with_hashes()
    import hashlib

    assert r.hashes[str(ablation_files["alpha"])] == hashlib.sha256(ablation_files["alpha"].read_bytes()).hexdigest()
    assert r.hashes[str(tiny_pipeline_dir)] == sha256_path(tiny_pipeline_dir)


def test_recipe_merged_vector_is_weighted_sum(tiny_pipeline_dir, ablation_files):
    r = _recipe(tiny_pipeline_dir, ablation_files)
    merged = r.merged_vector()
    a = TaskVector.from_pair(tiny_pipeline_dir, ablation_files["alpha"])
    b = TaskVector.from_pair(tiny_pipeline_dir, ablation_files["beta"])
    expect = a - 0.5 * b
    for k in expect.keys():
        assert torch.allclose(merged[k], expect[k], atol=1e-7)


@pytest.mark.parametrize("text, message", [
    ("base: x\n", "missing 'tad_recipe: 1'"),
    ("tad_recipe: 7\nbase: x\n", "version 7 is not supported"),
    ("tad_recipe: 1\n", "'base' is required"),
    ("tad_recipe: 1\nbase: x\nvectors: [{source: a, lambda: .nan}]\n", r"vectors\[0\]: lambda nan"),
    ("tad_recipe: 1\nbase: x\nvectors: [{source: a, kind: magic}]\n", "kind 'magic' is not one of"),
    ("tad_recipe: 1\nbase: x\nvectors: [{source: a, name: n}, {source: b, name: n}]\n", "duplicate vector name"),
    ("tad_recipe: 1\nbase: x\nextra: 1\n", r"unknown field\(s\) \['extra'\]"),
    ("tad_recipe: [1\n", "not valid YAML"),
])
def test_recipe_errors(text, message):
    with pytest.raises(RecipeError, match=message):
        Recipe.from_yaml(text)


# --- CLI ----------------------------------------------------------------------------------------------

def test_cli_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "tad_demo", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("vector", "inspect", "merge", "convert"):
        assert cmd in out.stdout


def test_cli_vector_and_inspect(tiny_pipeline_dir, ablation_files, tmp_path, capsys):
    for name in ("alpha", "beta"):
        assert cli_main(["vector", "--base", str(tiny_pipeline_dir), "--finetuned", str(ablation_files[name]),
                         "--out", str(tmp_path / f"{name}.safetensors"), "--json"]) == 0
    capsys.readouterr()
    tv = TaskVector.load(tmp_path / "alpha.safetensors")
    assert tv.keys() and all(k.startswith("unet.") for k in tv.keys())
    assert cli_main(["inspect", str(tmp_path / "alpha.safetensors"), str(tmp_path / "beta.safetensors"),
                     "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    m = data["cosine"]["matrix"]
    assert m[0][0] == pytest.approx(1.0) and abs(m[0][1]) < 0.5
    assert cli_main(["inspect", str(tmp_path / "alpha.safetensors")]) == 0
    assert "cosine similarity" in capsys.readouterr().out


def test_cli_error_is_one_line(tmp_path, capsys):
    assert cli_main(["vector", "--base", str(tmp_path / "nope"), "--finetuned", str(tmp_path / "x.safetensors"),
                     "--out", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and ("nope" in err or "x.safetensors" in err) and "\n" not in err  # a missing path
    assert not (tmp_path / "o.safetensors").exists()


def test_cli_convert(tmp_path, capsys):
    src = tmp_path / "m.ckpt"
    torch.save({"state_dict": {"a.weight": torch.ones(2, 2)}, "global_step": 3}, src)
    assert cli_main(["convert", str(src), str(tmp_path / "m.safetensors")]) == 0
    assert torch.equal(load_file(tmp_path / "m.safetensors")["a.weight"], torch.ones(2, 2))


@pytest.mark.parametrize("suffix", ["", ".safetensors"])
def test_cli_merge_saves_model_with_provenance(tiny_pipeline_dir, ablation_files, tmp_path, suffix, capsys):
    recipe_path = _recipe(tiny_pipeline_dir, ablation_files).save(tmp_path / "r.yaml")
    out = tmp_path / f"merged{suffix}"
    assert cli_main(["merge", "--recipe", str(recipe_path), "--out", str(out)]) == 0
    a = TaskVector.from_pair(tiny_pipeline_dir, ablation_files["alpha"])
    b = TaskVector.from_pair(tiny_pipeline_dir, ablation_files["beta"])
    expected = (a - 0.5 * b).component("unet")
    from diffusers import UNet2DConditionModel

    base_unet = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir / "unet").state_dict()
    want = expected.apply(base_unet)
    if suffix:
        got = {k.removeprefix("unet."): v for k, v in load_file(out).items() if k.startswith("unet.")}
        with safe_open(str(out), "pt") as f:
            meta = f.metadata()
        assert Recipe.from_yaml(meta["tad_recipe"]).vectors[1].lam == -0.5
        assert str(ablation_files["alpha"]) in json.loads(meta["tad_hashes"])
    else:
        got = UNet2DConditionModel.from_pretrained(out / "unet").state_dict()
        assert Recipe.load(out / "tad_recipe.yaml").hashes
    for k in want:
        assert torch.equal(got[k], want[k]), k
