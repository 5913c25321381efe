"""`python -m tad_demo ablate`: a made checkpoint is an ablation file the vector tools and the app consume."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from tad_demo.cli import main


def test_ablate_writes_a_kv_checkpoint_that_loads_as_a_vector(tiny_pipeline_dir, kv_keys, tmp_path, capsys):
    from tad_demo import TaskVector
    from tad_demo.core.recipe import sha256_path
    from tad_demo.runtime.models import Models

    out = tmp_path / "smiley.safetensors"
    assert main(["ablate", "--base", str(tiny_pipeline_dir), "--concept", "smiley", "--anchor", "circle",
                 "--out", str(out), "--steps", "2", "--n-anchor", "2", "--batch", "2", "--gen-steps", "2",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["device"] == "cpu" and result["tensors"] == len(kv_keys) and result["delta_norm"] > 0
    with safe_open(str(out), "pt") as f:
        assert sorted(f.keys()) == sorted(kv_keys)  # bare diffusers UNet names, k/v of attn2 only
        meta = f.metadata()
    assert meta["concept"] == "smiley" and meta["anchor"] == "circle" and meta["steps"] == "2"
    assert meta["base_sha256"] == sha256_path(tiny_pipeline_dir)

    tv = TaskVector.from_pair(tiny_pipeline_dir, out)
    assert len(tv) == len(kv_keys) and tv.norm() > 0
    assert all(("attn2.to_k" in k or "attn2.to_v" in k) for k in tv.keys())
    models = Models()  # the app's loader: an "ablation" checkpoint against the live base
    models.load_base(str(tiny_pipeline_dir))
    live = models.vector(str(out), kind="ablation")
    assert sorted(live.keys()) == sorted(tv.keys()) and abs(live.norm() - tv.norm()) < 1e-6 * tv.norm()


def test_keep_prompts_add_preserved_images(tiny_pipeline_dir, tmp_path, capsys):
    keep = tmp_path / "keep.txt"
    keep.write_text("a cross in plain style\n\na heart in dotted style\n")
    out = tmp_path / "smiley.safetensors"
    assert main(["ablate", "--base", str(tiny_pipeline_dir), "--concept", "smiley", "--anchor", "circle",
                 "--out", str(out), "--steps", "2", "--n-anchor", "2", "--batch", "2", "--gen-steps", "2",
                 "--keep-prompts", str(keep), "--n-keep", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["preserved_images"] == 2 + 3  # the anchor images and 3 images of the 2 kept prompts
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["keep_prompts"] == f"{keep} (3 images)"


@pytest.mark.parametrize("flags, needle", [
    (["--base", "{tmp}/nowhere", "--concept", "smiley", "--anchor", "circle"], "--base '{tmp}/nowhere' not found"),
    (["--base", "{pipe}", "--concept", " ", "--anchor", "circle"], "--concept is empty"),
    (["--base", "{pipe}", "--concept", "smiley", "--anchor", ""], "--anchor is empty"),
    (["--base", "{pipe}", "--concept", "dog", "--anchor", "dog"], "both 'dog'"),
    (["--base", "{pipe}", "--concept", "a", "--anchor", "b", "--steps", "0"], "--steps 0"),
    (["--base", "{pipe}", "--concept", "a", "--anchor", "b", "--lr", "nan"], "--lr nan"),
    (["--base", "{toy}/base", "--concept", "zebra", "--anchor", "circle"], "--concept 'zebra' is not a toy-world"),
    (["--base", "{pipe}", "--concept", "a", "--anchor", "b", "--keep-prompts", "{tmp}/no.txt"],
     "--keep-prompts '{tmp}/no.txt' not found"),
    (["--base", "{pipe}", "--concept", "a", "--anchor", "b", "--keep-prompts", "{tmp}/empty.txt"],
     "--keep-prompts '{tmp}/empty.txt' has no prompts"),
    (["--base", "{pipe}", "--concept", "smiley", "--anchor", "b", "--keep-prompts", "{tmp}/self.txt"],
     "'a smiley in plain style' names the concept 'smiley'"),
    (["--base", "{pipe}", "--concept", "a", "--anchor", "b", "--n-keep", "0"], "--n-keep 0"),
])
def test_bad_inputs_give_one_line_errors(tiny_pipeline_dir, tmp_path, capsys, flags, needle):
    (tmp_path / "toy" / "base").mkdir(parents=True)  # a toy-world layout: base/ next to world.json
    (tmp_path / "toy" / "world.json").write_text("{}")
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "self.txt").write_text("a heart\na smiley in plain style\n")
    fill = {"tmp": str(tmp_path), "pipe": str(tiny_pipeline_dir), "toy": str(tmp_path / "toy")}
    argv = ["ablate", *(f.format(**fill) for f in flags), "--out", str(tmp_path / "x.safetensors")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0 and needle.format(**fill) in err
    assert not (tmp_path / "x.safetensors").exists()


def test_existing_output_needs_force(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"keep me")
    assert main(["ablate", "--base", str(tiny_pipeline_dir), "--concept", "a", "--anchor", "b",
                 "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"keep me"
