"""RTLDeltaConv2d: K merged experts in one conv layer, on every routed_conv2d backend against a float64
oracle that builds each image's dense filter (forward and backward); CNN merges end to end; save/load.

Triton runs on ``DEVICE`` (CUDA where present, else the CPU interpreter conftest enables) with tiny
shapes; the other backends and the oracle stay on the CPU, and results are compared there.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_math import TOLERANCE, rel_error
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.backends.registry import available_backends
from rtl_kernels.merge import emr, tall, task_arithmetic, ties
from rtl_kernels.merge.build import delta_layers
from rtl_kernels.nn import RTLDeltaConv2d, RTLDeltaLinear
from rtl_kernels.zoo.mnist import SmallCNN

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_of(backend: str) -> torch.device:
    return DEVICE if backend == "triton" else torch.device("cpu")


BACKENDS = [b for b in ("reference", "cpu", "triton") if b in available_backends(device_of(b))]
CPU_BACKENDS = [b for b in BACKENDS if b != "triton"]
GRAD_NAMES = ("x", "weight", "bias", "delta", "bias_delta", "scales")


# ----------------------------------------------------------------------------- the oracle


def dense_conv(geometry: dict, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """A plain float64 ``nn.Conv2d`` of ``geometry`` (its own padding modes) whose tensors are ``weight``/``bias``."""
    conv = nn.Conv2d(geometry["cin"], geometry["cout"], weight.shape[2:], bias=bias is not None, dtype=torch.float64, **geometry["conv"])
    del conv.weight, conv.bias
    conv.weight, conv.bias = weight, bias  # plain tensors: gradients flow back to the oracle's leaves
    return conv


def oracle(case: dict, t: dict) -> torch.Tensor:
    """Image b through its ticket's dense filter ``weight + s[r]·(delta ⊙ M[r])`` and bias, in float64."""
    zero = torch.zeros((), dtype=torch.float64)
    outs = []
    for b in range(t["x"].shape[0]) or [None]:
        r = int(case["routes"][b]) if b is not None else 0
        s = t["scales"][r]
        w = t["weight"] + s * torch.where(case["masks"][r], t["delta"], zero)
        bias = None if t["bias"] is None else t["bias"] + s * torch.where(case["bias_masks"][r], t["bias_delta"], zero)
        xb = t["x"][b : b + 1] if b is not None else t["x"]
        outs.append(dense_conv(case["geometry"], w, bias)(xb))
    return torch.cat(outs)


