"""torch.library registration: opcheck on the custom ops, torch.compile(fullgraph=True) on models using them."""

import pytest
import torch
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.masks.packed import pack_masks
from rtl_kernels.routing_plans.plan import make_plan


def _linear_args(requires_grad: bool, backend: str = "reference"):
    torch.manual_seed(0)
    x = torch.randn(7, 5, requires_grad=requires_grad)
    w = torch.randn(4, 5, requires_grad=requires_grad)
    b = torch.randn(4, requires_grad=requires_grad)
    plan = make_plan(torch.tensor([2, 0, 1, 2, 2, 0, 1]), 3)
    bits = pack_masks(torch.rand(3, 4, 5) < 0.5).bits
    return (x, w, bits, plan.routes, plan.perm, plan.offsets, b, backend)


def _conv_args(requires_grad: bool, backend: str = "reference"):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 6, 6, requires_grad=requires_grad)
    w = torch.randn(6, 2, 3, 3, requires_grad=requires_grad)
    plan = make_plan(torch.tensor([1, 0, 1]), 2)
    bits = pack_masks(torch.rand(2, 6, 2, 3, 3) < 0.5).bits
    return (x, w, bits, plan.routes, plan.perm, plan.offsets, None, [2, 1], [1, 0], [1, 1], 2, backend)


# "cpu" and "auto" too: opcheck then exercises the C++ kernels (and whatever "auto" picks), not only the reference
@pytest.mark.parametrize("backend", ["reference", "cpu", "auto"])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_routed_linear(requires_grad, backend):
    if backend == "cpu" and "cpu" not in rtl.available_backends("cpu"):
        pytest.skip("the C++ CPU extension is not built here")
    torch.library.opcheck(torch.ops.rtl_kernels.routed_linear.default, _linear_args(requires_grad, backend))


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_routed_conv2d(requires_grad, backend):
    torch.library.opcheck(torch.ops.rtl_kernels.routed_conv2d.default, _conv_args(requires_grad, backend))


def test_opcheck_check_routes():
    torch.library.opcheck(torch.ops.rtl_kernels.check_routes.default, (torch.tensor([0, 1, 1], dtype=torch.int32), 2))


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = rtl.nn.RTLConv2d(3, 4, 3, num_tickets=3, padding=1)
        self.fc = rtl.nn.RTLLinear(4, 2, num_tickets=3)

    def forward(self, x, routes):
        h = self.conv(x, routes).relu().mean(dim=(2, 3))
        return self.fc(h, routes)


def test_compile_fullgraph_forward_backward_matches_eager():
    torch.manual_seed(0)
    net = TinyNet()
    net.fc.set_masks(torch.rand(3, 2, 4) < 0.5)
    compiled = torch.compile(net, fullgraph=True)
    x, routes = torch.randn(5, 3, 6, 6), torch.tensor([0, 2, 2, 1, 0])
    eager = net(x, routes)
    out = compiled(x, routes)
    torch.testing.assert_close(out, eager)
    out.sum().backward()
    grad = net.conv.weight.grad.clone()
    net.zero_grad()
    eager.sum().backward()
    torch.testing.assert_close(grad, net.conv.weight.grad)
    # a different batch size and out-of-range routes behave as in eager mode
    assert compiled(torch.randn(2, 3, 6, 6), torch.tensor([1, 1])).shape == (2, 2)
    with pytest.raises(ValueError, match=r"routes: expected ticket ids in \[0, 3\)"):
        compiled(x, torch.tensor([0, 1, 2, 3, 0]))


def test_compile_fullgraph_routed_model_with_router():
    torch.manual_seed(0)
    model = rtl.convert(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), 2)
    rtl.set_masks(model, {n: torch.rand(2, *p.weight_shape) < 0.5 for n, p in rtl.masks_of(model).items()})
    routed = rtl.RoutedModel(model, lambda x: (x.sum(-1) > 0).long())
    compiled = torch.compile(routed, fullgraph=True)
    for batch in (6, 9):
        x = torch.randn(batch, 4)
        torch.testing.assert_close(compiled(x), routed(x))
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), routed(x))


def test_first_call_of_a_fresh_process_can_be_inside_compile():
    # backend resolution (which may load or build a kernel extension) must stay outside tracing
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import torch, rtl_kernels as rtl
        lin = rtl.nn.RTLLinear(7, 4, 3)
        f = torch.compile(lambda x, r: lin(x, r), fullgraph=True)
        x, r = torch.randn(5, 7), torch.tensor([0, 1, 2, 1, 0])
        torch.testing.assert_close(f(x, r), lin(x, r))
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)


def test_compile_fullgraph_routed_batchnorm_trains_like_eager():
    """Routed BatchNorm in training mode traces with no host read (scatter-add statistics per ticket)."""
    import copy

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    routed = rtl.RoutedModel(rtl.convert(net, 3, routed_norms=True), lambda x: torch.arange(x.shape[0]) % 3)
    eager = copy.deepcopy(routed)
    compiled = torch.compile(routed, fullgraph=True)
    x = torch.randn(9, 5)
    y, ye = compiled(x), eager(x)
    torch.testing.assert_close(y, ye, rtol=1e-4, atol=1e-5)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    (ye * dy).sum().backward()
    bn, bn_eager = routed.model[1], eager.model[1]
    torch.testing.assert_close(bn.running_mean, bn_eager.running_mean)
    torch.testing.assert_close(bn.running_var, bn_eager.running_var)
    assert torch.equal(bn.num_batches_tracked, bn_eager.num_batches_tracked)
    torch.testing.assert_close(bn.weight.grad, bn_eager.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(routed.model[0].weight.grad, eager.model[0].weight.grad, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()  # its cache entries for RoutedModel.forward would count towards later tests' recompile limit
