"""CUDA routed GEMV against a float64 oracle (needs a GPU; the sources are compile-checked in CI by .ci/nvcc_check)."""

import re
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference_math import linear_ref, rel_error

import rtl_kernels as rtl
from rtl_kernels.backends import cuda_backend
from rtl_kernels.backends.registry import Call

CUDA_DIR = Path(__file__).resolve().parent.parent / "csrc" / "cuda"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_kernel_sources_include_only_cuda_headers():
    kernels = [*sorted(CUDA_DIR.glob("*.cu")), CUDA_DIR / "routed_gemv.h"]
    assert kernels
    for path in kernels:
        includes = re.findall(r"#include\s*[<\"]([^>\"]+)[>\"]", path.read_text())
        assert includes, path
        for inc in includes:
            assert not inc.startswith(("torch", "ATen", "c10")), f"{path.name} includes {inc}"


def test_backend_declines_what_it_cannot_run():
    cuda = torch.device("cuda")
    assert not cuda_backend.supports(Call("linear", cuda, torch.float16, cuda_backend.MAX_ROWS + 1, (8, 8), 2))
    assert not cuda_backend.supports(Call("conv2d", cuda, torch.float16, 4, (8, 8, 3, 3), 2))
    assert not cuda_backend.supports(Call("linear", cuda, torch.float32, 4, (8, 8), 2))
    assert not cuda_backend.supports(Call("linear", torch.device("cpu"), torch.float16, 4, (8, 8), 2))
    assert cuda_backend.supports(Call("linear", cuda, torch.bfloat16, 16, (8, 8), 2))
    assert not cuda_backend.is_available(torch.device("cpu"))


@gpu
@given(
    m=st.integers(1, 64),
    n=st.integers(1, 300),
    c=st.sampled_from([1, 7, 8, 31, 64, 200, 1024]),
    k=st.integers(1, 32),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    density=st.sampled_from([0.0, 0.5, 1.0]),
    use_bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_cuda_forward_matches_float64_oracle(m, n, c, k, dtype, density, use_bias, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, c, generator=g).to(dtype)
    w = torch.randn(n, c, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if use_bias else None
    masks = torch.rand(k, n, c, generator=g) < density
    routes = torch.randint(0, k, (m,), generator=g)
    ref = linear_ref(x, w, masks, routes, b)
    dev = torch.device("cuda")
    y = rtl.routed_linear(x.to(dev), w.to(dev), masks.to(dev), routes.to(dev), None if b is None else b.to(dev), backend="cuda")
    assert y.dtype == dtype and y.shape == (m, n)
    assert rel_error(y.cpu(), ref) <= (5e-3 if dtype == torch.float16 else 2e-2)


@gpu
def test_cuda_extension_rejects_bad_inputs():
    from rtl_kernels.backends import extension

    ext = extension.load_cuda()
    if ext is None:
        pytest.skip("CUDA extension not buildable here")
    dev = torch.device("cuda")
    x = torch.randn(4, 40, device=dev, dtype=torch.float16)
    w = torch.randn(5, 40, device=dev, dtype=torch.float16)
    bits = rtl.pack_masks(torch.rand(3, 5, 40, device=dev) < 0.5).bits
    plan = rtl.plan_routes(torch.arange(4, device=dev) % 3, 3)
    with pytest.raises(ValueError, match="x: expected a contiguous"):
        ext.forward(x.t().contiguous().t(), w, bits, plan.perm, plan.offsets, None)
    with pytest.raises(TypeError, match="weight: expected dtype"):
        ext.forward(x, w.float(), bits, plan.perm, plan.offsets, None)
    with pytest.raises(ValueError, match="bits: expected shape"):
        ext.forward(x, w, bits[:, :, :1].contiguous(), plan.perm, plan.offsets, None)
    with pytest.raises(ValueError, match="rows"):
        ext.forward(torch.randn(65, 40, device=dev, dtype=torch.float16), w, bits, torch.arange(65, device=dev), plan.offsets, None)
