"""Adaptive vector selection (tad_demo/research/adaptive.py): exactness of the shared-prefix loop, the UNet call
count, bit-exact weights, the ROC AUC helper, a direction check on the trained toy world, and the CLI files."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from app_world import build_tiny_world

from tad_demo.core.world import World
from tad_demo.research import adaptive
from tad_demo.research.adaptive import FULL, Probe, explore, roc_auc, select
from tad_demo.research.lab import Lab, LabError
from tad_demo.toyworld import world as toy

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "assets" / "toyworld"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_lab(tmp_path_factory) -> Lab:
    """The tiny random world (smiley, striped) with T = 4 steps: fast; its images mean nothing."""
    root = build_tiny_world(tmp_path_factory.mktemp("adaptive") / "world")
    return Lab.from_world(root, steps=4)


def _same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def _weights(lab: Lab) -> dict[str, torch.Tensor]:
    return {f"{c}.{k}": v.clone() for c in ("unet", "text_encoder")
            for k, v in getattr(lab.pipe, c).state_dict().items()}


# --- ROC AUC --------------------------------------------------------------------------------------------------

def _auc_pairs(scores, labels) -> float:
    """Brute force over all (positive, negative) pairs: 1 if the positive is higher, ½ on a tie."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def test_roc_auc_hand_made_with_ties():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert roc_auc([0.5] * 5, [1, 0, 1, 0, 0]) == 0.5
    # positives 0.8, 0.5, 0.5; negatives 0.5, 0.2: pairs 1 + 1 + ½ + 1 + ½ + 1 = 5 of 6
    assert roc_auc([0.8, 0.5, 0.5, 0.5, 0.2], [1, 1, 1, 0, 0]) == pytest.approx(5 / 6)
    rng = random.Random(0)
    for _ in range(50):  # many ties: scores from a few levels
        n = rng.randint(2, 30)
        labels = [rng.random() < 0.4 for _ in range(n)]
        labels[0], labels[1] = True, False
        scores = [rng.choice([0.0, 0.25, 0.5, 1.0]) for _ in range(n)]
        assert roc_auc(scores, labels) == pytest.approx(_auc_pairs(scores, labels), abs=1e-12)
    with pytest.raises(ValueError, match="positives and negatives"):
        roc_auc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([0.1, float("nan")], [0, 1])


# --- the shared-prefix loop (tiny world) ----------------------------------------------------------------------

def test_t_switch_T_and_alpha_0_give_the_base_images_exactly(tiny_lab):
    prompts, seeds = ["a smiley in striped style", "a cross in plain style"], [3, 4]
    ref = tiny_lab.generate(prompts, seeds)  # the pipeline, through sampling.sample
    br = explore(tiny_lab, prompts, seeds, ["smiley", "striped"], [2, 4], [0.0, 1.0], [FULL, 1], keep_images=True)
    # bit-exact, not just close: the explicit loop does the pipeline's arithmetic on the same batch
    assert _same(br.base_images, ref)
    for j in range(2):
        assert _same(br.images[(4, 1.0, FULL)][j], ref)  # never switched
        assert _same(br.images[(2, 0.0, FULL)][j], ref)  # switched to θ + 0·τ
    assert np.all(br.sims[(4, 1.0, FULL)] == 1.0)
    assert np.allclose(br.sims[(2, 0.0, FULL)], 1.0, atol=1e-6)
    # a real candidate moves the image (else the tests above would pass for a loop that ignores the weights)
    assert not _same(br.images[(2, 1.0, FULL)][0], ref)


def test_candidate_equals_a_naive_run_switching_weights_mid_pipeline(tiny_lab):
    """The branch from the shared prefix is the same image as one full pipeline run whose weights are switched
    after step t (diffusers' callback_on_step_end), i.e. eq. 11 of the paper computed independently."""
    prompts, seeds, t, alpha = ["a smiley in striped style"], [5], 2, 1.5
    br = explore(tiny_lab, prompts, seeds, ["smiley"], [t], [alpha], keep_images=True)
    patcher, tv = tiny_lab.models.patcher, tiny_lab.vector("smiley")

    def switch(batch: int, step: int, total: int) -> None:
        if step == t:
            patcher.apply([(tv, alpha)])

    try:
        naive = tiny_lab.generate(prompts, seeds, [], callback=switch)
    finally:
        patcher.restore()
    assert _same(br.images[(t, alpha, FULL)][0], naive)


