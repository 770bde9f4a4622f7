"""Bad input raises ValueError/TypeError naming the argument, what was expected and what came."""

import pytest
import torch

import rtl_kernels as rtl

X, W = torch.randn(4, 6), torch.randn(5, 6)
MASKS = torch.ones(3, 5, 6, dtype=torch.bool)
ROUTES = torch.tensor([0, 1, 2, 1])


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        ({"routes": torch.tensor([0, 1, 3, 1])}, ValueError, r"routes: expected ticket ids in \[0, 3\).*max 3"),
        ({"routes": torch.tensor([0, -1, 2, 1])}, ValueError, r"routes: expected ticket ids in \[0, 3\).*min -1"),
        ({"routes": 3}, ValueError, r"routes: expected a ticket id in \[0, 3\), got 3"),
        ({"routes": torch.tensor([0.0, 1.0, 2.0, 1.0])}, TypeError, "routes: expected an integer tensor.*float32"),
        ({"routes": torch.tensor([True, False, True, True])}, TypeError, "routes: expected an integer tensor.*bool"),
        ({"routes": 1.0}, TypeError, "routes: expected an int, an integer tensor or a RoutingPlan, got float"),
        (
            {"routes": torch.tensor([0, 1, 2])},
            ValueError,
            r"routes: expected a shape that is a prefix of x.shape\[:-1\] = \[4\], got \[3\]",
        ),
        ({"masks": torch.ones(3, 5, 7, dtype=torch.bool)}, ValueError, r"masks: expected shape \[K, 5, 6\].*got \[3, 5, 7\]"),
        ({"masks": torch.ones(3, 5, 6)}, TypeError, "masks: expected a bool tensor.*float32"),
        (
            {"masks": rtl.pack_masks(torch.ones(3, 6, 5, dtype=torch.bool))},
            ValueError,
            r"masks: expected PackedMasks for weight shape \[5, 6\], got \[6, 5\]",
        ),
        ({"x": torch.randn(4, 7)}, ValueError, r"x: expected last dimension in_features = 6.*\[4, 7\]"),
        ({"x": torch.randn(4, 6, dtype=torch.float64), "weight": W}, TypeError, "weight: expected dtype torch.float64"),
        ({"x": torch.randint(0, 3, (4, 6))}, TypeError, "x: expected dtype float32, float16, bfloat16 or float64, got torch.int64"),
        ({"weight": torch.randn(5, 6, 1)}, ValueError, r"weight: expected a 2-D tensor, got shape \[5, 6, 1\]"),
        ({"bias": torch.randn(4)}, ValueError, r"bias: expected shape \[5\]"),
        ({"backend": "fastest"}, ValueError, "backend: expected one of"),
        ({"x": [1.0] * 6}, TypeError, "x: expected a torch.Tensor, got list"),
    ],
)
def test_routed_linear_rejects(kwargs, exc, pattern):
    args = {"x": X, "weight": W, "masks": MASKS, "routes": ROUTES, "bias": None, **kwargs}
    with pytest.raises(exc, match=pattern):
        rtl.routed_linear(args.pop("x"), args.pop("weight"), args.pop("masks"), args.pop("routes"), args.pop("bias"), **args)


def test_mismatched_devices_are_rejected():
    meta_w = torch.empty(5, 6, device="meta")
    with pytest.raises(ValueError, match=r"weight: expected a tensor on cpu.*meta"):
        rtl.routed_linear(X, meta_w, MASKS, ROUTES)
    with pytest.raises(ValueError, match=r"routes: expected a tensor on cpu.*meta"):
        rtl.routed_linear(X, W, MASKS, torch.zeros(4, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match=r"masks: expected a tensor on cpu.*meta"):
        rtl.routed_linear(X, W, torch.ones(3, 5, 6, dtype=torch.bool, device="meta"), ROUTES)


def test_unavailable_backend_is_a_clear_error():
    missing = [b for b in ("cuda", "triton") if b not in rtl.available_backends("cpu")]
    if not missing:
        pytest.skip("every backend is available here")
    with pytest.raises(ValueError, match=f"backend: '{missing[0]}' is not"):
        rtl.routed_linear(X, W, MASKS, ROUTES, backend=missing[0])


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        ({"x": torch.randn(2, 5, 6, 6)}, ValueError, r"x: expected 4 input channels"),
        ({"x": torch.randn(4, 6)}, ValueError, r"x: expected a 3-D or 4-D tensor"),
        ({"x": torch.randn(2, 4, 2, 2)}, ValueError, "x: spatial size"),
        ({"routes": torch.tensor([[0], [1]])}, ValueError, r"routes: expected a shape that is a prefix of \[B\]"),
        ({"routes": torch.tensor([0, 5])}, ValueError, r"routes: expected ticket ids in \[0, 3\)"),
        ({"groups": 4}, ValueError, "weight: expected out_channels 6 divisible by groups = 4"),
        ({"stride": 0}, ValueError, "stride: expected values >= 1"),
        ({"padding": "full"}, ValueError, "padding: expected an int, a pair of ints, 'valid' or 'same'"),
        ({"padding": "same", "stride": 2}, ValueError, "padding: 'same' needs stride 1"),
    ],
)
def test_routed_conv2d_rejects(kwargs, exc, pattern):
    args = {"x": torch.randn(2, 4, 6, 6), "routes": torch.tensor([0, 2]), **kwargs}
    w = torch.randn(6, 4, 3, 3)
    masks = torch.ones(3, *w.shape, dtype=torch.bool)
    with pytest.raises(exc, match=pattern):
        rtl.routed_conv2d(args.pop("x"), w, masks, args.pop("routes"), **args)


def test_route_check_opt_out_clamps_instead_of_crashing():
    try:
        rtl.set_route_checks(False)
        y = rtl.routed_linear(X, W, MASKS, torch.tensor([0, 1, 9, -4]))
    finally:
        rtl.set_route_checks(True)
    assert y.shape == (4, 5) and torch.isfinite(y).all()
    # per call override wins over the global default
    rtl.routed_linear(X, W, MASKS, torch.tensor([0, 1, 9, 1]), check_routes=False)
    with pytest.raises(ValueError, match="routes"):
        rtl.routed_linear(X, W, MASKS, torch.tensor([0, 1, 9, 1]))
