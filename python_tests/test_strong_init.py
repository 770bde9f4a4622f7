"""Seeded frozen random weights: Philox matches Triton and Random123, dists, save/load by seed."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.init.philox import generate, philox4x32, randint4x, sqrt_rn, unit_values
from rtl_kernels.init.seeded import SeededWeightError, checksum, seeded_forward_args, spec_of

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return rtl.convert(nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5)), 3)


def test_philox_known_answer():
    # Random123 kat_vectors: philox4x32_10, counter 0, key 0
    out = philox4x32(0, 0, torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    assert [int(t) for t in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@given(seed=st.integers(0, 2**63 - 1), base=st.integers(0, 2**40))
def test_reference_matches_triton_randint4x(seed, base):
    triton = pytest.importorskip("triton")
    import triton.language as tl

    kernel = _randint_kernel(triton, tl)
    offsets = torch.arange(16, dtype=torch.int64) * 977 + base
    out = torch.empty(4, 16, dtype=torch.int32, device=DEVICE)  # Triton reads CUDA memory (CPU: the interpreter)
    kernel[(1,)](out, offsets.to(DEVICE), seed, N=16)
    ref = torch.stack(randint4x(seed, offsets))
    assert torch.equal(out.cpu().to(torch.int64) & 0xFFFFFFFF, ref)


_KERNEL = None


def _randint_kernel(triton, tl):
    global _KERNEL
    if _KERNEL is None:

        @triton.jit
        def k(out, offsets, seed, N: tl.constexpr):
            i = tl.arange(0, N)
            a, b, c, d = tl.randint4x(seed, tl.load(offsets + i))
            tl.store(out + i, a.to(tl.int32, bitcast=True))
            tl.store(out + N + i, b.to(tl.int32, bitcast=True))
            tl.store(out + 2 * N + i, c.to(tl.int32, bitcast=True))
            tl.store(out + 3 * N + i, d.to(tl.int32, bitcast=True))

        _KERNEL = k
    return _KERNEL


@pytest.mark.parametrize("dist,mean_std", [("signed_constant", (0.0, 1.0)), ("uniform", (0.0, 3**-0.5)), ("normal", (0.0, 1.0))])
def test_unit_values_have_their_distribution(dist, mean_std):
    v = unit_values(dist, 7, 11, 0, 100_000).double()
    assert abs(v.mean() - mean_std[0]) < 0.01 and abs(v.std() - mean_std[1]) < 0.01
    if dist == "signed_constant":
        assert set(v.unique().tolist()) == {-1.0, 1.0}
    if dist == "uniform":
        assert v.abs().max() < 1.0
    # any chunk of elements is the same as generating from 0
    assert torch.equal(unit_values(dist, 7, 11, 1234, 999), unit_values(dist, 7, 11, 0, 3000)[1234:2233])


def test_seeded_sets_weights_biases_and_freezes():
    model = rtl.init.seeded_(small_mlp(), 5)
    a, b = model[0], model[2]
    assert torch.equal(a.bias, torch.zeros(16)) and not a.weight.requires_grad
    assert a.weight.abs().unique().tolist() == [pytest.approx((2 / 12) ** 0.5)]
    again = rtl.init.seeded_(small_mlp(), 5)
    assert torch.equal(again[0].weight, a.weight) and not torch.equal(rtl.init.seeded_(small_mlp(), 6)[0].weight, a.weight)
    assert rtl.init.is_seeded(model)
    uni = rtl.init.seeded_(small_mlp(), 5, dist="uniform", scale=0.5)
    assert uni[2].weight.abs().max() < 0.5 and spec_of(uni[2]).scales == (0.5,)
    assert not torch.equal(b.weight[:5, :12], a.weight[:5, :12])  # layers get their own streams


@pytest.mark.parametrize("seed,err", [(-1, ValueError), (2**32, ValueError), (1.5, TypeError), ("3", TypeError), (True, TypeError)])
def test_bad_seed(seed, err):
    with pytest.raises(err, match="seed"):
        rtl.init.seeded_(small_mlp(), seed)


def test_bad_dist_scale_and_unconverted():
    with pytest.raises(ValueError, match="dist"):
        rtl.init.seeded_(small_mlp(), 1, dist="cauchy")
    with pytest.raises(ValueError, match="scale"):
        rtl.init.seeded_(small_mlp(), 1, scale=-2.0)
    with pytest.raises(ValueError, match="model"):
        rtl.init.seeded_(nn.Linear(2, 2), 1)


@pytest.mark.parametrize("dist", ["signed_constant", "uniform", "normal"])
def test_save_stores_seed_and_load_regenerates(tmp_path, dist):
    from safetensors.torch import load_file

    model = rtl.init.seeded_(small_mlp(), 9, dist=dist)
    masks = torch.rand(3, 16, 12) > 0.5
    model[0].set_masks(masks)
    rtl.save(model, tmp_path)
    stored = load_file(str(tmp_path / "weights.safetensors"))
    assert "0.weight" not in stored and "2.weight" not in stored and "0.bias" in stored
    meta = json.loads((tmp_path / "rtl.json").read_text())
    assert meta["seeded"]["0"]["generator"] == "philox4x32-10" and meta["seeded"]["0"]["seed"] == 9
    fresh = small_mlp()
    rtl.load(tmp_path, fresh)
    assert torch.equal(fresh[0].weight, model[0].weight) and torch.equal(fresh[0].get_masks(), masks)
    assert rtl.init.is_seeded(fresh) and not fresh[0].weight.requires_grad


def test_changed_weight_is_saved_with_its_tensor(tmp_path):
    from safetensors.torch import load_file

    model = rtl.init.seeded_(small_mlp(), 9)
    with torch.no_grad():
        model[2].weight[0, 0] += 1.0
    assert spec_of(model[2]) is None and spec_of(model[0]) is not None
    rtl.save(model, tmp_path)
    stored = load_file(str(tmp_path / "weights.safetensors"))
    assert "2.weight" in stored and "0.weight" not in stored
    fresh = rtl.load(tmp_path, small_mlp())
    assert torch.equal(fresh[2].weight, model[2].weight) and spec_of(fresh[2]) is None


@pytest.mark.parametrize("field,value", [("checksum", "0" * 64), ("generator", "xorshift"), ("generator_version", 99), ("seed", -3)])
def test_mismatched_seeded_save_leaves_model_untouched(tmp_path, field, value):
    rtl.save(rtl.init.seeded_(small_mlp(), 9), tmp_path)
    meta = json.loads((tmp_path / "rtl.json").read_text())
    meta["seeded"]["0"][field] = value
    (tmp_path / "rtl.json").write_text(json.dumps(meta))
    target = small_mlp()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(SeededWeightError, match="seeded layer '0'"):
        rtl.load(tmp_path, target)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_checksum_sees_dtype_and_values():
    t = torch.ones(3)
    assert checksum(t) == checksum(t.clone()) != checksum(t.double()) and checksum(t) != checksum(t * 2)


@given(st.lists(st.floats(0.0, 3.4028234663852886e38, width=32), min_size=1, max_size=200))
def test_sqrt_rn_is_correctly_rounded(values):
    import numpy as np

    x = torch.tensor([*values, 0.0, -0.0, 1e-45], dtype=torch.float32)
    exact = torch.from_numpy(np.sqrt(x.double().numpy()).astype(np.float32))  # float64 root, one rounding: exact
    got = sqrt_rn(x)
    assert torch.equal(got, exact) and torch.equal(torch.signbit(got), torch.signbit(x))


@pytest.mark.parametrize("dist", ["normal", "signed_constant"])
def test_version_1_saves_still_load(tmp_path, dist):
    """A save written by generator version 1 regenerates by the version 1 rule; its normal weights
    (torch.sqrt, one ulp off for some values) are never run by the kernels, which implement version 2."""
    model = rtl.init.seeded_(small_mlp(), 9, dist=dist)
    rtl.save(model, tmp_path)
    meta = json.loads((tmp_path / "rtl.json").read_text())
    old = {}
    for name, e in meta["seeded"].items():
        layer = model[int(name)]
        unit = generate(tuple(layer.weight.shape), dist, e["seed"], e["layer_id"], 1.0, version=1)
        old[name] = unit * torch.tensor(e["scales"], dtype=torch.float32)
        e.update(generator_version=1, checksum=checksum(old[name]))
    (tmp_path / "rtl.json").write_text(json.dumps(meta))
    differs = any(not torch.equal(w, model[int(name)].weight) for name, w in old.items())
    assert differs == (dist == "normal")  # only normal's rule changed
    fresh = rtl.load(tmp_path, small_mlp())
    for name, w in old.items():
        layer = fresh[int(name)]
        assert torch.equal(layer.weight, w) and spec_of(layer).version == 1
        uses_kernel = seeded_forward_args(layer, torch.ones(1)) is not None
        assert uses_kernel == (dist != "normal")
    rtl.save(fresh, tmp_path / "again")
    again = json.loads((tmp_path / "again" / "rtl.json").read_text())
    assert {e["generator_version"] for e in again["seeded"].values()} == {1}