def test_prefix_runs_once_and_weights_come_back_bit_exact(tiny_lab):
    calls: list[int] = []
    hook = tiny_lab.pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    before = _weights(tiny_lab)
    try:
        sel = select(tiny_lab, "a smiley in striped style", ["smiley", "striped"], t_switch=1, alpha=2.0,
                     seeds=[0, 1], top_k=1)
    finally:
        hook.remove()
    T, N, k = 4, 2, 1
    # selection: base T steps + N candidates × (T − k); then the final image: T steps under the chosen vector
    assert sel.counts == {"unet_calls": T + N * (T - k), "image_steps": 2 * (T + N * (T - k))}
    assert len(calls) == T + N * (T - k) + T < (N + 1) * T + T  # the naive way would pay (N + 1)·T
    assert set(calls) == {4}  # 2 seeds × (uncond, cond) in every call
    after = _weights(tiny_lab)
    assert all(torch.equal(before[k_], after[k_]) for k_ in before) and tiny_lab.models.patcher.current == []
    assert sel.ranking[0] in sel.chosen and len(sel.chosen) == 1
    assert sel.scores[2.0][sel.ranking[0]] <= sel.scores[2.0][sel.ranking[1]]
    assert not _same(sel.final_images, sel.base_images)  # the chosen vector was applied


def test_lookahead_counts_and_threshold(tiny_lab):
    sel = select(tiny_lab, "a smiley in striped style", ["smiley", "striped"], t_switch=1, alpha=2.0, seeds=[0],
                 threshold=-1.0, lookahead=1)
    assert sel.counts["unet_calls"] == 4 + 2 * 1  # base T + N·m
    assert sel.chosen == [] and _same(sel.final_images, sel.base_images)  # nothing is below similarity −1


def test_bad_input_is_refused_early(tiny_lab):
    kw = dict(t_switch=1, alpha=1.0, seeds=[0], top_k=1)
    with pytest.raises(LabError, match="unknown concept 'snoopy'"):
        select(tiny_lab, "a smiley", ["smiley", "snoopy"], **kw)
    with pytest.raises(LabError, match="t_switch: 5 is not a step in 0..4"):
        select(tiny_lab, "a smiley", ["smiley"], **{**kw, "t_switch": 5})
    with pytest.raises(LabError, match="top_k and/or threshold"):
        select(tiny_lab, "a smiley", ["smiley"], t_switch=1, alpha=1.0, seeds=[0])
    with pytest.raises(LabError, match="top_k: 3"):
        select(tiny_lab, "a smiley", ["smiley", "striped"], **{**kw, "top_k": 3})
    with pytest.raises(LabError, match="given twice"):
        select(tiny_lab, "a smiley", ["smiley", "smiley"], **kw)
    with pytest.raises(LabError, match="not a whole step of 4"):
        adaptive.fracs_to_steps([0.3], 4)


# --- the trained toy world: relevant vectors move the image more ----------------------------------------------

@pytest.mark.skipif(not (TOY / "world.json").exists(), reason="assets/toyworld not present")
def test_toy_world_auc_above_chance():
    """8 labelled prompts × 4 vectors, T = 6, switch at 2, α = 2. Looked at first: AUC 0.969 for this prompt
    seed, 0.89–0.97 over prompt seeds 3–8, so 0.6 leaves a wide margin (a loop that ignored the weights gives 0.5)."""
    lab = Lab.from_world(TOY, steps=6)
    pool = ["smiley", "die", "striped", "dotted"]
    table = adaptive.auc_table(lab, [2], [2.0], pool=pool, n_prompts=8, seed=3, lookaheads=())
    y = table.labels()
    assert 0 < y.sum() < y.size
    assert table.auc(2, 2.0) > 0.6


# --- command line -------------------------------------------------------------------------------------------