@st.composite
def cases(draw, tiny: bool = False):
    """A random layer (shapes, K, stride/padding/padding mode/dilation/groups, bias), merge and routes."""
    groups = draw(st.sampled_from([1, 2]))
    cin, cout = groups * draw(st.integers(1, 2 if tiny else 3)), groups * draw(st.integers(1, 2 if tiny else 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.sampled_from([0, 1, 2, (1, 0), "same", "valid"]))
    stride = (1, 1) if padding == "same" else (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding_mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    h = draw(st.integers(max(3, dilation[0] * (kh - 1) + 1), 5 if tiny else 7))
    w = draw(st.integers(max(3, dilation[1] * (kw - 1) + 1), 5 if tiny else 7))
    k = draw(st.integers(1, 3 if tiny else 4))
    b = draw(st.integers(0, 3 if tiny else 5))
    has_bias = draw(st.booleans())
    density = draw(st.sampled_from([0.0, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    wshape = (cout, cin // groups, kh, kw)
    masks = torch.rand(k, *wshape, generator=g) < density
    if k > 1 and draw(st.booleans()):
        masks[-1] = False  # an empty ticket: its filter is the base
    routes = torch.randint(0, k, (b,), generator=g)
    tensors = {
        "x": torch.randn(b, cin, h, w, generator=g),
        "weight": torch.randn(wshape, generator=g),
        "delta": torch.randn(wshape, generator=g),
        "scales": torch.rand(k, generator=g) + 0.5,
        "bias": torch.randn(cout, generator=g) if has_bias else None,
        "bias_delta": torch.randn(cout, generator=g) if has_bias else None,
    }
    conv_kw = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups, "padding_mode": padding_mode}
    return {
        "geometry": {"cin": cin, "cout": cout, "kernel": (kh, kw), "conv": conv_kw},
        "masks": masks,
        "bias_masks": torch.rand(k, cout, generator=g) < 0.5,
        "routes": routes,
        "route_kind": draw(st.sampled_from(["tensor", "plan", "int"] if b else ["tensor"])),
        "tensors": tensors,
        "k": k,
    }


def make_layer(case: dict, backend: str = "reference", dtype: torch.dtype = torch.float32) -> RTLDeltaConv2d:
    g, t = case["geometry"], case["tensors"]
    layer = RTLDeltaConv2d(g["cin"], g["cout"], g["kernel"], case["k"], bias=t["bias"] is not None, dtype=dtype, **g["conv"])
    with torch.no_grad():
        layer.weight.copy_(t["weight"])
        if t["bias"] is not None:
            layer.bias.copy_(t["bias"])
    layer.set_merge(t["delta"], case["masks"], t["scales"], t["bias_delta"], case["bias_masks"] if t["bias"] is not None else None)
    layer.backend = backend
    return layer.to(device_of(backend))


def layer_routes(case: dict, backend: str):
    routes = case["routes"]
    if case["route_kind"] == "int":
        case["routes"] = torch.full_like(routes, int(routes[0]))
        return int(routes[0])
    routes = routes.to(device_of(backend))
    return rtl.plan_routes(routes, case["k"]) if case["route_kind"] == "plan" else routes


def check_case(case: dict, backend: str, dtype: torch.dtype = torch.float32, form: str = "auto") -> None:
    layer = make_layer(case, backend, dtype)
    layer.delta_form = form
    routes = layer_routes(case, backend)
    x = case["tensors"]["x"].to(device_of(backend), dtype, copy=True).requires_grad_(True)
    y = layer(x, routes)
    ref_leaves = {n: (None if v is None else v.detach().double().clone().requires_grad_(True)) for n, v in case["tensors"].items()}
    ref = oracle(case, ref_leaves)
    assert y.shape == ref.shape and y.dtype == dtype
    tol = TOLERANCE[dtype]
    assert rel_error(y.cpu(), ref) <= tol
    with torch.no_grad():  # serving: the per-ticket form builds its filters from the bits (cpu kernel)
        served = layer(x, routes)
    assert served.shape == ref.shape and rel_error(served.cpu(), ref) <= tol
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y.backward(dy.to(y.device, dtype))
    ref.backward(dy)
    got = {"x": x.grad, **{name: getattr(layer, name) for name in GRAD_NAMES[1:]}}
    got = {name: (g if name == "x" or g is None else g.grad) for name, g in got.items()}
    for name in GRAD_NAMES:
        want = ref_leaves[name]
        if want is None:
            assert got[name] is None, name
            continue
        assert got[name] is not None and got[name].shape == want.shape, name
        assert rel_error(got[name].cpu(), want.grad) <= tol, (name, rel_error(got[name].cpu(), want.grad))


FORMS = ("fused", "per_ticket")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(case=cases())
def test_forward_and_backward_match_float64_per_image_filters(backend, form, case):
    check_case(case, backend, form=form)


@pytest.mark.parametrize("form", FORMS)
@given(case=cases())
def test_float64_layer_on_the_reference_backend_is_exact(form, case):
    check_case(case, "reference", torch.float64, form)


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton backend unavailable on this device")
@settings(max_examples=10)
@given(case=cases(tiny=True))
def test_triton_forward_and_backward_match_float64(case):
    check_case(case, "triton")


# ----------------------------------------------------------------------------- the layer


def _merged_layer(k=3, bias=True, seed=0, **conv_kw) -> RTLDeltaConv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(4, 6, 3, bias=bias, **conv_kw)
    layer = RTLDeltaConv2d.from_dense(conv, k)
    masks = torch.rand(k, *conv.weight.shape) < 0.5
    scales = torch.rand(k) + 0.5
    layer.set_merge(
        torch.randn_like(conv.weight), masks, scales, torch.randn(6) if bias else None, torch.rand(k, 6) < 0.5 if bias else None
    )
    return layer


def test_from_dense_is_the_dense_conv_and_to_dense_gives_each_ticket():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="circular")
    layer = RTLDeltaConv2d.from_dense(conv, 3)
    assert layer.weight is conv.weight and layer.bias is conv.bias  # the base is the module's own Parameters
    x, routes = torch.randn(5, 4, 7, 6), torch.tensor([2, 0, 1, 1, 0])
    torch.testing.assert_close(layer(x, routes), conv(x))  # zero delta: every ticket is the dense layer
    layer.set_merge(torch.randn_like(conv.weight), torch.rand(3, *conv.weight.shape) < 0.5, torch.tensor([1.0, 0.5, 2.0]), torch.randn(6))
    y = layer(x, routes)
    masks = layer.get_masks()
    for t in range(3):
        dense = layer.to_dense(t)
        assert type(dense) is nn.Conv2d and dense.padding_mode == "circular" and dense.groups == 2 and dense.stride == (2, 2)
        want_w = layer.weight + layer.scales[t] * torch.where(masks[t], layer.delta, torch.zeros(()))
        torch.testing.assert_close(layer.ticket_weight(t), want_w.detach())
        torch.testing.assert_close(dense.weight, want_w.detach())
        torch.testing.assert_close(y[routes == t], dense(x[routes == t]))
    assert "num_tickets=3" in repr(layer) and "groups=2" in repr(layer)


@pytest.mark.parametrize("form", ("auto", *FORMS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_tickets_empty_batch_int_routes_unbatched_and_channels_last(backend, form):
    dev = device_of(backend)
    layer = _merged_layer(padding=1)
    with torch.no_grad():
        layer.mask_bits[2] = 0  # ticket 2 has no delta at all
    layer.backend = backend
    layer.delta_form = form
    layer.to(dev)
    x = torch.randn(4, 4, 5, 5, device=dev)
    base_only = nn.functional.conv2d(x, layer.weight, None, 1, 1) + layer.ticket_bias()[2][:, None, None]
    torch.testing.assert_close(layer(x, 2), base_only)
    torch.testing.assert_close(layer(x, torch.full((4,), 2, device=dev)), base_only)
    empty = layer(x[:0], torch.zeros(0, dtype=torch.long, device=dev))
    assert empty.shape == (0, 6, 5, 5)
    one = layer(x[1], 1)  # an unbatched [C, H, W] image
    torch.testing.assert_close(one, layer(x[1:2], 1)[0])
    cl = x.contiguous(memory_format=torch.channels_last)
    y = layer(cl, torch.tensor([0, 1, 0, 1], device=dev))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, layer(x, torch.tensor([0, 1, 0, 1], device=dev)))
    single = _merged_layer(k=1).to(dev)
    single.backend, single.delta_form = backend, form
    torch.testing.assert_close(single(x), single.to_dense(0)(x))  # K = 1: no routes needed
    with torch.no_grad():
        torch.testing.assert_close(layer(x[:0], torch.zeros(0, dtype=torch.long, device=dev)), empty.detach())
        torch.testing.assert_close(layer(x, torch.tensor([1, 1, 0, 1], device=dev)), y_tickets(layer, x, [1, 1, 0, 1]))
        torch.testing.assert_close(single(x), single.to_dense(0)(x))


def y_tickets(layer: RTLDeltaConv2d, x: torch.Tensor, routes: list[int]) -> torch.Tensor:
    """Each image through its ticket's dense conv."""
    return torch.cat([layer.to_dense(r)(x[i : i + 1]) for i, r in enumerate(routes)])


def test_auto_form_follows_the_measured_cost_rule(monkeypatch):
    """Serving on the CPU: per-ticket from PER_TICKET_MIN_MACS multiply-adds per ticket and channel;
    fused below it, under autograd, for an empty batch, and a bad ``delta_form`` is named."""
    from rtl_kernels.nn import delta as delta_mod

    chosen = []
    real = RTLDeltaConv2d._form
    monkeypatch.setattr(RTLDeltaConv2d, "_form", lambda self, *a: chosen.append(real(self, *a)) or chosen[-1])
    monkeypatch.setattr(delta_mod, "PER_TICKET_MIN_MACS", {torch.float32: 2 * 5 * 5 * 4 * 9})  # 2 images per ticket, 5x5, 4x3x3
    layer = _merged_layer(k=3, padding=1)  # 4 -> 6 channels: fan-in 36
    x = torch.randn(6, 4, 5, 5)
    with torch.no_grad():
        assert layer(x, torch.tensor([0, 0, 1, 1, 2, 2])).shape == (6, 6, 5, 5)  # 2 per active ticket: at the limit
        layer(x, torch.tensor([0, 0, 0, 1, 1, 2]))  # 3 active tickets, 2 images each on average
        layer(x[:4], torch.tensor([0, 0, 1, 2]))  # 4/3 per ticket: below
        layer(x[:2], torch.tensor([1, 1]))  # one active ticket with 2 images
        layer(x[:0], torch.zeros(0, dtype=torch.long))  # empty batch
    layer(x, torch.tensor([0, 0, 1, 1, 2, 2]))  # autograd: fused
    assert chosen == ["per_ticket", "per_ticket", "fused", "per_ticket", "fused", "fused"]
    layer.delta_form = "dense"
    with pytest.raises(ValueError, match="delta_form: expected one of"):
        layer(x, 0)


def test_routes_from_the_model_context_routed_model_and_no_grad():
    layer = _merged_layer(k=3, padding="same")
    model = nn.Sequential(layer, nn.ReLU(), nn.Flatten(), RTLDeltaLinear(6 * 5 * 5, 2, 3))
    model[3].scales = layer.scales  # shared as convert_delta shares them
    x, routes = torch.randn(6, 4, 5, 5), torch.tensor([2, 0, 1, 1, 0, 2])
    with rtl.routing(model, routes):
        y = model(x)
    routed = rtl.RoutedModel(model, router=lambda inp: routes)
    torch.testing.assert_close(routed(x), y)
    with torch.no_grad():
        torch.testing.assert_close(routed(x, routes=routes), y.detach())
    for t in range(3):
        dense = nn.Sequential(layer.to_dense(t), nn.ReLU(), nn.Flatten(), model[3].to_dense(t))
        torch.testing.assert_close(y[routes == t], dense(x[routes == t]))
    with pytest.raises(ValueError, match="routes: expected ticket ids for this RTLDeltaConv2d"):
        layer(x)


def test_bad_input_names_the_argument():
    layer = _merged_layer(k=2)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    w = layer.weight
    with pytest.raises(TypeError, match=r"module: expected an nn\.Conv2d"):
        RTLDeltaConv2d.from_dense(nn.Linear(3, 3), 2)
    with pytest.raises(ValueError, match="num_tickets: expected a positive int"):
        RTLDeltaConv2d.from_dense(nn.Conv2d(4, 6, 3), 0)
    with pytest.raises(ValueError, match="groups: expected in_channels"):
        RTLDeltaConv2d(4, 6, 3, 2, groups=4)
    with pytest.raises(ValueError, match="padding_mode: expected one of"):
        RTLDeltaConv2d(4, 6, 3, 2, padding_mode="mirror")
    ones = torch.ones(2, *w.shape, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"delta: expected shape \[6, 4, 3, 3\]"):
        layer.set_merge(torch.zeros(6, 4, 3), ones, torch.ones(2))
    with pytest.raises(ValueError, match=r"scales: expected shape \[2\]"):
        layer.set_merge(torch.zeros_like(w), ones, torch.ones(3))
    with pytest.raises(ValueError, match=r"masks: expected shape \[2, 6, 4, 3, 3\]"):
        layer.set_merge(torch.zeros_like(w), ones[:1], torch.ones(2))
    with pytest.raises(ValueError, match=r"bias_delta: expected shape \[6\]"):
        layer.set_merge(torch.zeros_like(w), ones, torch.ones(2), torch.zeros(5))
    with pytest.raises(ValueError, match=r"bias_masks: expected shape \[2, 6\]"):
        layer.set_merge(torch.zeros_like(w), ones, torch.ones(2), torch.zeros(6), torch.ones(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="bias_delta: expected None"):
        _merged_layer(k=2, bias=False).set_merge(torch.zeros_like(w), ones, torch.ones(2), torch.zeros(6))
    assert all(torch.equal(layer.state_dict()[k], v) for k, v in before.items())  # nothing was written
    x = torch.randn(3, 4, 6, 6)
    with pytest.raises(ValueError, match="x: expected 4 input channels"):
        layer(torch.randn(3, 5, 6, 6), 0)
    with pytest.raises(ValueError, match="x: expected a 3-D or 4-D tensor"):
        layer(torch.randn(3, 4), 0)
    with pytest.raises(TypeError, match=r"x: expected dtype torch\.float32"):
        layer(x.double(), 0)
    with pytest.raises(TypeError, match=r"x: expected a torch\.Tensor"):
        layer([1.0], 0)
    with pytest.raises(ValueError, match="x: spatial size"):
        layer(torch.randn(3, 4, 2, 6), 0)
    with pytest.raises(ValueError, match=r"routes: expected ticket ids in \[0, 2\)"):
        layer(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="routes: expected a shape that is a prefix"):
        layer(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"ticket: expected an int in \[0, 2\)"):
        layer.to_dense(2)
    with pytest.raises(ValueError, match="padding: 'same' needs stride 1"):
        RTLDeltaConv2d(4, 6, 3, 2, stride=2, padding="same")(x, 0)
    with pytest.raises(ValueError, match="backend: expected one of"):
        layer.backend = "fast"
        layer(x, 0)


# ----------------------------------------------------------------------------- merging CNNs


class TinyCNN(nn.Module):
    """Every conv geometry the layer takes: padding modes, stride, groups (and depthwise), no bias, 'same', dilation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect")
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2, bias=False)
        self.conv3 = nn.Conv2d(4, 6, 1)
        self.conv4 = nn.Conv2d(6, 6, 3, padding="same", dilation=2, groups=6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv3(torch.relu(self.conv2(x))))
        return self.head(self.conv4(x).mean((2, 3)))


def _cnn_experts(arch, k: int, noise: float = 0.05, norms: bool = False, seed: int = 0):
    """K fine-tunes of a base CNN: Gaussian changes on the conv and linear parameters (and the norms' with ``norms``)."""
    torch.manual_seed(seed)
    base = arch().eval()
    experts = []
    for _ in range(k):
        e = copy.deepcopy(base)
        with torch.no_grad():
            for module in e.modules():
                if type(module) in (nn.Conv2d, nn.Linear) or (norms and isinstance(module, nn.BatchNorm2d)):
                    for p in module.parameters(recurse=False):
                        p.add_(noise * torch.randn_like(p))
        experts.append(e)
    return base, experts


ARCHS = {"tiny": (TinyCNN, (2, 9, 8)), "small": (lambda: SmallCNN(width=4), (1, 28, 28))}


@pytest.mark.parametrize("arch", ["tiny", "small"])
@pytest.mark.parametrize("method", ["tall", "emr"])
@pytest.mark.parametrize("routed", [True, False])
def test_single_expert_cnn_merge_gives_back_that_expert(arch, method, routed):
    build, shape = ARCHS[arch]
    base, (expert,) = _cnn_experts(build, 1, norms=True)
    merged = rtl.merge.merge_experts(base, [expert], method=method, routed=routed)
    x = torch.rand(5, *shape)
    if routed:
        assert all(type(m) is not nn.Conv2d for m in merged.modules())
        with rtl.routing(merged, 0):
            y = merged(x)
    else:
        y = merged(x)
    torch.testing.assert_close(y, expert(x), atol=1e-5, rtol=1e-5)


MERGES = {
    "tall": lambda b, v: tall(b, v),
    "emr": lambda b, v: emr(b, v),
    "ties": lambda b, v: ties(b, v),
    "task_arithmetic": lambda b, v: task_arithmetic(b, v),
}


@pytest.mark.parametrize("method", list(MERGES))
def test_each_ticket_of_a_k3_cnn_merge_is_the_merges_ticket_state(method, caplog):
    base, experts = _cnn_experts(TinyCNN, 3, noise=0.2)
    with caplog.at_level(logging.WARNING, logger="rtl_kernels.merge"):
        merged = rtl.merge.merge_experts(base, experts, method=method)
    assert not caplog.records  # only conv and linear tensors differ between the experts: nothing is averaged
    layers = delta_layers(merged)
    assert sorted(layers) == ["conv1", "conv2", "conv3", "conv4", "head"]
    assert all(isinstance(layers[f"conv{i}"], RTLDeltaConv2d) for i in range(1, 5))
    assert len({id(layer.scales) for layer in layers.values()}) == 1
    merge = MERGES[method](*rtl.merge.task_vectors(base, experts))
    x, routes = torch.rand(9, 2, 9, 8), torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2])
    with rtl.routing(merged, routes):
        y = merged(x)
    for t in range(3):
        want = torch.func.functional_call(base, merge.ticket_state(t), (x[routes == t],))
        torch.testing.assert_close(y[routes == t], want, atol=1e-5, rtol=1e-5)


def test_only_the_tensors_that_stay_shared_are_reported(caplog):
    base, experts = _cnn_experts(TinyCNN, 2, norms=True)
    with caplog.at_level(logging.WARNING, logger="rtl_kernels.merge"):
        rtl.merge.merge_experts(base, experts, method="emr")
    (record,) = caplog.records
    message = record.getMessage()
    assert "2 tensors outside the linear and conv layers" in message and "'bn.weight', 'bn.bias'" in message
    assert "conv" not in message.replace("linear and conv layers", "")


def test_merged_cnn_saves_and_loads_into_convert_delta(tmp_path):
    from safetensors.torch import load_file

    base, experts = _cnn_experts(TinyCNN, 3)
    merged = rtl.merge.merge_experts(base, experts, method="emr")
    rtl.save(merged, tmp_path / "m")
    fresh = rtl.load(tmp_path / "m", rtl.merge.convert_delta(TinyCNN().eval(), 3))
    x, routes = torch.rand(6, 2, 9, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad(), rtl.routing(merged, routes):
        want = merged(x)
    with torch.no_grad():
        torch.testing.assert_close(rtl.RoutedModel(fresh)(x, routes=routes), want)
    weights = load_file(str(tmp_path / "m" / "weights.safetensors"))
    masks = load_file(str(tmp_path / "m" / "masks.safetensors"))
    assert {"conv1.weight", "conv1.delta", "conv1.bias", "conv1.bias_delta", "conv2.delta"} <= set(weights)
    assert "conv2.bias_delta" not in weights and "conv2.bias_mask_bits" not in weights  # conv2 has no bias
    assert weights["conv1.bias_mask_bits"].dtype == torch.uint8 and weights["conv1.bias_mask_bits"].numel() == (3 * 4 + 7) // 8
    assert [k for k in weights if k.endswith("scales")] == ["conv1.scales"]  # the K scales once
    assert masks["conv2"].numel() == (3 * 4 * 2 * 3 * 3 + 7) // 8  # flat: K · out · in/groups · kh · kw bits
    for name, layer in delta_layers(merged).items():
        assert torch.equal(fresh.get_submodule(name).mask_bits, layer.mask_bits)


def test_convert_delta_takes_exactly_linear_and_conv2d():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(nn.Conv2d(2, 3, 1), MyConv(3, 3, 1), nn.Flatten(), nn.Linear(3, 2))
    rtl.merge.convert_delta(model, 2)
    assert [type(m).__name__ for m in model] == ["RTLDeltaConv2d", "MyConv", "Flatten", "RTLDeltaLinear"]
    assert model[0].scales is model[3].scales
    bare = rtl.merge.convert_delta(nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.Linear(3, 2, bias=False)), 2)
    assert bare[0].ticket_bias() is None and bare[1].ticket_bias() is None  # bias-less layers: registered as None
    assert bare[1](torch.randn(4, 3), 1).shape == (4, 2) and bare[0](torch.randn(4, 2, 3, 3), 1).shape == (4, 3, 3, 3)
    with pytest.raises(ValueError, match=r"model: expected a model with nn\.Linear or nn\.Conv2d layers"):
        rtl.merge.convert_delta(nn.Sequential(nn.ReLU()), 2)


def test_fda_on_a_cnn_adapts_the_linear_layers_and_says_the_convs_keep_their_merge(caplog):
    base, experts = _cnn_experts(TinyCNN, 2, noise=0.2)
    opts = {"anchors": 8, "construct_steps": 3, "adapt_epochs": 2, "adapt_lr": 1e-2}
    tall_model = rtl.merge.merge_experts(base, experts, method="tall")
    with caplog.at_level(logging.WARNING, logger="rtl_kernels.merge"):
        aware = rtl.merge.merge_experts(base, experts, method="fda", masks="tall", **opts)
    assert any("4 nn.Conv2d layers keep the TALL masks and delta" in r.getMessage() for r in caplog.records)
    for name, layer in delta_layers(aware).items():
        ref = tall_model.get_submodule(name)
        assert torch.equal(layer.mask_bits, ref.mask_bits) and torch.equal(layer.weight, ref.weight)
        assert torch.equal(layer.delta, ref.delta) == name.startswith("conv")  # only the head's delta is trained
    x = torch.rand(4, 2, 9, 8)
    with rtl.routing(aware, torch.tensor([0, 1, 1, 0])):
        assert torch.isfinite(aware(x)).all()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rtl_kernels.merge"):
        dense = rtl.merge.merge_experts(base, experts, method="fda", routed=False, **opts)
    assert type(dense) is TinyCNN and torch.isfinite(dense(x)).all()
    assert any("keep the task-arithmetic merge" in r.getMessage() for r in caplog.records)
