"""TaskVector algebra: identities exact in fp32, sparsity, scopes, files, errors."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import perturbed, tiny_unet

from tad_demo import TaskVector, TaskVectorError


@pytest.fixture()
def base_sd() -> dict[str, torch.Tensor]:
    return tiny_unet(0).state_dict()


@pytest.fixture()
def ft_sd(base_sd, kv_keys) -> dict[str, torch.Tensor]:
    return perturbed(base_sd, kv_keys, seed=1)


@pytest.fixture()
def tv(base_sd, ft_sd) -> TaskVector:
    return TaskVector.from_pair(base_sd, ft_sd)


def _equal(a: TaskVector, b: TaskVector) -> bool:
    return sorted(a.keys()) == sorted(b.keys()) and all(torch.equal(a[k], b[k]) for k in a.keys())


def test_sparse_over_changed_keys(tv, kv_keys):
    assert sorted(tv.keys()) == sorted(kv_keys)
    assert all(v.dtype == torch.float32 for v in tv.deltas.values())


def test_base_plus_tau_is_finetuned_exactly(base_sd, ft_sd, tv):
    out = tv.apply(base_sd, scale=1.0)
    # In fp32, f - b is exact when b/2 <= f <= 2b (Sterbenz), and then b + (f - b) == f bit for bit.
    # Elsewhere (sign changes near zero) the subtraction rounds and the identity holds to one ulp.
    for k in tv.keys():
        f, b = ft_sd[k], base_sd[k]
        sterbenz = (b / 2 <= f) & (f <= 2 * b) | (2 * b <= f) & (f <= b / 2)
        assert sterbenz.float().mean() > 0.5, "the test should exercise the exact case"
        assert torch.equal(out[k][sterbenz], f[sterbenz]), k
        ulp = (torch.nextafter(f, torch.full_like(f, float("inf"))) - f).abs()
        assert ((out[k] - f).abs() <= ulp).all(), k
    untouched = [k for k in base_sd if k not in tv]
    assert all(out[k] is base_sd[k] for k in untouched)  # shared, not copied


def test_double_negation_and_inverse(tv, base_sd, kv_keys):
    other = TaskVector.from_pair(base_sd, perturbed(base_sd, kv_keys[:3], seed=7))
    assert _equal(-(-tv), tv)  # noqa: B002 - double negation is the point
    back = (tv + other) - other
    for k in tv.keys():
        assert torch.allclose(back[k], tv[k], rtol=0, atol=1e-7)
    zero = 0 * tv
    assert all(torch.count_nonzero(v) == 0 for v in zero.deltas.values())
    assert _equal(tv * 0.5, 0.5 * tv)
    assert _equal(tv - other, tv + (-other))


def test_negation_is_base_minus_tau(tv, base_sd):
    enhanced = (-tv).apply(base_sd)
    also = tv.apply(base_sd, scale=-1.0)
    for k in tv.keys():
        assert torch.equal(enhanced[k], base_sd[k] - tv[k])
        assert torch.equal(also[k], enhanced[k])


def test_sum_and_analogy(tv, base_sd, kv_keys):
    b = TaskVector.from_pair(base_sd, perturbed(base_sd, kv_keys, seed=2))
    c = TaskVector.from_pair(base_sd, perturbed(base_sd, kv_keys[:2], seed=3))
    total = sum([tv, b, c])
    for k in tv.keys():
        expect = tv[k] + b[k] + (c[k] if k in c else 0)
        assert torch.allclose(total[k], expect, atol=1e-7)
    analogy = c + (b - tv)
    assert set(analogy.keys()) == set(tv.keys())


def test_fp16_base_kept_dtype_math_in_fp32(tv, base_sd):
    half = {k: v.half() for k, v in base_sd.items()}
    out = tv.apply(half, scale=0.3)
    k = tv.keys()[0]
    assert out[k].dtype == torch.float16
    assert torch.equal(out[k], (half[k].float() + 0.3 * tv[k]).half())


def test_non_float_skipped():
    base = {"w": torch.zeros(3), "position_ids": torch.arange(3)}
    ft = {"w": torch.ones(3), "position_ids": torch.arange(3) + 1}
    tv = TaskVector.from_pair(base, ft)
    assert tv.keys() == ["w"]


def test_scopes(tv):
    assert len(tv.restrict("cross_attn_kv")) == len(tv)
    assert len(tv.restrict(r"to_k\.")) == len(tv) // 2
    assert len(tv.restrict("self_attn")) == 0
    with pytest.raises(TaskVectorError, match="neither a known scope"):
        tv.restrict("([")


def test_component_prefix(tv, base_sd):
    prefixed = tv.with_prefix("unet")
    # one component: applies to that component's bare state dict, as the unprefixed vector does
    got, want = prefixed.apply(base_sd), tv.apply(base_sd)
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    # two components: the bare dict is ambiguous; the error says how
    two = prefixed + tv.with_prefix("controlnet")
    with pytest.raises(TaskVectorError, match=r"tv\.component\('(unet|controlnet)'\)"):
        two.apply(base_sd)
    assert _equal(prefixed.component("unet"), tv)


def test_norm_and_cosine(tv):
    assert tv.norm() > 0
    assert tv.cosine(tv) == pytest.approx(1.0)
    assert tv.cosine(-tv) == pytest.approx(-1.0)
    assert tv.cosine(TaskVector.zeros_like(tv)) == 0.0


def test_save_load_roundtrip(tv, tmp_path):
    p = tv.save(tmp_path / "t.safetensors")
    assert _equal(TaskVector.load(p), tv)


def test_fp16_save_warns_about_underflow(tmp_path, caplog):
    tv = TaskVector({"w": torch.tensor([1e-9, 1.0, -1e-10, 0.0])})
    with caplog.at_level(logging.WARNING):
        tv.save(tmp_path / "h.safetensors", dtype=torch.float16)
    assert "2 non-zero entries underflow to zero" in caplog.text
    assert TaskVector.load(tmp_path / "h.safetensors")["w"].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_errors_name_key_and_shapes(base_sd, kv_keys):
    k = kv_keys[0]
    bad = dict(base_sd)
    bad[k] = torch.zeros(3, 3)
    with pytest.raises(TaskVectorError, match=rf"{k}.*\(3, 3\).*base has"):
        TaskVector.from_pair(base_sd, bad)
    extra = {**base_sd, "new.weight": torch.ones(2)}
    with pytest.raises(TaskVectorError, match="'new.weight' is not in the base"):
        TaskVector.from_pair(base_sd, extra)
    nan = dict(base_sd)
    nan[k] = base_sd[k].clone()
    nan[k][0, 0] = float("nan")
    with pytest.raises(TaskVectorError, match=rf"fine-tuned state dict: tensor '{k}' contains NaN"):
        TaskVector.from_pair(base_sd, nan)
    with pytest.raises(TaskVectorError, match="not a finite number"):
        TaskVector({"w": torch.ones(1)}) * float("inf")
    with pytest.raises(TypeError):
        TaskVector({"w": torch.ones(1)}) + {"w": torch.ones(1)}  # a weight dict is not a delta


def test_inputs_not_modified(base_sd, ft_sd):
    before = {k: v.clone() for k, v in base_sd.items()}
    TaskVector.from_pair(base_sd, ft_sd).apply(base_sd, 2.0)
    assert all(torch.equal(before[k], base_sd[k]) for k in base_sd)