def test_cli_writes_ranking_and_strip(tiny_lab, tmp_path, capsys):
    from tad_demo.cli import main

    root = Path(tiny_lab.base).parent
    out = tmp_path / "sel"
    assert main(["adaptive", "--assets", str(root), "--prompt", "a smiley in striped style", "--pool", "smiley",
                 "striped", "--t-switch", "1", "--alpha", "2", "--top-k", "1", "--steps", "2", "--out",
                 str(out)]) == 0
    rows = list(csv.DictReader(open(out / "ranking.csv")))
    assert [r["rank"] for r in rows] == ["1", "2"] and {r["vector"] for r in rows} == {"smiley", "striped"}
    assert [r["chosen"] for r in rows] == ["True", "False"]
    assert (out / "strip.png").stat().st_size > 0
    assert "chosen:" in capsys.readouterr().out
    assert main(["adaptive", "--assets", str(root), "--prompt", "a smiley in striped style", "--pool", "smiley",
                 "striped", "--t-switch", "1", "--top-k", "1", "--steps", "2", "--calibrate", "1", "--out",
                 str(out)]) == 0
    assert "relevance" in capsys.readouterr().out and "relevance" in next(csv.DictReader(open(out / "ranking.csv")))
    assert main(["adaptive", "--assets", str(root), "--pool", "smiley", "--out", str(out)]) == 2  # no --prompt
    two = ["adaptive", "--assets", str(root), "--prompt", "a smiley in striped style", "--pool", "smiley", "striped",
           "--t-switch", "1", "--alpha", "1", "2", "--top-k", "1", "--steps", "2", "--out", str(out)]
    assert main([*two, "--calibrate", "1"]) == 0
    row = next(csv.DictReader(open(out / "ranking.csv")))
    assert {"similarity_alpha1", "similarity_alpha2", "relevance"} <= set(row)
    assert "α 1, 2" in capsys.readouterr().out
    assert main(two) == 2 and "several strengths need a calibration" in capsys.readouterr().err


def test_cli_auc_writes_table_heatmap_and_tradeoff(tiny_lab, tmp_path):
    from tad_demo.cli import main

    root = Path(tiny_lab.base).parent
    out = tmp_path / "auc"
    assert main(["adaptive", "--auc", "--assets", str(root), "--steps", "2", "--t-switch-fracs", "0", "0.5", "1",
                 "--alphas", "1", "2", "--n-prompts", "4", "--lookaheads", "1", "--tradeoff-frac", "0.5",
                 "--tradeoff-alpha", "2", "--tradeoff-prompts", "4", "--top-ks", "1", "--thresholds", "0.99",
                 "--calibrate", "2", "--out", str(out), "--json"]) == 0
    rows = list(csv.DictReader(open(out / "auc.csv")))
    assert len(rows) == 2 * 3 * 2  # methods × t_switches × α
    assert all(0 <= float(r["auc_calibrated"]) <= 1 for r in rows)  # a calibration for every cell
    never = [float(r["auc"]) for r in rows if r["t_switch"] == "2"]
    assert never == [0.5] * len(never)  # t_switch = T: every candidate is the base image
    trade = list(csv.DictReader(open(out / "tradeoff.csv")))
    assert [r["way"] for r in trade] == ["base", "all vectors", "adaptive top-1", "adaptive s<0.99",
                                         "oracle (named only)"]
    assert [float(r["mean_vectors"]) for r in trade][:3] == [0.0, 2.0, 1.0]
    assert len(list(csv.DictReader(open(out / "tradeoff_probes.csv")))) == 4
    for f in ("auc.png", "tradeoff.png", "probes.csv", "similarities.csv"):
        assert (out / f).stat().st_size > 0
    # the trade-off of the two-strength probe (--tradeoff-only: both α calibrated in one run of their own)
    assert main(["adaptive", "--auc", "--tradeoff-only", "--assets", str(root), "--steps", "2", "--tradeoff-frac",
                 "0.5", "--tradeoff-alpha", "1", "2", "--tradeoff-prompts", "4", "--top-ks", "1", "--calibrate", "2",
                 "--out", str(out / "two")]) == 0
    trade = list(csv.DictReader(open(out / "two" / "tradeoff.csv")))
    assert {r["alpha"] for r in trade} == {"1 2"} and [float(r["mean_vectors"]) for r in trade][2] == 1.0
    assert "sim_smiley_alpha2" in next(csv.DictReader(open(out / "two" / "tradeoff_probes.csv")))


