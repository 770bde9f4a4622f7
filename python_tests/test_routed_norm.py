"""Routed BatchNorm (per-ticket running statistics): float64 reference, routing, growth, recalibration, save/load, errors."""

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

import rtl_kernels as rtl
from rtl_kernels.models import convert_norms
from rtl_kernels.nn import RTLBatchNorm1d, RTLBatchNorm2d
from rtl_kernels.pipeline import add_tickets, joint_retrain, recalibrate_norms, with_num_tickets

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_bn(x, routes, mean, var, weight, bias, *, training, momentum, eps=1e-5):
    """Per-ticket BatchNorm by hand in float64: (output, new running mean, new running var)."""
    x, mean, var = x.double(), mean.double().clone(), var.double().clone()
    w, b = weight.double(), bias.double()
    view = (1, -1) + (1,) * (x.dim() - 2)
    out = torch.empty_like(x)
    dims = [0, *range(2, x.dim())]
    for k in range(mean.shape[0]):
        rows = routes == k
        if not rows.any():
            continue
        xk = x[rows]
        if training:
            m = xk.mean(dims)
            v = xk.var(dims, unbiased=False)
            n = xk.numel() // xk.shape[1]
            mean[k] = (1 - momentum) * mean[k] + momentum * m
            var[k] = (1 - momentum) * var[k] + momentum * v * n / (n - 1)
        else:
            m, v = mean[k], var[k]
        out[rows] = (xk - m.view(view)) / torch.sqrt(v.view(view) + eps) * w.view(view) + b.view(view)
    return out, mean, var


def rel(a, b):
    return float((a.detach().double() - b.detach()).norm() / b.detach().norm().clamp_min(1e-12))


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(1, 4),
    b=st.integers(2, 9),
    c=st.integers(1, 5),
    layout=st.sampled_from(["1d", "1d-seq", "2d"]),
    training=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_float64_reference_forward_backward(k, b, c, layout, training, seed):
    g = torch.Generator().manual_seed(seed)
    shape = {"1d": (b, c), "1d-seq": (b, c, 3), "2d": (b, c, 2, 3)}[layout]
    x = torch.randn(*shape, generator=g) * 2 + 1
    routes = torch.randint(0, k, (b,), generator=g)
    if training and layout == "1d":  # training needs two rows per ticket present without a spatial dim
        counts = torch.bincount(routes, minlength=k)
        routes[counts[routes] == 1] = int(counts.argmax())
    bn = (RTLBatchNorm2d if layout == "2d" else RTLBatchNorm1d)(c, k)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=g)
        bn.bias.normal_(generator=g)
        bn.running_mean.normal_(generator=g)
        bn.running_var.uniform_(0.5, 2.0, generator=g)
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()
    bn.train(training)
    xr = x.clone().requires_grad_()
    y = bn(xr, routes)
    xd = x.double().requires_grad_()
    wd, bd = bn.weight.detach().double().requires_grad_(), bn.bias.detach().double().requires_grad_()
    ref, ref_mean, ref_var = reference_bn(xd, routes, mean0, var0, wd, bd, training=training, momentum=0.1)
    assert rel(y, ref) < 1e-5
    assert rel(bn.running_mean, ref_mean) < 1e-5 and rel(bn.running_var, ref_var) < 1e-5
    dy = torch.randn(y.shape, generator=g)
    y.backward(dy)
    ref.backward(dy.double())
    # absolute floor: with two values per channel the outputs are ±1 whatever x is, so dx is ~0
    for got, want in ((xr.grad, xd.grad), (bn.weight.grad, wd.grad), (bn.bias.grad, bd.grad)):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
    present = torch.bincount(routes, minlength=k) > 0
    assert torch.equal(bn.num_batches_tracked, present.long() if training else torch.zeros(k, dtype=torch.long))


