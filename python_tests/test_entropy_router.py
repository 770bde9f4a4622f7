"""EntropyRouter beyond the plain rule: per-ticket temperatures (calibration), per-batch inference, saved state."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

import rtl_kernels as rtl
from rtl_kernels.routers.entropy import fit_temperature, nll_at_temperatures


def _model(k: int = 3) -> nn.Module:
    torch.manual_seed(2)
    model = rtl.convert(nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4)), k)
    rtl.init.seeded_(model, 8)
    g = torch.Generator().manual_seed(3)
    for m in (model[0], model[2]):
        m.set_masks(torch.rand(k, *m.weight.shape, generator=g) > 0.5)
    return model


def _logits64(model, x, k):
    w0, w2, b0, b2 = (t.detach().double() for t in (model[0].weight, model[2].weight, model[0].bias, model[2].bias))
    m0, m2 = model[0].get_masks()[k].double(), model[2].get_masks()[k].double()
    return torch.relu(x.double() @ (w0 * m0).T + b0) @ (w2 * m2).T + b2


def _entropy64(z):
    p = torch.softmax(z, -1)
    return -(p * p.log()).sum(-1)


def test_exact_with_temperatures_and_per_batch():
    model = _model()
    x = torch.randn(9, 6)
    temps = [0.5, 2.0, 1.3]
    h = torch.stack([_entropy64(_logits64(model, x, k) / temps[k]) for k in range(3)], 1)
    router = rtl.routers.EntropyRouter(model, temperatures=temps)
    assert torch.allclose(router.entropies(x).double(), h, atol=1e-5) and torch.equal(router(x), h.argmin(1))
    batch = rtl.routers.EntropyRouter(model, per="batch", temperatures=temps)
    assert torch.equal(batch(x), torch.full((9,), int(h.mean(0).argmin())))


@pytest.mark.parametrize("temperatures", [None, (0.7, 1.9, 1.1)])
def test_one_shot_matches_float64_superposition(temperatures):
    model = _model()
    x = torch.randn(7, 6)
    temps = torch.tensor(temperatures or (), dtype=torch.float64)
    router = rtl.routers.EntropyRouter(model, method="one_shot", temperatures=temperatures)
    grad = router.alpha_gradients(x)
    m0, m2 = model[0].get_masks().double(), model[2].get_masks().double()
    w0, w2, b0, b2 = (t.detach().double() for t in (model[0].weight, model[2].weight, model[0].bias, model[2].bias))
    ref = []
    for b in range(7):
        a = torch.full((3,), 1 / 3, dtype=torch.float64, requires_grad=True)
        h1 = torch.relu(x[b].double() @ (w0 * torch.einsum("k,knc->nc", a, m0)).T + b0)
        z = h1 @ (w2 * torch.einsum("k,knc->nc", a, m2)).T + b2
        z = z if temperatures is None else z / (a @ temps)  # the temperatures superposed like the masks
        (g,) = torch.autograd.grad(_entropy64(z), a)
        ref.append(g)
    ref = torch.stack(ref)
    assert torch.allclose(grad.double(), ref, rtol=1e-4, atol=1e-6)
    assert torch.equal(router(x), ref.argmin(1))
    batch = rtl.routers.EntropyRouter(model, method="one_shot", per="batch", temperatures=temperatures)
    assert torch.equal(batch(x), torch.full((7,), int(ref.mean(0).argmin())))


@settings(max_examples=10)
@given(t_true=st.floats(0.2, 5.0), classes=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_fit_temperature_minimises_the_nll(t_true, classes, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(400, classes, generator=g, dtype=torch.float64) * 2
    y = torch.multinomial(torch.softmax(z, -1), 1, generator=g)[:, 0]  # calibrated at T = 1 for z ...
    logits = z * t_true  # ... so the best temperature for these logits is near t_true
    t = fit_temperature(logits, y)

    def nll(v):
        return float(nn.functional.cross_entropy(logits / v, y))

    grid = torch.linspace(-4, 4, 2001, dtype=torch.float64).exp()
    nlls = torch.stack([nn.functional.cross_entropy(logits / v, y) for v in grid[::100]])  # every 100th, by F.cross_entropy
    assert torch.allclose(nll_at_temperatures(logits, y.reshape(-1, 1), grid[::100]), nlls)
    assert nll(t) <= float(nll_at_temperatures(logits, y.reshape(-1, 1), grid).min()) + 1e-9  # the 1-D minimum (up to the grid)


def test_calibrate_fits_each_ticket_on_its_subset_and_round_trips(tmp_path):
    model = _model()
    g = torch.Generator().manual_seed(4)
    subsets = [TensorDataset(torch.randn(40, 6, generator=g), torch.randint(0, 4, (40,), generator=g)) for _ in range(3)]
    router = rtl.routers.EntropyRouter(model).calibrate(subsets, batch_size=16)
    for k in range(3):
        x, y = subsets[k].tensors
        assert float(router.temperatures[k]) == pytest.approx(fit_temperature(_logits64(model, x, k), y), rel=1e-3)
    rtl.routers.save_router(router, tmp_path)
    back = rtl.routers.load_router(tmp_path, model=model)
    assert torch.equal(back.temperatures, router.temperatures) and back.per == "sample"
    x = torch.randn(5, 6)
    assert torch.equal(back(x), router(x))


def test_bad_arguments_are_named():
    model = _model()
    with pytest.raises(ValueError, match="per"):
        rtl.routers.EntropyRouter(model, per="token")
    for bad in ([1.0, 2.0], [1.0, -1.0, 1.0], [1.0, float("nan"), 1.0], "abc", [["a"]]):
        with pytest.raises(ValueError, match="temperatures"):
            rtl.routers.EntropyRouter(model, temperatures=bad)
    router = rtl.routers.EntropyRouter(model)
    with pytest.raises(ValueError, match="subsets"):
        router.calibrate([TensorDataset(torch.randn(4, 6), torch.zeros(4, dtype=torch.long))])
    with pytest.raises(ValueError, match="batch_size"):
        router.calibrate([TensorDataset(torch.randn(4, 6), torch.zeros(4, dtype=torch.long))] * 3, batch_size=0)