def test_probes_label_what_the_prompt_names():
    world = World.from_dict(toy.manifest(), "toy")  # the toy world's manifest: its concepts and vocabulary
    probes = adaptive.world_probes(world, ["smiley", "striped", "dotted"], 8, seed=0)
    for p in probes:
        words = set(p.prompt.split())
        assert p.relevant == {c for c in ("smiley", "striped", "dotted") if c in words}
        assert (p.control is not None) == bool(words & set(world.control_concepts))
    assert any(p.relevant == frozenset() for p in probes) and any(len(p.relevant) == 2 for p in probes)
    assert isinstance(probes[0], Probe)


def test_probes_name_every_pool_vector_equally_often():
    """The AUC pools every vector's labels: each must be named (random draws once left smiley out of 48)."""
    from collections import Counter

    world = World.from_dict(toy.manifest(), "toy")
    pool = ["smiley", "die", "striped", "dotted"]
    for seed in range(4):
        named = Counter(c for p in adaptive.world_probes(world, pool, 48, seed=seed) for c in p.relevant)
        assert named == {c: 12 for c in pool}, (seed, named)  # 24 prompts name a target object, 24 a style


def test_vector_aucs_score_each_column_alone_and_skip_vectors_never_named():
    """Hand-made similarities: vector a ranks its one relevant prompt first (AUC 1), b ranks it last (AUC 0);
    c is named by no prompt (no AUC); the pooled AUC compares all columns at once."""
    probes = [adaptive.Probe("p0", 0, frozenset({"a"})), adaptive.Probe("p1", 1, frozenset({"b"})),
              adaptive.Probe("p2", 2, frozenset())]
    sims = np.array([[0.5, 0.9, 0.99],
                     [0.9, 0.95, 0.99],
                     [0.95, 0.6, 0.99]])
    branches = adaptive.Branches(["a", "b", "c"], 20, [], sims={(10, 1.0, adaptive.FULL): sims})
    table = adaptive.AucTable(["a", "b", "c"], 20, probes, [10], [1.0], [adaptive.FULL], branches)
    assert table.vector_aucs(10, 1.0) == {"a": 1.0, "b": 0.0}
    # pooled, on 1 − s: positive 0.5 beats all seven negatives; positive 0.05 beats the three 0.01s and ties
    # the 0.05 of a on p2 -> (7 + 3.5) / 14
    assert table.auc(10, 1.0) == pytest.approx(10.5 / 14)


# --- calibration: each vector's usual movement ----------------------------------------------------------------

def _hand_table() -> adaptive.AucTable:
    """Vector a moves every picture far (1 − s ≈ 0.2 on neutral prompts; once it redraws one, 0.9), b barely
    (≈ 0.01). Each is named once: a moves its picture 0.4 (2× its usual), b 0.05 (5×)."""
    probes = [Probe("p0", 0, frozenset({"a"})), Probe("p1", 1, frozenset({"b"})),
              Probe("p2", 2, frozenset()), Probe("p3", 3, frozenset()), Probe("p4", 4, frozenset())]
    d = np.array([[0.40, 0.010],
                  [0.20, 0.050],
                  [0.18, 0.008],
                  [0.20, 0.012],
                  [0.90, 0.010]])
    branches = adaptive.Branches(["a", "b"], 20, [], sims={(10, 1.0, FULL): 1.0 - d})
    return adaptive.AucTable(["a", "b"], 20, probes, [10], [1.0], [FULL], branches)


def test_calibration_divides_by_the_median_movement_on_neutral_prompts():
    table = _hand_table()
    cal = adaptive.Calibration.from_table(table, 10, 1.0)
    assert cal.n_prompts == 3 and cal.scale == pytest.approx({"a": 0.20, "b": 0.010})  # rows p2–p4; mean a 0.43
    rel = table.relevance(10, 1.0, calibration=cal)
    assert rel[:, 0] == pytest.approx([2.0, 1.0, 0.9, 1.0, 4.5]) and rel[:, 1] == pytest.approx([1, 5, .8, 1.2, 1])
    # raw: the positive 0.40 beats seven of eight negatives (not 0.9), 0.05 only b's four -> 11/16;
    # calibrated: 2 beats all but a's 4.5, 5 beats all eight -> 15/16
    assert table.auc(10, 1.0) == pytest.approx(11 / 16)
    assert table.auc(10, 1.0, calibration=cal) == pytest.approx(15 / 16)
    assert table.vector_aucs(10, 1.0) == {"a": 0.75, "b": 1.0}  # a's redrawn neutral picture outranks p0
    y = table.labels()  # within a vector, calibration changes nothing
    assert [roc_auc(rel[:, j], y[:, j]) for j in range(2)] == [0.75, 1.0]
    assert [r["auc_calibrated"] for r in table.rows({(10, 1.0, FULL): cal})] == pytest.approx([15 / 16])


