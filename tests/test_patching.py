"""WeightPatcher: exact hot patching on tiny SD components (offline, fast)."""

from __future__ import annotations

import hashlib
import random
import threading
import time

import pytest
import torch
from conftest import tiny_controlnet, tiny_text_encoder, tiny_unet

from tad_demo.core.patching import PatchError, WeightPatcher
from tad_demo.core.task_vector import TaskVector


def sha256_state(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(v.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def random_vector(module: torch.nn.Module, prefix: str, seed: int, keys: list[str] | None = None,
                  scale: float = 0.05) -> TaskVector:
    """A fake fine-tune: seeded fp32 noise on ``keys`` (default: every float tensor), component-prefixed."""
    g = torch.Generator().manual_seed(seed)
    sd = module.state_dict()
    keys = keys if keys is not None else [k for k, v in sd.items() if v.is_floating_point()]
    return TaskVector({f"{prefix}.{k}": scale * torch.randn(sd[k].shape, generator=g) for k in keys})


def expected_state(module: torch.nn.Module, prefix: str, base: dict[str, torch.Tensor],
                   terms: list[tuple[TaskVector, float]]) -> dict[str, torch.Tensor]:
    """Reference: sum(λᵢ·τᵢ).apply(base) on the component's own keys."""
    total = sum(s * tv for tv, s in terms)
    return total.component(prefix).apply(base)


def assert_state_equal(module: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    for k, v in module.state_dict().items():
        assert v.dtype == expected[k].dtype, k
        assert torch.equal(v, expected[k]), k


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_200_random_cycles_restore_exact_bytes(dtype):
    unet = tiny_unet().to(dtype)
    digest = sha256_state(unet)
    vectors = [random_vector(unet, "unet", seed) for seed in range(3)]
    kv = [k for k in unet.state_dict() if "attn2.to_" in k]
    vectors.append(random_vector(unet, "unet", 9, keys=kv, scale=1.0))  # sparse, larger edits
    patcher = WeightPatcher(unet, chunk_numel=1000)  # small chunks: exercise chunk boundaries
    rng = random.Random(0)
    changed = 0
    for _ in range(200):
        terms = [(tv, rng.uniform(-3.0, 3.0)) for tv in rng.sample(vectors, rng.randint(1, 3))]
        patcher.apply(terms)
        changed += sha256_state(unet) != digest
        if rng.random() < 0.5:
            patcher.restore()
            assert sha256_state(unet) == digest
    patcher.restore()
    assert changed == 200
    assert sha256_state(unet) == digest
    assert patcher.current == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_task_vector_apply_exactly(dtype):
    unet = tiny_unet().to(dtype)
    base = clone_state(unet)
    a, b = random_vector(unet, "unet", 1), random_vector(unet, "unet", 2)
    patcher = WeightPatcher({"unet": unet}, chunk_numel=777)
    patcher.apply([(a, 0.7)])
    # single vector: exactly tv.apply(state_dict, λ) — fp32 math, one cast to the parameter dtype
    assert_state_equal(unet, a.component("unet").apply(base, 0.7))
    patcher.apply([(a, 1.0), (b, -0.5)])
    assert_state_equal(unet, expected_state(unet, "unet", base, [(a, 1.0), (b, -0.5)]))


def test_default_chunk_and_whole_tensor_paths_agree():
    unet = tiny_unet()
    base = clone_state(unet)
    a = random_vector(unet, "unet", 3)
    for chunk in (None, 1, 10**9):
        patcher = WeightPatcher(unet, chunk_numel=chunk)
        patcher.apply([(a, -1.3)])
        assert_state_equal(unet, a.component("unet").apply(base, -1.3))
        patcher.release()
        assert_state_equal(unet, base)


def test_fp16_stored_vector_is_upcast_before_scaling():
    unet = tiny_unet()
    base = clone_state(unet)
    a = random_vector(unet, "unet", 4)
    half = {k: v.half() for k, v in a.deltas.items()}
    WeightPatcher(unet).apply([("half", half, 2.5)])
    assert_state_equal(unet, TaskVector(half).component("unet").apply(base, 2.5))


def test_reapply_without_restore_equals_apply_from_base():
    unet = tiny_unet()
    a, b = random_vector(unet, "unet", 1), random_vector(unet, "unet", 2)
    fresh = tiny_unet()
    WeightPatcher(fresh).apply([(b, -0.5), (a, 2.0)])
    want = clone_state(fresh)
    patcher = WeightPatcher(unet)
    patcher.apply([(a, 1.0)])
    patcher.apply([(a, 3.0)])
    patcher.apply([(b, -0.5), (a, 2.0)])
    assert_state_equal(unet, want)
    assert patcher.current == [("#0", -0.5), ("#1", 2.0)]


def test_switch_to_fewer_keys_restores_the_rest_and_zero_is_base():
    unet = tiny_unet()
    base = clone_state(unet)
    kv = [k for k in base if "attn2.to_k" in k]
    full, sparse = random_vector(unet, "unet", 1), random_vector(unet, "unet", 2, keys=kv)
    patcher = WeightPatcher(unet)
    patcher.apply([(full, 1.0)])
    patcher.apply([(sparse, 1.0)])
    assert_state_equal(unet, sparse.component("unet").apply(base))
    patcher.apply([(full, 0.0), (sparse, 0.0)])  # zero terms are dropped: exactly the base
    assert_state_equal(unet, base)
    patcher.apply([(sparse, -1.0)])
    patcher.apply([])
    assert_state_equal(unet, base)
    assert patcher.current == []


def test_backups_cover_touched_tensors_only_and_grow():
    unet = tiny_unet()
    kv = [k for k in unet.state_dict() if "attn2.to_k" in k or "attn2.to_v" in k]
    sparse = random_vector(unet, "unet", 1, keys=kv[:2])
    patcher = WeightPatcher(unet)
    patcher.apply([(sparse, 1.0)])
    assert sorted(patcher.backed_up_keys) == sorted(f"unet.{k}" for k in kv[:2])
    patcher.apply([(random_vector(unet, "unet", 2, keys=kv), 1.0)])
    assert len(patcher.backed_up_keys) == len(kv)
    want = sum(unet.state_dict()[k].numel() * 4 for k in kv)
    assert patcher.backup_bytes == want
    patcher.release()
    assert patcher.backed_up_keys == [] and patcher.backup_bytes == 0


def test_context_manager_restores_on_exception_and_nests():
    unet = tiny_unet()
    base = clone_state(unet)
    a, b = random_vector(unet, "unet", 1), random_vector(unet, "unet", 2)
    patcher = WeightPatcher(unet)
    with pytest.raises(RuntimeError, match="boom"):
        with patcher.patched([(a, 1.0)]):
            assert_state_equal(unet, a.component("unet").apply(base))
            raise RuntimeError("boom")
    assert_state_equal(unet, base)
    with patcher.patched([(a, 1.0)]):
        with patcher.patched([(b, -1.0)]):
            assert_state_equal(unet, b.component("unet").apply(base, -1.0))
        assert_state_equal(unet, a.component("unet").apply(base))  # back to the outer combination
    assert_state_equal(unet, base)


def test_unknown_key_and_bad_shape_change_nothing():
    unet = tiny_unet()
    patcher = WeightPatcher(unet)
    good = random_vector(unet, "unet", 1)
    patcher.apply([(good, 1.0)])
    digest = sha256_state(unet)
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q.weight"
    bad = TaskVector({**random_vector(unet, "unet", 2).deltas, "unet.nope.weight": torch.zeros(3)})
    with pytest.raises(PatchError, match=r"'unet\.nope\.weight' not found in unet") as e:
        patcher.apply([(random_vector(unet, "unet", 3), 1.0), (bad, 1.0)])
    assert "\n" not in str(e.value)
    assert sha256_state(unet) == digest and patcher.current == [("#0", 1.0)]
    with pytest.raises(PatchError, match=r"names no component.*with_prefix"):
        patcher.apply([(TaskVector({key.removeprefix("unet."): torch.zeros(1)}), 1.0)])
    with pytest.raises(PatchError, match=r"to_q\.weight.*shape \(3, 3\).*\(8, 8\)"):
        patcher.apply([(TaskVector({key: torch.zeros(3, 3)}), 1.0)])
    with pytest.raises(PatchError, match="finite"):
        patcher.apply([(good, float("nan"))])
    with pytest.raises(PatchError, match="registered"):
        patcher.apply({"missing": 1.0})
    assert sha256_state(unet) == digest


def test_text_encoder_patched_when_covered():
    te, unet = tiny_text_encoder(), tiny_unet()
    te_base, unet_digest = clone_state(te), sha256_state(unet)
    keys = [k for k, v in te_base.items() if v.is_floating_point() and "embeddings" not in k]
    tv = random_vector(te, "text_encoder", 5, keys=keys)
    patcher = WeightPatcher({"unet": unet, "text_encoder": te})
    patcher.register("te_edit", tv)
    patcher.apply({"te_edit": -1.0})
    assert_state_equal(te, tv.component("text_encoder").apply(te_base, -1.0))
    assert sha256_state(unet) == unet_digest
    assert patcher.current == [("te_edit", -1.0)]
    patcher.restore()
    assert_state_equal(te, te_base)


def test_controlnet_pipeline_unet_patched_controlnet_untouched(tiny_pipeline_dir):
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    pipe = StableDiffusionControlNetPipeline(**sd.components, controlnet=tiny_controlnet())
    unet_base, cn_digest = clone_state(pipe.unet), sha256_state(pipe.controlnet)
    kv = [k for k in unet_base if "attn2.to_k" in k or "attn2.to_v" in k]
    tv = random_vector(pipe.unet, "unet", 7, keys=kv)
    patcher = WeightPatcher(pipe)
    assert {"unet", "text_encoder", "controlnet", "vae"} <= set(patcher.components)
    with patcher.patched([("kumari", tv, 1.0)]):
        assert_state_equal(pipe.unet, tv.component("unet").apply(unet_base))
        assert sha256_state(pipe.controlnet) == cn_digest
        assert patcher.current == [("kumari", 1.0)]
    assert_state_equal(pipe.unet, unet_base)
    # a vector that does cover the controlnet patches it
    cn_tv = random_vector(pipe.controlnet, "controlnet", 8)
    patcher.apply([(cn_tv, 1.0)])
    assert sha256_state(pipe.controlnet) != cn_digest
    patcher.restore()
    assert sha256_state(pipe.controlnet) == cn_digest


def test_thread_safety_each_thread_sees_its_own_combination():
    unet = tiny_unet()
    base = clone_state(unet)
    vectors = [random_vector(unet, "unet", s) for s in (1, 2)]
    expected = [tv.component("unet").apply(base, lam) for tv, lam in zip(vectors, (1.0, -0.5))]
    patcher = WeightPatcher(unet)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(10):
                with patcher.patched([(vectors[i], (1.0, -0.5)[i])]):
                    assert_state_equal(unet, expected[i])
                    time.sleep(0.002)  # give the other thread a chance to interfere
                    assert_state_equal(unet, expected[i])
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert_state_equal(unet, base)


def test_module_cast_after_patching_restores_cast_base():
    unet = tiny_unet()
    base16 = {k: v.half() for k, v in clone_state(unet).items()}
    patcher = WeightPatcher(unet)
    patcher.apply([(random_vector(unet, "unet", 1), 1.0)])
    unet.half()  # replaces every tensor: the backups must follow
    patcher.restore()
    assert_state_equal(unet, base16)