def test_one_ticket_batch_is_nn_batchnorm_and_momentum_none_is_a_cumulative_average():
    torch.manual_seed(0)
    dense = nn.BatchNorm2d(4, momentum=None)
    routed = RTLBatchNorm2d.from_dense(copy.deepcopy(dense), 3)
    xs = [torch.randn(5, 4, 3, 3) for _ in range(3)]
    for x in xs:
        torch.testing.assert_close(routed(x, 1), dense(x))
    torch.testing.assert_close(routed.running_mean[1], dense.running_mean)
    torch.testing.assert_close(routed.running_var[1], dense.running_var)
    assert routed.num_batches_tracked.tolist() == [0, 3, 0]
    assert torch.equal(routed.running_mean[0], torch.zeros(4)) and torch.equal(routed.running_var[2], torch.ones(4))
    dense.eval(), routed.eval()
    torch.testing.assert_close(routed(xs[0], 1), dense(xs[0]))
    back = routed.to_dense(1)
    assert isinstance(back, nn.BatchNorm2d)
    torch.testing.assert_close(back(xs[0]), dense(xs[0]))


def dense_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3), nn.BatchNorm1d(3))


def small_cnn(k=3, seed=0, routed=True):
    return rtl.convert(dense_net(seed), k, routed_norms=routed)


def test_convert_routed_norms_computes_what_the_model_did_and_routes_come_from_the_call():
    dense = dense_net()
    x = torch.randn(6, 1, 6, 6)
    dense.train()
    dense(x)  # non-trivial running statistics
    dense.eval()
    expected = dense(x)
    model = rtl.convert(copy.deepcopy(dense), 2, routed_norms=True)
    assert model.rtl_conversion_summary.norms == ["1", "5"]
    assert isinstance(model[1], RTLBatchNorm2d) and isinstance(model[5], RTLBatchNorm1d)
    with rtl.routing(model, torch.tensor([0, 1, 0, 1, 1, 0])):
        torch.testing.assert_close(model(x), expected)
    with pytest.raises(ValueError, match="routes: expected ticket ids"):
        model[1](torch.randn(2, 4, 6, 6))
    assert model[1].weight is model[1].weight and not hasattr(model[1], "routes")
    ignored = rtl.convert(copy.deepcopy(dense), 2, routed_norms=True, ignore=["5"])
    assert isinstance(ignored[5], nn.BatchNorm1d) and ignored.rtl_conversion_summary.norms == ["1"]
    plain = rtl.convert(copy.deepcopy(dense), 2)
    assert convert_norms(plain, 2) == ["1", "5"]
    copy.deepcopy(model)  # no hooks, no closures


def test_routed_model_router_routes_reach_the_norms_and_eval_uses_each_tickets_statistics():
    model = small_cnn(k=2)
    model.eval()
    with torch.no_grad():
        model[1].running_mean[1] += 3.0
    x = torch.randn(4, 1, 6, 6)
    routed = rtl.RoutedModel(model, lambda inp: torch.tensor([1, 0, 1, 0]))
    out = routed(x)
    for i, k in enumerate([1, 0, 1, 0]):
        torch.testing.assert_close(out[i : i + 1], routed(x[i : i + 1], routes=k))
    assert not torch.allclose(routed(x[:1], routes=0), routed(x[:1], routes=1))


def test_training_normalises_each_tickets_rows_alone():
    """A row's training output depends only on the rows of its own ticket in the batch."""
    bn = RTLBatchNorm2d(3, 2)
    x = torch.randn(6, 3, 2, 2)
    routes = torch.tensor([0, 1, 0, 1, 1, 0])
    full = bn(x, routes)
    alone = bn(x[routes == 0], 0)
    torch.testing.assert_close(full[routes == 0], alone)