def test_calibration_refuses_other_vectors_or_settings_and_tables_without_neutral_prompts():
    table = _hand_table()
    cal = adaptive.Calibration.from_table(table, 10, 1.0)
    with pytest.raises(LabError, match="t_switch 10, α 1, full .paper.; used at t_switch 10, α 2"):
        cal.check(["a", "b"], 10, 2.0, FULL)
    with pytest.raises(LabError, match="no scale for c"):
        cal.check(["a", "c"], 10, 1.0, FULL)
    named = adaptive.AucTable(table.pool, 20, table.probes[:2], [10], [1.0], [FULL], adaptive.Branches(
        ["a", "b"], 20, [], sims={(10, 1.0, FULL): table.branches.sims[(10, 1.0, FULL)][:2]}))
    with pytest.raises(LabError, match="no prompt of the table names none"):
        adaptive.Calibration.from_table(named, 10, 1.0)


def test_calibrate_measures_what_select_measures_and_select_ranks_by_it(tiny_lab):
    pool = ["smiley", "striped"]
    raw = select(tiny_lab, "a cross", pool, t_switch=0, alpha=5.0, seeds=[0], top_k=1)
    cal = adaptive.calibrate(tiny_lab, pool, t_switch=0, alpha=5.0, prompts=["a cross"], seeds=[0])
    assert cal.scale == pytest.approx({v: 1 - raw.similarity[5.0][v][0] for v in pool}, abs=1e-6)
    # a calibration that calls the first vector's movement usual and the second's rare turns the ranking round
    first, second = raw.ranking
    assert raw.scores[5.0][second] < 1 - 2e-4  # the second vector moves the picture (tiny world: α 5, t 0)
    flip = adaptive.Calibration(0, 5.0, FULL, {first: 10.0, second: 1e-3}, 1)
    sel = select(tiny_lab, "a cross", pool, t_switch=0, alpha=5.0, seeds=[0], top_k=1, calibration=flip)
    assert sel.ranking == [second, first] and sel.chosen == [second]
    assert sel.scores == raw.scores and [r["relevance"] for r in sel.rows()] == sorted(sel.relevance.values())[::-1]
    with pytest.raises(LabError, match="calibration made at t_switch 0, α 5"):
        select(tiny_lab, "a cross", pool, t_switch=1, alpha=5.0, seeds=[0], top_k=1, calibration=flip)


# --- probing at several strengths ------------------------------------------------------------------------------

def _two_strength_table() -> adaptive.AucTable:
    """_hand_table's similarities at α = 1, and at α = 2: a moves p0 0.6 and everything else 0.2 (3× its usual on
    p0, no redrawn neutral picture), b moves everything 0.02 (its named prompt no more than the rest)."""
    table = _hand_table()
    d2 = np.array([[0.6, 0.02], [0.2, 0.02], [0.2, 0.02], [0.2, 0.02], [0.2, 0.02]])
    table.branches.sims[(10, 2.0, FULL)] = 1.0 - d2
    table.alphas = [1.0, 2.0]
    return table


def test_two_strengths_rank_by_the_larger_calibrated_relevance():
    table = _two_strength_table()
    cals = [adaptive.Calibration.from_table(table, 10, a) for a in (1.0, 2.0)]
    assert cals[1].scale == pytest.approx({"a": 0.2, "b": 0.02})
    rel = table.relevance(10, (1.0, 2.0), calibration=cals)
    # α 1: a [2, 1, .9, 1, 4.5], b [1, 5, .8, 1.2, 1]; α 2: a [3, 1, 1, 1, 1], b all 1 -> the larger of each
    assert rel[:, 0] == pytest.approx([3, 1, 1, 1, 4.5]) and rel[:, 1] == pytest.approx([1, 5, 1, 1.2, 1])
    assert table.relevance(10, (2.0, 1.0), calibration=cals[::-1]) == pytest.approx(rel)  # order is immaterial
    # a's 3 beats seven of eight negatives (not its 4.5), b's 5 all eight -> 15/16; each vector alone: 3/4 and 1
    assert table.auc(10, (1.0, 2.0), calibration=cals) == pytest.approx(15 / 16)
    assert table.vector_aucs(10, (1.0, 2.0), calibration=cals) == {"a": 0.75, "b": 1.0}
    # α 2 alone: a's 3 beats all eight negatives (each 1); b's named prompt ties them all: (8 + 4) / 16
    assert table.auc(10, 2.0, calibration=cals[1]) == pytest.approx(12 / 16)


