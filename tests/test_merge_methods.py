"""Merge methods against numbers worked out by hand (each expected value is derived in a comment)."""

from __future__ import annotations

import json

import pytest
import torch

import tad_demo
from tad_demo.core.merge_methods import METHODS, MergeError, describe, get_method, merge
from tad_demo.core.task_vector import TaskVector, TaskVectorError


def tv(**tensors: list[float]) -> TaskVector:
    return TaskVector({k: torch.tensor(v) for k, v in tensors.items()})


def close(result: TaskVector, **expected: list[float]) -> None:
    assert set(result.keys()) == set(expected)
    for k, v in expected.items():
        assert result[k].dtype == torch.float32
        torch.testing.assert_close(result[k], torch.as_tensor(v, dtype=torch.float32), rtol=0, atol=1e-6)


# Three small vectors used throughout (one tensor "w" of 5 entries).
A = tv(w=[4.0, -1.0, 2.0, -3.0, 0.5])
B = tv(w=[2.0, 5.0, 1.0, 1.0, 0.2])
C = tv(w=[-5.0, -4.0, 0.1, -2.0, -6.0])


# --- linear ------------------------------------------------------------------------------------------------------
def test_linear_weighted_sum():
    a, b = tv(w=[1.0, -2.0, 3.0, 0.0]), tv(w=[0.5, 0.5, -1.0, 2.0])
    # 2a - b = [2-0.5, -4-0.5, 6+1, 0-2]
    close(merge([a, b], "linear", weights=[2.0, -1.0]), w=[1.5, -4.5, 7.0, -2.0])
    close(merge([a, b]), w=[1.5, -1.5, 2.0, 2.0])  # default method linear, weights all 1
    assert tad_demo.merge is merge


def test_linear_keeps_shape_of_matrices():
    a = TaskVector({"m": torch.tensor([[1.0, 2.0], [3.0, 4.0]])})
    out = merge([a, a], "linear", weights=[0.5, 0.25])
    torch.testing.assert_close(out["m"], torch.tensor([[0.75, 1.5], [2.25, 3.0]]))


# --- ties --------------------------------------------------------------------------------------------------------
def test_ties_trim_elect_disjoint_mean():
    # density 0.4 of 5 entries -> keep int(2.0) = 2 largest |values| per vector:
    #   A -> [ 4, 0, 0, -3,  0]    B -> [2, 5, 0, 0, 0]    C -> [-5, 0, 0, 0, -6]
    # elected sign = sign of the column sums [1, 5, 0, -3, -6] -> [+, +, 0, -, -]
    # disjoint mean over agreeing non-zeros: col0 (4+2)/2 = 3 (C's -5 disagrees), col1 5, col2 none -> 0,
    #   col3 -3, col4 -6
    close(merge([A, B, C], "ties", density=0.4), w=[3.0, 5.0, 0.0, -3.0, -6.0])
    close(merge([A, B, C], "ties", density=0.4, lambda_=0.5), w=[1.5, 2.5, 0.0, -1.5, -3.0])


def test_ties_without_trimming():
    # density 1 keeps everything; column sums [1, 0, 3.1, -4, -5.3] -> signs [+, 0, +, -, -]
    # col0 (4+2)/2 = 3; col1 sum exactly 0 elects no sign -> 0; col2 (2+1+0.1)/3; col3 (-3-2)/2; col4 -6/1
    close(merge([A, B, C], "ties", density=1.0), w=[3.0, 0.0, 3.1 / 3, -2.5, -6.0])


def test_ties_weights_enter_before_election():
    # weights [1, 1, -1] flip C to [5, 4, -0.1, 2, 6] -> trimmed [5, 0, 0, 0, 6]
    # trimmed A [4,0,0,-3,0], B [2,5,0,0,0]; sums [11, 5, 0, -3, 6], everything agrees:
    # col0 (4+2+5)/3, col1 5, col2 0, col3 -3, col4 6
    close(merge([A, B, C], "ties", weights=[1, 1, -1], density=0.4), w=[11 / 3, 5.0, 0.0, -3.0, 6.0])
    # one vector with weight w merges to w * trim(tau): the mean divides by the count, not by the weights
    close(merge([A], "ties", weights=[2.0], density=0.4), w=[8.0, 0.0, 0.0, -6.0, 0.0])


