"""Diagnostics against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tad_demo.core.diagnostics import (
    angle_deg,
    block_cosine,
    block_of,
    cosine_matrix,
    count_large_angles,
    group_key,
    norms,
    per_tensor_angles,
    per_tensor_cosine,
    random_like,
    sign_agreement,
    sparsity,
    tensor_norms,
)
from tad_demo.core.task_vector import TaskVector, TaskVectorError

DOWN = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
MID = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
UP_K = "unet.up_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k.weight"
UP_V = "unet.up_blocks.2.attentions.0.transformer_blocks.0.attn2.to_v.weight"


def tv(d: dict[str, list[float]]) -> TaskVector:
    return TaskVector({k: torch.tensor(v) for k, v in d.items()})


# Listed up-block first on purpose: block_cosine reports in UNet order regardless.
A = tv({UP_K: [1.0, 0.0], UP_V: [3.0, 4.0], DOWN: [1.0, 0.0, 0.0, 0.0], MID: [1.0, 1.0, 0.0, 0.0]})
B = tv({UP_K: [0.0, 1.0], UP_V: [-3.0, -4.0], DOWN: [0.0, 2.0, 0.0, 0.0], MID: [1.0, 0.0, 0.0, 0.0]})


def test_norms():
    # |A|² = 1 + 25 + 1 + 2 = 29; |B|² = 1 + 25 + 4 + 1 = 31
    assert norms({"a": A, "b": B}) == pytest.approx({"a": math.sqrt(29), "b": math.sqrt(31)})
    assert list(norms([A, B])) == ["τ1", "τ2"]
    assert tensor_norms(A) == pytest.approx({UP_K: 1.0, UP_V: 5.0, DOWN: 1.0, MID: math.sqrt(2)})


def test_per_tensor_cosine_and_angles():
    # up_k orthogonal -> 0 (90°); up_v opposite -> -1 (180°); down orthogonal; mid [1,1]·[1,0] = 1/√2 (45°)
    cos = per_tensor_cosine(A, B)
    assert list(cos) == [UP_K, UP_V, DOWN, MID]
    assert cos == pytest.approx({UP_K: 0.0, UP_V: -1.0, DOWN: 0.0, MID: 1 / math.sqrt(2)})
    assert per_tensor_angles(A, B) == pytest.approx({UP_K: 90.0, UP_V: 180.0, DOWN: 90.0, MID: 45.0})
    assert all(type(v) is float for v in cos.values())


def test_per_tensor_uses_shared_keys_and_zero_tensors_give_zero():
    a = tv({"x": [1.0, 2.0], "only_a": [1.0]})
    b = tv({"x": [0.0, 0.0], "only_b": [1.0]})
    assert per_tensor_cosine(a, b) == {"x": 0.0}


def test_cosine_matrix_global():
    # A·B = 0 + (-25) + 0 + 1 = -24
    names, m = cosine_matrix({"a": A, "b": B})
    assert names == ["a", "b"]
    expected = -24 / math.sqrt(29 * 31)
    assert m[0] == pytest.approx([1.0, expected]) and m[1] == pytest.approx([expected, 1.0])
    json.dumps(m)
    # missing keys are zeros: disjoint keys -> orthogonal
    _, m2 = cosine_matrix([tv({"x": [1.0]}), tv({"y": [1.0]})])
    assert m2 == [[1.0, 0.0], [0.0, 1.0]]


def test_count_large_angles():
    # angles 90, 180, 90, 45
    assert count_large_angles(A, B) == 3                 # > 75°
    assert count_large_angles(A, B, threshold_deg=100) == 1
    assert count_large_angles(A, B, threshold_deg=30) == 4
    assert count_large_angles(A, A) == 0
    assert count_large_angles(A, B, level="block") == 2  # down 90°, up acos(-25/26) ≈ 164°; mid 45°
    with pytest.raises(TaskVectorError, match="threshold_deg"):
        count_large_angles(A, B, threshold_deg=200)


def test_block_cosine_groups_by_unet_block():
    # up_blocks.2: [1,0,3,4]·[0,1,-3,-4] = -25, both norms √26 -> -25/26
    out = block_cosine(A, B)
    assert list(out) == ["down_blocks.1", "mid_block", "up_blocks.2"]
    assert out == pytest.approx({"down_blocks.1": 0.0, "mid_block": 1 / math.sqrt(2), "up_blocks.2": -25 / 26})
    assert block_cosine(A, B, level="tensor") == pytest.approx(per_tensor_cosine(A, B))
    with pytest.raises(TaskVectorError, match="unknown level 'blok'"):
        block_cosine(A, B, level="blok")


@pytest.mark.parametrize("key, block", [
    ("unet.down_blocks.1.attentions.0.proj_in.weight", "down_blocks.1"),
    ("down_blocks.1.attentions.0.proj_in.weight", "down_blocks.1"),
    ("unet.mid_block.attentions.0.proj_in.weight", "mid_block"),
    ("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_v.weight", "up_blocks.3"),
    ("model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", "input_blocks.4"),
    ("model.diffusion_model.middle_block.1.proj_in.weight", "middle_block"),
    ("unet.conv_in.weight", "conv_in"),
    ("text_encoder.text_model.encoder.layers.3.self_attn.q_proj.weight", "text_encoder.encoder.layers.3"),
    ("text_encoder.text_model.final_layer_norm.weight", "text_encoder"),
    ("vae.decoder.up_blocks.0.resnets.0.conv1.weight", "vae.up_blocks.0"),
])
def test_block_of(key, block):
    assert block_of(key) == block


def test_group_key_levels():
    k = "unet.mid_block.attentions.0.proj_in.bias"
    assert group_key(k, "tensor") == k
    assert group_key(k, "layer") == "unet.mid_block.attentions.0.proj_in"
    assert group_key(k, "block") == "mid_block"


def test_block_order_is_unet_order():
    keys = ["up_blocks.10.w", "up_blocks.2.w", "mid_block.w", "conv_in.w", "down_blocks.0.w"]
    v = TaskVector({k: torch.ones(2) for k in keys})
    assert list(block_cosine(v, v)) == ["down_blocks.0", "mid_block", "up_blocks.2", "up_blocks.10", "conv_in"]


def test_sparsity():
    v = tv({"x": [0.0, 1.0, 0.0, 2.0], "y": [0.05, 0.0]})
    assert sparsity(v) == 0.5                 # 3 of 6 exactly zero
    assert sparsity(v, eps=0.1) == 4 / 6      # 0.05 counts too
    assert sparsity(TaskVector()) == 1.0


def test_sign_agreement():
    a = tv({"x": [1.0, -2.0, 0.0, 3.0, 4.0], "only_a": [1.0]})
    b = tv({"x": [2.0, 2.0, 5.0, -1.0, 1.0]})
    # both non-zero at 0, 1, 3, 4; same sign at 0 and 4
    assert sign_agreement(a, b) == 0.5
    assert sign_agreement(a, a) == 1.0
    assert sign_agreement(a, -a) == 0.0
    assert sign_agreement(tv({"x": [1.0, 0.0]}), tv({"x": [0.0, 1.0]})) is None


def test_angle_deg_clamps():
    assert angle_deg(1.0000001) == 0.0 and angle_deg(-1.0000001) == 180.0 and angle_deg(0.0) == 90.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(TaskVectorError, match="'x' has shapes"):
        per_tensor_cosine(tv({"x": [1.0, 2.0]}), tv({"x": [1.0]}))
    with pytest.raises(TaskVectorError, match="not a TaskVector"):
        norms([A, {"x": torch.ones(1)}])


# --- random baseline ---------------------------------------------------------------------------------------------
BIG = TaskVector({"big": torch.linspace(-1, 1, 256 * 256).reshape(256, 256), "small": torch.tensor([3.0, 4.0]),
                  "zero": torch.zeros(3)})


def test_random_like_matches_per_tensor_norms():
    r = random_like(BIG, seed=0)
    assert r.keys() == BIG.keys()
    for k in BIG.keys():
        assert r[k].shape == BIG[k].shape and r[k].dtype == torch.float32
    assert tensor_norms(r) == pytest.approx(tensor_norms(BIG), rel=1e-6)
    assert torch.all(r["zero"] == 0)


def test_random_like_seeded():
    a, b, c = random_like(BIG, seed=1), random_like(BIG, seed=1), random_like(BIG, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in BIG.keys())
    assert not torch.equal(a["big"], c["big"])
    # per key: the same draw whatever the other keys or their order
    alone = random_like(TaskVector({"small": BIG["small"]}), seed=1)
    assert torch.equal(alone["small"], a["small"])


def test_random_like_is_nearly_orthogonal_to_the_original():
    r = random_like(BIG, seed=0)
    # 65,536 entries: a random direction's cosine with a fixed one has std 1/256
    assert abs(per_tensor_cosine(BIG, r)["big"]) < 0.02
    assert abs(r.cosine(BIG)) < 0.05