def test_two_strengths_need_a_calibration_of_each():
    table = _two_strength_table()
    cal1 = adaptive.Calibration.from_table(table, 10, 1.0)
    with pytest.raises(LabError, match="several strengths need a calibration of each"):
        table.relevance(10, (1.0, 2.0))
    with pytest.raises(LabError, match="calibration: none made at α 2 .made at α 1."):
        table.relevance(10, (1.0, 2.0), calibration=[cal1])
    with pytest.raises(LabError, match="alpha: 1 is given twice"):
        table.relevance(10, (1.0, 1.0), calibration=[cal1])
    with pytest.raises(LabError, match="alpha=3, full .paper.. is not in the table"):
        table.relevance(10, (1.0, 3.0), calibration=[cal1])


def test_select_at_two_strengths_ranks_by_the_larger_relevance_of_the_single_runs(tiny_lab):
    pool, kw = ["smiley", "striped"], dict(t_switch=0, seeds=[0], top_k=1)
    singles = {a: select(tiny_lab, "a cross", pool, alpha=a, **kw) for a in (1.0, 5.0)}
    # hand-made calibrations: at α 1 smiley's movement counts as usual, at α 5 striped's
    cals = [adaptive.Calibration(0, 1.0, FULL, {"smiley": 1.0, "striped": 1e-3}, 1),
            adaptive.Calibration(0, 5.0, FULL, {"smiley": 1e-3, "striped": 1.0}, 1)]
    sel = select(tiny_lab, "a cross", pool, alpha=(1.0, 5.0), calibration=cals, **kw)
    for a, one in singles.items():  # the same prefix, the same candidates
        assert sel.scores[a] == pytest.approx(one.scores[a], abs=1e-6)
    expect = {v: max((1 - singles[1.0].scores[1.0][v]) / cals[0].scale[v],
                     (1 - singles[5.0].scores[5.0][v]) / cals[1].scale[v]) for v in pool}
    assert sel.relevance == pytest.approx(expect, rel=1e-5)
    assert sel.ranking == sorted(pool, key=lambda v: -expect[v]) and sel.chosen == sel.ranking[:1]
    assert sel.counts["unet_calls"] == 4 + 2 * 2 * 4  # base T + N vectors × 2 α × (T − k)
    row = sel.rows()[0]
    assert {"similarity_alpha1", "similarity_alpha5", "similarity_alpha1_seed0", "relevance"} <= set(row)
    with pytest.raises(LabError, match="threshold: it reads one similarity"):
        select(tiny_lab, "a cross", pool, alpha=(1.0, 5.0), calibration=cals, threshold=0.5, t_switch=0, seeds=[0])
    with pytest.raises(LabError, match="several strengths need a calibration of each"):
        select(tiny_lab, "a cross", pool, alpha=(1.0, 5.0), **kw)


def test_auc_se_is_zero_when_every_resample_separates_and_near_hanley_mcneil_otherwise():
    y = np.array([[True], [False]] * 20)
    assert adaptive.auc_se(np.where(y, 1.0, 0.0), y) == 0.0
    rng = np.random.default_rng(0)
    y = rng.random((400, 1)) < 0.25
    s = rng.normal(size=(400, 1)) + 1.2 * y
    a, p, n = roc_auc(s, y), int(y.sum()), int((~y).sum())
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    hanley = np.sqrt((a * (1 - a) + (p - 1) * (q1 - a * a) + (n - 1) * (q2 - a * a)) / (p * n))
    assert adaptive.auc_se(s, y) == pytest.approx(hanley, rel=0.25)