def test_trim_keeps_all_entries_tied_at_threshold():
    # density 0.25 of 4 -> k = 1, but the three entries tied at |1| are all kept (deterministic)
    close(merge([tv(w=[1.0, -1.0, 1.0, 0.5])], "topp", density=0.25), w=[1.0, -1.0, 1.0, 0.0])


def test_trim_rounds_down_like_peft_and_mergekit():
    # density 0.3 of 5 -> k = int(1.5) = 1 (ceil would keep 2); density 0.1 of 5 -> k = 0: nothing kept
    close(merge([A], "topp", density=0.3), w=[4.0, 0.0, 0.0, 0.0, 0.0])
    close(merge([A], "topp", density=0.1), w=[0.0, 0.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("density", [0.05, 0.2, 0.33, 0.5, 0.77])
def test_magnitude_pruning_and_ties_agree_with_peft(density):
    merge_utils = pytest.importorskip("peft.utils.merge_utils")  # the oracle: a dev dependency
    g = torch.Generator().manual_seed(0)
    # odd sizes so that density · numel is rarely an integer: the rounding is what differed from PEFT
    shapes = {"a": (7, 13), "b": (3, 3, 5), "c": (11,)}
    taus = [TaskVector({k: torch.randn(s, generator=g) for k, s in shapes.items()}) for _ in range(3)]
    pruned = merge([taus[0]], "topp", density=density)
    tied = merge(taus, "ties", density=density)
    for k in shapes:
        expect = merge_utils.prune(taus[0][k], density, method="magnitude")
        torch.testing.assert_close(pruned[k], expect, rtol=0, atol=0)
        stacked = [t[k] for t in taus]
        expect = merge_utils.ties(stacked, torch.ones(3), density, majority_sign_method="total")
        torch.testing.assert_close(tied[k], expect)


def test_ties_defaults():
    assert METHODS["ties"].defaults() == {"density": 0.2, "lambda_": 1.0}
    # density 0.2 of 5 -> k = 1: A [4,0,0,0,0], B [0,5,0,0,0], C [0,0,0,0,-6]; no conflicts
    close(merge([A, B, C], "ties"), w=[4.0, 5.0, 0.0, 0.0, -6.0])


# --- topp (the multi-concept paper's "sparse") -------------------------------------------------------------------
def test_topp_trims_each_weighted_vector_then_adds():
    # A trimmed to 2 of 5: [4, 0, 0, -3, 0]; 2B = [4, 10, 2, 2, 0.4] trimmed: [4, 10, 0, 0, 0]
    close(merge([A, B], "topp", weights=[1.0, 2.0], density=0.4), w=[8.0, 10.0, 0.0, -3.0, 0.0])
    # density 1 is plain linear
    close(merge([A, B], "topp", density=1.0), w=[6.0, 4.0, 3.0, -2.0, 0.7])


# --- median ------------------------------------------------------------------------------------------------------
def test_median_odd_count():
    # columns: {4,2,-5} {-1,5,-4} {2,1,0.1} {-3,1,-2} {0.5,0.2,-6}
    close(merge([A, B, C], "median"), w=[2.0, -1.0, 1.0, -2.0, 0.2])
    # weights first: 2C = [-10, -8, 0.2, -4, -12]: {4,2,-10} {-1,5,-8} {2,1,0.2} {-3,1,-4} {0.5,0.2,-12}
    close(merge([A, B, C], "median", weights=[1, 1, 2]), w=[2.0, -1.0, 1.0, -3.0, 0.2])


def test_median_even_count_averages_the_middle_pair():
    # two values: their mean (torch.median would return the lower one)
    close(merge([A, B], "median"), w=[3.0, 2.0, 1.5, -1.0, 0.35])
    close(merge([A, B], "median", lambda_=2.0), w=[6.0, 4.0, 3.0, -2.0, 0.7])
    # four values: {4,2,-5,0} -> (0+2)/2 = 1 ... with D = 0 everywhere
    d = tv(w=[0.0] * 5)
    # sorted cols: [-5,0,2,4] [-4,-1,0,5] [0,0.1,1,2] [-3,-2,0,1] [-6,0,0.2,0.5]
    close(merge([A, B, C, d], "median"), w=[1.0, -0.5, 0.55, -1.0, 0.1])


# --- dare --------------------------------------------------------------------------------------------------------
BIG = TaskVector({"k": torch.arange(1, 2001, dtype=torch.float32)})


def test_dare_p0_equals_linear():
    out = merge([A, B, C], "dare", weights=[1, 2, -1], p=0.0, seed=3)
    close(out, **merge([A, B, C], "linear", weights=[1, 2, -1]).deltas)
    # dare_ties with p=0 is TIES without trimming (see test_ties_without_trimming)
    close(merge([A, B, C], "dare_ties", p=0.0), w=[3.0, 0.0, 3.1 / 3, -2.5, -6.0])


def test_dare_kept_rescaled_dropped_zero():
    p = 0.3
    out = merge([BIG], "dare", p=p, seed=7)["k"]
    x = BIG["k"]
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / (1 - p))     # survivors rescaled by 1/(1-p)
    assert torch.all(out[~kept] == 0)                              # the rest dropped
    assert 0.6 < kept.float().mean().item() < 0.8                  # ~70 % survive (2000 draws)


def test_dare_seeded_and_deterministic():
    a = merge([BIG, A], "dare", p=0.5, seed=1)
    b = merge([BIG, A], "dare", p=0.5, seed=1)
    c = merge([BIG, A], "dare", p=0.5, seed=2)
    assert torch.equal(a["k"], b["k"]) and torch.equal(a["w"], b["w"])
    assert not torch.equal(a["k"], c["k"])


def test_dare_mask_independent_of_dict_order_and_other_keys():
    two = TaskVector({"k": BIG["k"], "w": A["w"]})
    reversed_ = TaskVector({"w": A["w"], "k": BIG["k"]})
    only_k = TaskVector({"k": BIG["k"]})
    r1, r2, r3 = (merge([v], "dare", p=0.5, seed=4) for v in (two, reversed_, only_k))
    assert torch.equal(r1["k"], r2["k"]) and torch.equal(r1["k"], r3["k"]) and torch.equal(r1["w"], r2["w"])


def test_dare_vectors_get_independent_masks():
    # 1 and 1000 everywhere: with independent masks all four outcomes {0, 1, 1000, 1001}/(1-p) appear
    ones = TaskVector({"k": torch.ones(400)})
    out = merge([ones, 1000.0 * ones], "dare_linear", p=0.5, seed=0)["k"]
    assert set(out.tolist()) == {0.0, 2.0, 2000.0, 2002.0}


def test_dare_aliases_match_combine_param():
    for combine in ("linear", "ties"):
        general = merge([BIG, 2.0 * BIG], "dare", p=0.4, seed=9, combine=combine, lambda_=0.5)
        alias = merge([BIG, 2.0 * BIG], f"dare_{combine}", p=0.4, seed=9, lambda_=0.5)
        assert torch.equal(general["k"], alias["k"])


def test_dare_ties_disjoint_mean_of_survivors():
    # +1 and +3 everywhere: survivors of both -> (2+6)/2 = 4; of one -> 2 or 6; none -> 0 (p = 0.5 -> x2)
    ones = TaskVector({"k": torch.ones(400)})
    out = merge([ones, 3.0 * ones], "dare_ties", p=0.5, seed=0)["k"]
    assert set(out.tolist()) == {0.0, 2.0, 4.0, 6.0}


# --- sparse key sets ---------------------------------------------------------------------------------------------
def test_sparse_keys_missing_is_zero():
    a = tv(x=[1.0, 2.0], y=[3.0, -2.0])
    b = tv(x=[3.0, -4.0])
    c = tv(y=[1.0, 1.0], z=[5.0])
    close(merge([a, b], "linear"), x=[4.0, -2.0], y=[3.0, -2.0])
    # median of {3, 0} and {-2, 0}: the missing vector is a zero entry
    close(merge([a, b], "median"), x=[2.0, -1.0], y=[1.5, -1.0])
    # three vectors: y -> {3,0,1} {-2,0,1}; x -> {1,3,0} {2,-4,0}; z -> {0,0,5}
    close(merge([a, b, c], "median"), x=[1.0, 0.0], y=[1.0, 0.0], z=[0.0])
    # TIES: a zero is not a vote, so nothing is diluted by the missing vector:
    #   x: {1,3} -> 2, {2,-4} sum -2 -> -4;  y: {3,1} -> 2, {-2,1} sum -1 -> -2;  z: {5} -> 5
    close(merge([a, b, c], "ties", density=1.0), x=[2.0, -4.0], y=[2.0, -2.0], z=[5.0])
    # result keys in first-seen order
    assert merge([a, b, c], "topp", density=1.0).keys() == ["x", "y", "z"]


# --- registry ----------------------------------------------------------------------------------------------------
def test_registry_describes_every_method():
    info = describe()
    json.dumps(info)  # plain data only
    names = [m["name"] for m in info]
    assert {"linear", "ties", "dare", "dare_linear", "dare_ties", "median", "topp"} <= set(names)
    for m in info:
        assert m["description"] and m["citation"]
        assert m["reference"] == "" or m["reference"].startswith("https://arxiv.org/abs/")
        for p in m["params"]:
            assert {"name", "kind", "default", "low", "high", "choices", "range", "description"} <= set(p)
    assert get_method("TIES").name == "ties" and get_method("dare-ties").name == "dare_ties"


def test_every_method_runs_with_defaults():
    for name, m in METHODS.items():
        assert m.validate({}) == m.defaults()
        out = merge([A, B, C], name)
        assert out.keys() == ["w"] and out["w"].dtype == torch.float32, name


def test_int_param_accepts_integral_float_from_ui():
    assert METHODS["dare"].validate({"seed": 3.0})["seed"] == 3


# --- errors ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, fragments", [
    (lambda: merge([]), ["no task vectors"]),
    (lambda: merge([A, B], weights=[1.0]), ["1 weight", "2 vector"]),
    (lambda: merge([A], weights=[float("nan")]), ["weights[0]"]),
    (lambda: merge([A], "tie"), ["unknown merge method 'tie'", "did you mean 'ties'", "linear", "median"]),
    (lambda: merge([A], "nonsense"), ["unknown merge method", "known methods: linear"]),
    (lambda: merge([A], "ties", density=0), ["density=0", "(0, 1]"]),
    (lambda: merge([A], "ties", density=1.5), ["density=1.5"]),
    (lambda: merge([A], "topp", density=True), ["density=True"]),
    (lambda: merge([A], "ties", density=float("nan")), ["density=nan"]),
    (lambda: merge([A], "dare", p=1.0), ["p=1.0", "[0, 1)"]),
    (lambda: merge([A], "dare", p=-0.1), ["p=-0.1"]),
    (lambda: merge([A], "dare", seed=-1), ["seed=-1"]),
    (lambda: merge([A], "dare", seed=1.5), ["seed=1.5", "int"]),
    (lambda: merge([A], "dare", combine="median"), ["combine='median'", "'linear', 'ties'"]),
    (lambda: merge([A], "ties", p=0.5), ["'ties' has no parameter 'p'", "density, lambda_"]),
    (lambda: merge([A], "ties", desity=0.5), ["did you mean 'density'"]),
    (lambda: merge([A], "linear", density=0.5), ["'linear' has no parameter 'density'", "(none)"]),
    (lambda: merge([A, tv(w=[1.0, 2.0])]), ["'w'", "different shapes"]),
    (lambda: merge([A, {"w": torch.ones(5)}]), ["vectors[1] is a dict"]),
])
def test_errors(call, fragments):
    with pytest.raises(TaskVectorError) as e:
        call()
    assert isinstance(e.value, MergeError)
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)