def test_add_tickets_grows_statistics_and_keeps_old_tickets_bit_identical():
    model = small_cnn(k=2)
    model.train()
    x = torch.randn(8, 1, 6, 6)
    with rtl.routing(model, torch.tensor([0, 1] * 4)):
        model(x)
    model.eval()
    with rtl.routing(model, torch.tensor([0, 1] * 4)):
        old = model(x)
    stats = model[1].running_mean.clone(), model[1].running_var.clone()
    assert add_tickets(model, 2) == [2, 3]
    bn = model[1]
    assert bn.num_tickets == 4 and bn.num_batches_tracked.tolist()[2:] == [0, 0]
    assert torch.equal(bn.running_mean[:2], stats[0]) and torch.equal(bn.running_var[:2], stats[1])
    mean, var = stats[0].mean(0), (stats[1] + stats[0] ** 2).mean(0) - stats[0].mean(0) ** 2
    torch.testing.assert_close(bn.running_mean[3], mean)
    torch.testing.assert_close(bn.running_var[3], var)
    with rtl.routing(model, torch.tensor([0, 1] * 4)):
        assert torch.equal(model(x), old)
    one = with_num_tickets(model, 1)
    assert one[1].num_tickets == 1 and one[5].num_tickets == 1


def ticket_data(k=3, n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [TensorDataset(torch.randn(n, 1, 6, 6, generator=g) * (1 + t) + t, torch.randint(0, 3, (n,), generator=g)) for t in range(k)]


def test_recalibrate_gives_each_ticket_its_own_data_statistics():
    model = small_cnn(k=3)
    subsets = ticket_data()
    model.train()
    model[4].eval()  # a submodule's own mode must come back too
    recalibrate_norms(model, subsets, batch_size=64)
    assert model.training and not model[4].training and model[1].momentum == 0.1
    assert all(p.grad is None for p in model.parameters())
    for k, s in enumerate(subsets):
        with torch.no_grad(), rtl.routing(model, k):
            h = model[0](s.tensors[0])
        torch.testing.assert_close(model[1].running_mean[k], h.mean((0, 2, 3)))
        torch.testing.assert_close(model[1].running_var[k], h.var((0, 2, 3), unbiased=True))
        assert int(model[1].num_batches_tracked[k]) == 1


def test_recalibrating_one_ticket_leaves_the_others_bit_identical():
    model = small_cnn(k=3)
    subsets = ticket_data()
    recalibrate_norms(model, subsets, batch_size=4)
    model.eval()
    x = torch.randn(6, 1, 6, 6)
    with torch.no_grad():
        before = [model[1](model[0](x, k), k) for k in range(3)], model.state_dict()
    before = {"out": before[0], "state": {k: v.clone() for k, v in before[1].items()}}
    shifted = list(subsets)
    shifted[1] = TensorDataset(subsets[1].tensors[0] + 5, subsets[1].tensors[1])
    only = [None, shifted[1], None]
    assert recalibrate_norms(model, only, tickets=[1], batch_size=4) == [1]
    with torch.no_grad():
        after = [model[1](model[0](x, k), k) for k in range(3)]
    assert torch.equal(after[0], before["out"][0]) and torch.equal(after[2], before["out"][2])
    assert not torch.equal(after[1], before["out"][1])
    for key, value in model.state_dict().items():
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(value, before["state"][key]), key


def test_fused_retraining_updates_each_tickets_statistics_from_its_rows():
    model = small_cnn(k=3)
    subsets = ticket_data(n=12)
    joint_retrain(model, subsets, epochs=1, loss_fn=F.cross_entropy, lr=1e-2, batch_size=9, mode="fused", progress=False)
    tracked = model[1].num_batches_tracked.tolist()
    assert all(t >= 1 for t in tracked)
    assert len({tuple(model[1].running_mean[k].tolist()) for k in range(3)}) == 3


def test_save_load_round_trip_and_mismatch_errors(tmp_path):
    model = small_cnn(k=3)
    recalibrate_norms(model, ticket_data(), batch_size=4)
    model.eval()
    x = torch.randn(5, 1, 6, 6)
    routes = torch.tensor([2, 0, 1, 1, 0])
    with rtl.routing(model, routes):
        expected = model(x)
    rtl.save(model, tmp_path / "m")
    meta = rtl.models.io.read_metadata(tmp_path / "m")
    assert meta["norms"]["1"] == {"type": "RTLBatchNorm2d", "num_features": 4, "num_tickets": 3}
    fresh = small_cnn(k=3, seed=1)
    rtl.load(tmp_path / "m", fresh).eval()
    with rtl.routing(fresh, routes):
        assert torch.equal(fresh(x), expected)
    shared = small_cnn(k=3, seed=1, routed=False)
    before = {k: v.clone() for k, v in shared.state_dict().items()}
    with pytest.raises(rtl.LoadError, match="routed_norms=True"):
        rtl.load(tmp_path / "m", shared)
    assert all(torch.equal(v, before[k]) for k, v in shared.state_dict().items())


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match=r"module: expected an nn\.BatchNorm1d or nn\.BatchNorm2d"):
        RTLBatchNorm2d.from_dense(nn.LayerNorm(3), 2)
    with pytest.raises(ValueError, match="track_running_stats"):
        RTLBatchNorm2d.from_dense(nn.BatchNorm2d(3, track_running_stats=False), 2)
    with pytest.raises(ValueError, match="num_tickets"):
        RTLBatchNorm2d(3, 0)
    with pytest.raises(ValueError, match="num_features"):
        RTLBatchNorm1d(0, 2)
    bn = RTLBatchNorm2d(3, 2)
    with pytest.raises(ValueError, match=r"x: expected a 4-D input with 3 channels"):
        bn(torch.randn(2, 3, 4), 0)
    with pytest.raises(ValueError, match=r"x: expected a 4-D input with 3 channels"):
        bn(torch.randn(2, 4, 2, 2), 0)
    with pytest.raises(ValueError, match=r"routes: expected ticket ids in \[0, 2\)"):
        bn(torch.randn(2, 3, 2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="routes: expected a shape"):
        bn(torch.randn(2, 3, 2, 2), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"more than 1 value per channel .* ticket 1"):
        RTLBatchNorm1d(3, 2)(torch.randn(3, 3), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="ticket: expected an int in"):
        bn.to_dense(2)
    model = small_cnn(k=2, routed=False)
    with pytest.raises(TypeError, match="routed_norms: expected a bool"):
        rtl.convert(nn.Sequential(nn.Linear(2, 2)), 2, routed_norms="yes")
    with pytest.raises(ValueError, match="model: expected routed BatchNorms"):
        recalibrate_norms(model, ticket_data(k=2))
    convert_norms(model, 2)
    with pytest.raises(ValueError, match="subsets: expected one dataset per ticket"):
        recalibrate_norms(model, ticket_data(k=3))
    with pytest.raises(ValueError, match="tickets: expected ids"):
        recalibrate_norms(model, ticket_data(k=2), tickets=[5])
    with pytest.raises(ValueError, match="batch_size"):
        recalibrate_norms(model, ticket_data(k=2), batch_size=0)
    with pytest.raises(ValueError, match="num_tickets: expected 2"):
        convert_norms(nn.Sequential(model, nn.BatchNorm1d(2)), 3)
    mixed = nn.Sequential(rtl.nn.RTLLinear(2, 2, 2), RTLBatchNorm1d(2, 3))
    with pytest.raises(ValueError, match="same number of tickets"):
        with rtl.routing(mixed, 0):
            pass


def test_recalibrating_on_nan_inputs_raises_and_restores_every_statistic():
    model = small_cnn(k=3)
    subsets = ticket_data()
    recalibrate_norms(model, subsets, batch_size=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = list(subsets)
    bad[2] = TensorDataset(torch.full_like(subsets[2].tensors[0], float("nan")), subsets[2].tensors[1])
    with pytest.raises(ValueError, match=r"subsets\[2\]: recalibrating ticket 2 gave non-finite"):
        recalibrate_norms(model, bad, batch_size=4)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
