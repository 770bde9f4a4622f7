"""torch.autocast: RTL layers cast like nn.Linear / nn.Conv2d, so converted models match the dense ones."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.masks.packed import pack_masks
from rtl_kernels.ops.library import routed_linear as routed_linear_op

BF16 = torch.bfloat16


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_lone_linear_returns_the_autocast_dtype_like_nn_linear(backend):
    torch.manual_seed(0)
    dense = nn.Linear(24, 12)
    layer = rtl.nn.RTLLinear.from_dense(dense, 3)
    layer.backend = backend
    x = torch.randn(5, 24)
    with torch.autocast("cpu", dtype=BF16):
        ref, out = dense(x), layer(x, torch.tensor([0, 2, 1, 1, 0]))
    assert ref.dtype == out.dtype == BF16
    assert _rel(out, ref) <= 2e-2
    # outside the region the layer is float32 again
    assert layer(x, 0).dtype == torch.float32


def test_autocast_gradients_reach_the_float32_parameters():
    torch.manual_seed(0)
    layer = rtl.nn.RTLLinear(16, 8, 2)
    dense = nn.Linear(16, 8)
    dense.load_state_dict({"weight": layer.weight.detach(), "bias": layer.bias.detach()})
    x = torch.randn(6, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=BF16):
        layer(x, 1).float().square().sum().backward()
    gx = x.grad.clone()
    x.grad = None
    with torch.autocast("cpu", dtype=BF16):
        dense(x).float().square().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and layer.bias.grad.dtype == torch.float32
    assert _rel(layer.weight.grad, dense.weight.grad) <= 2e-2
    assert _rel(gx, x.grad) <= 2e-2


def test_conv2d_under_autocast_matches_nn_conv2d():
    torch.manual_seed(0)
    dense = nn.Conv2d(4, 6, 3, padding=1)
    layer = rtl.nn.RTLConv2d.from_dense(dense, 2)
    x = torch.randn(3, 4, 7, 7)
    with torch.autocast("cpu", dtype=BF16):
        ref, out = dense(x), layer(x, torch.tensor([1, 0, 1]))
    assert ref.dtype == out.dtype == BF16
    assert _rel(out, ref) <= 2e-2


def test_the_op_itself_casts_under_autocast():
    torch.manual_seed(0)
    x, w = torch.randn(4, 8), torch.randn(5, 8)
    bits = pack_masks(torch.ones(2, 5, 8, dtype=torch.bool)).bits
    plan = rtl.plan_routes(torch.tensor([0, 1, 1, 0]), 2)
    args = (x, w, bits, plan.routes, plan.perm, plan.offsets, None, "reference")
    with torch.autocast("cpu", dtype=BF16):
        via_op = torch.ops.rtl_kernels.routed_linear(*args)
        eager = routed_linear_op(*args)
    assert via_op.dtype == eager.dtype == BF16
    torch.testing.assert_close(via_op, eager)


def test_converted_mlp_matches_dense_under_autocast():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 5))
    x = torch.randn(7, 12)
    with torch.autocast("cpu", dtype=BF16):
        ref = dense(x)
    model = rtl.convert(copy.deepcopy(dense), 3)
    with torch.autocast("cpu", dtype=BF16), rtl.routing(model, torch.arange(7) % 3):
        out = model(x)
    assert out.dtype == ref.dtype == BF16
    assert _rel(out, ref) <= 2e-2


def test_converted_tiny_gpt2_matches_dense_under_autocast():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    dense = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 64, (3, 10))
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        ref = dense(input_ids=ids).logits
        model = rtl.convert(copy.deepcopy(dense), 2)
        with rtl.routing(model, torch.tensor([0, 1, 1])):
            out = model(input_ids=ids).logits
    assert len(rtl.masks_of(model)) > 0
    assert out.dtype == ref.dtype
    assert _rel(out, ref) <= 2e-2
