"""Batch evaluation (`python -m tad_demo eval`): resume after a kill or a torn write, accelerate sharding, config
errors. On the tiny random world: its images mean nothing, but every float must be reproducible."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from app_world import build_tiny_world, free_port

from tad_demo.research.batch_eval import (
    COLUMNS,
    EvalError,
    EvalSpec,
    build_lab,
    cell_id,
    plan,
    run_eval,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_tiny_world(tmp_path_factory.mktemp("evalworld") / "world")


def config(world: Path, **over) -> dict:
    # 2 concepts × 2 λ × 2 prompts × 2 seeds = 16 cells; batch 3 → units of 3 + 1 per (concept, λ): 8 units.
    return {"tad_eval": 1, "world": str(world), "concepts": ["smiley", "striped"], "lambdas": [0, 1],
            "n_prompts": 2, "seeds": [1, 2], "batch_size": 3, **over}


@pytest.fixture(scope="module")
def lab(world):
    return build_lab(EvalSpec.from_dict(config(world)))


def part_rows(out: Path) -> list[dict]:
    rows = []
    for p in sorted((out / "parts").glob("part-*.csv")):
        with open(p, newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


class Stop(Exception):
    pass


def test_killed_and_torn_runs_resume_to_the_uninterrupted_csv(world, lab, tmp_path):
    spec = EvalSpec.from_dict(config(world))
    ref = run_eval(spec, tmp_path / "ref", lab=lab)
    assert ref["cells"] == 16 and ref["units"] == 8 and ref["units_run"] == 8
    ref_text = (tmp_path / "ref" / "results.csv").read_text()
    ref_rows = list(csv.DictReader(ref_text.splitlines()))
    assert [r["cell_id"] for r in ref_rows] == sorted(r["cell_id"] for r in ref_rows)
    assert len({r["cell_id"] for r in ref_rows}) == 16
    assert {r["clip_accuracy"] for r in ref_rows} <= {"0", "1"}
    for r in ref_rows:  # the id is the documented hash of (concept, λ, prompt, seed)
        assert r["cell_id"] == cell_id(r["concept"], float(r["lambda"]), r["prompt"], int(r["seed"]))

    # 1. killed after 2 batches (raise from the progress callback)
    out = tmp_path / "run"

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        run_eval(spec, out, lab=lab, progress=stop_after_two)
    assert len(part_rows(out)) == 4  # units 0 and 1 (3 + 1 cells) written, nothing else
    assert not (out / "results.csv").exists()

    # 2. ... and killed again in the middle of writing the third batch: one complete row, one torn row
    third = plan(spec, lab)[2]
    by_id = {r["cell_id"]: r for r in ref_rows}
    done_row = ",".join(by_id[third.cells[0].cell_id][c] for c in COLUMNS) + "\n"
    torn = ",".join(by_id[third.cells[1].cell_id][c] for c in COLUMNS)[:25]
    with open(out / "parts" / "part-000.csv", "a") as f:
        f.write(done_row + torn)

    # 3. rerun: only what is missing runs, the torn line is gone, the result is byte-identical
    res = run_eval(spec, out, lab=lab)
    assert res["units_run"] == 6 and res["rows_written"] == 16 - 5
    assert (out / "results.csv").read_text() == ref_text
    assert (out / "summary.csv").read_text() == (tmp_path / "ref" / "summary.csv").read_text()
    ids = [r["cell_id"] for r in part_rows(out)]
    assert len(ids) == len(set(ids)) == 16  # no duplicates, nothing lost
    assert (out / "parts" / "part-000.csv").read_text().endswith("\n")

    # 4. a finished run reruns nothing; changed settings are refused instead of mixing rows
    assert run_eval(spec, out, lab=lab)["units_run"] == 0
    with pytest.raises(EvalError, match=r"batch_size was 3, the config says 4"):
        run_eval(EvalSpec.from_dict(config(world, batch_size=4)), out, lab=lab)


@pytest.mark.slow
def test_accelerate_two_processes_equal_one_process(world, lab, tmp_path):
    """`accelerate launch` with 2 CPU processes (torchrun + gloo) writes the same CSV as one process, bit for bit:
    every unit is generated with the same composition in both, and each process uses one thread, like the
    reference (the thread count changes CPU float results in the last digits)."""
    cfg = tmp_path / "table.yaml"
    cfg.write_text(yaml.safe_dump(config(world)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_eval(EvalSpec.load(cfg), tmp_path / "one", lab=lab)
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "tad_demo", "eval", "--config", str(cfg),
           "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 of 8 units run here" in proc.stdout and "on 2 process(es)" in proc.stdout
    parts = sorted(p.name for p in (tmp_path / "two" / "parts").iterdir())
    assert parts == ["part-000.csv", "part-001.csv"]
    ids = [r["cell_id"] for r in part_rows(tmp_path / "two")]
    assert len(ids) == len(set(ids)) == 16  # every cell once
    assert (tmp_path / "two" / "results.csv").read_text() == (tmp_path / "one" / "results.csv").read_text()


@pytest.mark.parametrize("over, needle", [
    ({"tad_eval": 2}, "tad_eval: 2"),
    ({"colour": "red"}, "colour: unknown key"),
    ({"lambdas": [0, "x"]}, "lambdas: 'x'"),
    ({"lambdas": [1, 1.0]}, "lambdas: 1.0 is listed twice"),
    ({"lambdas": []}, "lambdas: give at least one"),
    ({"seeds": [1, -3]}, "seeds: -3"),
    ({"seeds": {"start": 0}}, "seeds: {'start': 0}"),
    ({"n_prompts": 0}, "n_prompts: 0"),
    ({"batch_size": 0}, "batch_size: 0"),
    ({"steps": 2.5}, "steps: 2.5"),
    ({"guidance": 99}, "guidance: 99"),
    ({"height": 30}, "height: 30"),
    ({"concepts": [{"name": ""}]}, "concepts[0].name: ''"),
    ({"concepts": [{"name": "smiley", "kind": "shape"}]}, "concepts[0].kind: 'shape'"),
    ({"concepts": [{"name": "smiley", "colour": 1}]}, "concepts[0].colour: unknown key"),
    ({"concepts": ["smiley", "smiley"]}, "concepts: 'smiley' is listed twice"),
    ({"concepts": "smiley"}, "concepts: 'smiley'"),
    ({"prompts": {"kite": ["a kite"]}}, "prompts: 'kite'"),
    ({"prompts": {"smiley": ["a\nsmiley"]}}, "prompts.smiley: 'a\\nsmiley'"),
    ({"base": "x/base"}, "with a base model every concept needs"),
])
def test_bad_config_values_give_one_line_errors(world, over, needle):
    with pytest.raises(EvalError) as e:
        EvalSpec.from_dict(config(world, **over), origin="t.yaml")
    msg = str(e.value)
    assert needle in msg and msg.startswith("t.yaml: ") and "\n" not in msg


def test_unknown_concepts_and_checkpoints_are_named(world, tmp_path):
    with pytest.raises(EvalError, match=r"concepts\[1\]: 'kite' is not a concept of the world"):
        build_lab(EvalSpec.from_dict(config(world, concepts=["smiley", "kite"])))
    missing = {"name": "heart", "anchor": "circle", "checkpoint": "nope.safetensors"}
    with pytest.raises(EvalError, match=r"concepts\[0\].checkpoint: 'nope.safetensors' not found"):
        build_lab(EvalSpec.from_dict(config(world, concepts=[missing])))


def test_cli_reports_a_bad_config_in_one_line(world, tmp_path, capsys):
    from tad_demo.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(config(world, lambdas=[0, 500])))
    assert main(["eval", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "lambdas: 500" in err and str(cfg) in err


def test_example_config_is_valid():
    spec = EvalSpec.load(REPO / "examples" / "table_toy.yaml")
    assert spec.base is None and spec.n_cells == len(spec.concepts) * len(spec.lambdas) * spec.n_prompts * \
        len(spec.seeds)


def test_hard_negatives_are_evaluated_on_the_concepts_weights(world, lab, tmp_path):
    """``hard_negatives: true``: each hard negative's prompts (the concept's, word replaced) on the concept's
    weights, scored against that word and the anchor — Kumari et al.'s evaluate.py rows for e.g. snoopy → beagles."""
    cfg = config(world, concepts=[{"name": "smiley", "hard_negatives": ["heart", "kite"]}], lambdas=[1],
                 seeds=[1], hard_negatives=True, batch_size=6)  # one unit: the check below regenerates it
    spec = EvalSpec.from_dict(cfg)
    assert EvalSpec.from_dict(spec.to_dict()).to_dict() == spec.to_dict()
    hn_lab = build_lab(spec, models=lab.models)
    cells = [c for u in plan(spec, hn_lab) for c in u.cells]
    assert [c.word for c in cells] == ["smiley"] * 2 + ["heart"] * 2 + ["kite"] * 2
    assert all(c.concept == "smiley" and c.lam == 1.0 for c in cells)
    assert [c.prompt.replace("heart", "smiley") for c in cells[2:4]] == [c.prompt for c in cells[:2]]
    res = run_eval(spec, tmp_path / "hn", lab=hn_lab)
    rows = list(csv.DictReader((tmp_path / "hn" / "results.csv").open()))
    assert sorted(r["target"] for r in rows) == sorted(["smiley"] * 2 + ["heart"] * 2 + ["kite"] * 2)
    assert [(s["target"], s["images"]) for s in res["summary"]] == [("smiley", 2), ("heart", 2), ("kite", 2)]
    # each row's score is its own word's CLIP score against the anchor, on the ablated weights' image
    by_prompt = {r["prompt"]: r for r in rows}
    images = hn_lab.generate([c.prompt for c in cells], [c.seed for c in cells], [(hn_lab.vector("smiley"), 1.0)],
                             batch_size=len(cells))
    heart = [c for c in cells if c.word == "heart"]
    expect = hn_lab.scorer.per_image(images[2:4], "heart", heart[0].anchor, heart[0].kind)
    for c, (score, beats) in zip(heart, expect):
        assert float(by_prompt[c.prompt]["clip_score"]) == pytest.approx(score, rel=1e-4)
        assert by_prompt[c.prompt]["clip_accuracy"] == ("1" if beats else "0")
    summary = list(csv.DictReader((tmp_path / "hn" / "summary.csv").open()))
    assert [s["target"] for s in summary] == ["smiley", "heart", "kite"]
    bad = config(world, concepts=[{"name": "smiley", "hard_negatives": "heart"}])
    with pytest.raises(EvalError, match="hard_negatives"):
        EvalSpec.from_dict(bad)
