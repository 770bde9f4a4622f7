"""define_routed_op: one spec gives a custom op (opcheck-clean), autograd on both paths and autocast."""

import pytest
import torch

from rtl_kernels.ops import define_routed_op

Tensor = torch.Tensor


def _rows_forward(x: Tensor, scales: Tensor, routes: Tensor, bias: Tensor | None, factor: float) -> Tensor:
    y = x * scales[routes].unsqueeze(1) * factor
    return y if bias is None else y + bias


def _rows_backward(dy, x, scales, routes, bias, factor, *, needs):
    need_dx, need_ds = needs
    dx = dy * scales[routes].unsqueeze(1) * factor if need_dx else None
    ds = torch.zeros_like(scales).index_add_(0, routes, (dy * x).sum(1) * factor) if need_ds else None
    return dx, ds


# a toy routed op: row i scaled by scales[routes[i]] (gradients for x and scales, none for bias)
scaled_rows = define_routed_op(
    "test_scaled_rows", _rows_forward, fake=lambda x, *rest: torch.empty_like(x), backward=_rows_backward, differentiable=("x", "scales")
)


def _args(requires_grad: bool, dtype=torch.float64):
    torch.manual_seed(0)
    x = torch.randn(6, 3, dtype=dtype, requires_grad=requires_grad)
    scales = torch.randn(4, dtype=dtype, requires_grad=requires_grad)
    return x, scales, torch.tensor([3, 0, 1, 1, 2, 3]), torch.randn(3, dtype=dtype), 0.5


@pytest.mark.parametrize("requires_grad", [False, True])
def test_declared_op_passes_opcheck(requires_grad):
    torch.library.opcheck(torch.ops.rtl_kernels.test_scaled_rows.default, _args(requires_grad))


def test_eager_path_and_op_agree_in_value_and_gradient():
    args = _args(True)
    torch.autograd.gradcheck(scaled_rows, args)
    torch.autograd.gradcheck(torch.ops.rtl_kernels.test_scaled_rows, args)
    x, scales = args[0], args[1]
    eager = torch.autograd.grad(scaled_rows(*args).square().sum(), (x, scales))
    via_op = torch.autograd.grad(torch.ops.rtl_kernels.test_scaled_rows(*args).square().sum(), (x, scales))
    for a, b in zip(eager, via_op):
        torch.testing.assert_close(a, b)


def test_only_needed_gradients_are_computed():
    seen = []
    x, scales, routes, bias, factor = _args(False)
    x.requires_grad_(True)

    def backward(dy, *args, needs):
        seen.append(needs)
        return _rows_backward(dy, *args, needs=needs)

    op = define_routed_op(
        "test_scaled_rows_needs", _rows_forward, fake=lambda x, *r: torch.empty_like(x), backward=backward, differentiable=("x", "scales")
    )
    op(x, scales, routes, bias, factor).sum().backward()
    torch.ops.rtl_kernels.test_scaled_rows_needs(x, scales, routes, bias, factor).sum().backward()
    assert seen == [(True, False), (True, False)]
    assert scales.grad is None


@pytest.mark.parametrize("call", ["eager", "op"])
def test_autocast_casts_floating_inputs_like_f_linear(call):
    x, scales, routes, bias, factor = _args(False, torch.float32)
    fn = scaled_rows if call == "eager" else torch.ops.rtl_kernels.test_scaled_rows
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fn(x, scales, routes, bias, factor)
    assert y.dtype == torch.bfloat16
    want = _rows_forward(x.bfloat16(), scales.bfloat16(), routes, bias.bfloat16(), factor)
    torch.testing.assert_close(y, want)


def test_spec_errors_name_the_argument():
    with pytest.raises(ValueError, match="differentiable: expected names"):
        define_routed_op("test_bad_diff", _rows_forward, fake=lambda *a: a[0], backward=_rows_backward, differentiable=("w",))
    with pytest.raises(ValueError, match="backward: "):
        define_routed_op("test_no_backward", _rows_forward, fake=lambda *a: a[0], differentiable=("x",))
