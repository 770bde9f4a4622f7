"""``EntropyRouter``: SupSup's task inference, per sample, with no label or context.

``method="exact"`` runs every ticket and routes each sample to the one whose output has the lowest
entropy. ``method="one_shot"`` is SupSup's one-shot rule (Wortsman et al. 2020, Eq. 4): with the
superposition ``W ⊙ Σ_k α_k M_k`` at ``α_k = 1/K``, each sample goes to the ticket with the largest
``−∂H/∂α_k``. Per sample, every RTL linear layer computes all K ticket outputs ``x (W ⊙ M_k)ᵀ``
with the routed kernel and mixes them with that sample's own α, so one backward gives every
sample's gradient (the model must not mix samples, e.g. BatchNorm in train mode).

Entropies are only comparable across tickets when the tickets are calibrated (SupSup's caveat):
``calibrate(subsets)`` fits one temperature per ticket on its own task's data (temperature
scaling, the NLL of ``logits / T_k``), and the entropies use ``logits / T_k`` (one-shot: the
superposed logits over ``Σ_k α_k T_k``, which is ``T_k`` at a one-hot α). ``per="batch"`` is
SupSup's evaluation setting: the whole batch goes to one ticket (lowest mean entropy, or largest
mean −∂H/∂α), which assumes the batch comes from one task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..models.routing import routing
from ..models.state import converted_layers, named_rtl_layers
from ..nn.linear import RTLLinear
from ..nn.overrides import forward_overrides
from ..ops.linear import routed_linear
from .store import register_router_class

METHODS = ("exact", "one_shot")
GRANULARITIES = ("sample", "batch")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` over the last dim, one value per sample (mean over other dims)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    h = -(logp.exp() * logp).sum(-1)
    return h.reshape(h.shape[0], -1).mean(1) if h.dim() > 1 else h


@register_router_class
class EntropyRouter(nn.Module):
    """``router(x) -> LongTensor [B]``: each sample (or the batch, ``per="batch"``) to the ticket with the lowest output entropy (SupSup)."""

    def __init__(
        self, model: nn.Module, *, method: str = "exact", per: str = "sample", temperatures: Sequence[float] | torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
        if per not in GRANULARITIES:
            raise ValueError(f"per: expected one of {GRANULARITIES}, got {per!r}")
        layers, ks = converted_layers(model)
        if len(ks) != 1:
            raise ValueError(f"model: expected every RTL layer to have the same number of tickets, got {sorted(ks)}")
        if method == "one_shot":
            others = sorted({f"{n} ({type(m).__name__})" for n, m in layers.items() if type(m) is not RTLLinear})
            if others:
                raise ValueError(f"method: 'one_shot' needs RTLLinear layers only, the model has {others}; use method='exact'")
        self.num_tickets = ks.pop()
        self.method = method
        self.per = per
        self.temperatures = None if temperatures is None else _check_temperatures(temperatures, self.num_tickets)
        self.__dict__["model"] = model  # not a submodule: the router's state is its config alone

    def _scaled(self, logits: torch.Tensor, ticket: int) -> torch.Tensor:
        return logits if self.temperatures is None else logits / float(self.temperatures[ticket])

    @torch.no_grad()
    def entropies(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, K]``: the entropy of every sample's output under every ticket (over ``logits / T_k`` when calibrated)."""
        cols = []
        for k in range(self.num_tickets):
            with routing(self.model, k):
                cols.append(entropy(self._scaled(self.model(x), k)))
        return torch.stack(cols, dim=1)

    def alpha_gradients(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, K]``: ``∂H_b/∂α_{b,k}`` at ``α = 1/K`` (SupSup's one-shot signal), per sample."""
        k_total = self.num_tickets
        alpha = torch.full((x.shape[0], k_total), 1.0 / k_total, device=x.device, requires_grad=True)
        layers = named_rtl_layers(self.model)
        # the routes are unused (each layer mixes every ticket), but layers resolve them before the override
        with torch.enable_grad(), forward_overrides({m: _superposed(m, alpha) for m in layers.values()}), routing(self.model, 0):
            out = self.model(x)
            if self.temperatures is not None:  # the temperatures superposed like the masks: Σ_k α_k T_k
                t = alpha @ self.temperatures.to(alpha.device)
                out = out / t.reshape(-1, *([1] * (out.dim() - 1)))
            (grad,) = torch.autograd.grad(entropy(out).sum(), alpha)
        return grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a tensor batch, got {type(x).__name__}")
        signal = self.entropies(x) if self.method == "exact" else self.alpha_gradients(x)  # argmin: lowest H, largest −∂H/∂α
        if self.per == "batch":
            return signal.mean(0).argmin().expand(x.shape[0]).clone()
        return signal.argmin(dim=1)

    @torch.no_grad()
    def calibrate(self, subsets: Sequence[torch.utils.data.Dataset], *, batch_size: int = 256) -> EntropyRouter:
        """Fit ticket k's temperature on ``subsets[k]`` (``(input, class index)`` pairs): the T minimising the NLL of ``logits / T``.

        Use held-out data. A ticket that classifies its set perfectly has an NLL that keeps falling
        as T → 0, so its fit stops at the lower bound e⁻⁴ and it then claims most samples: plain
        temperature scaling calibrates a ticket on its own task, not on the others' inputs.
        """
        if isinstance(subsets, (torch.Tensor, str)) or not isinstance(subsets, Sequence) or len(subsets) != self.num_tickets:
            got = len(subsets) if isinstance(subsets, Sequence) else type(subsets).__name__
            raise ValueError(f"subsets: expected one dataset per ticket ({self.num_tickets}), got {got}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        temps = []
        for k, subset in enumerate(subsets):
            if len(subset) == 0:
                raise ValueError(f"subsets: expected a non-empty dataset for ticket {k}, got an empty one")
            logits, labels = [], []
            for x, y in torch.utils.data.DataLoader(subset, batch_size=batch_size):
                with routing(self.model, k):
                    out = self.model(x).float()
                logits.append(out.reshape(-1, out.shape[-1]))
                labels.append(y.reshape(-1))
            temps.append(fit_temperature(torch.cat(logits), torch.cat(labels)))
        self.temperatures = torch.tensor(temps, dtype=torch.float32)
        return self

    def router_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Nothing learned but the temperatures (``rtl.routers.save_router``)."""
        tensors = {} if self.temperatures is None else {"temperatures": self.temperatures.detach().cpu()}
        return tensors, {"method": self.method, "per": self.per, "num_tickets": self.num_tickets}

    @classmethod
    def from_router_state(cls, tensors: dict, config: dict, model: nn.Module | None = None) -> EntropyRouter:
        if model is None:
            raise ValueError("model: an EntropyRouter routes by running the model; pass model= to load it")
        return cls(
            model, method=str(config.get("method", "exact")), per=str(config.get("per", "sample")), temperatures=tensors.get("temperatures")
        )


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature scaling: the T in [e⁻⁴, e⁴] minimising the mean NLL of ``softmax(logits / T)`` (three nested grids on log T)."""
    logits, labels = logits.double(), labels.long().reshape(-1, 1)
    lo, hi = -4.0, 4.0
    for _ in range(3):  # 81 points each: the NLL is convex in 1/T, so unimodal in log T; the bracket shrinks 40x per round
        grid = torch.linspace(lo, hi, 81, dtype=torch.float64)
        best = int(nll_at_temperatures(logits, labels, grid.exp()).argmin())
        lo, hi = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, 80)])
    return math.exp((lo + hi) / 2)


def nll_at_temperatures(logits: torch.Tensor, labels: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    """``[T]``: the mean NLL of ``softmax(logits / t)`` for each temperature ``t`` (``labels`` ``[N, 1]``)."""
    logp = torch.log_softmax(logits.unsqueeze(0) / temperatures.reshape(-1, 1, 1), dim=-1)
    return -logp.gather(2, labels.unsqueeze(0).expand(len(temperatures), -1, -1)).mean(dim=(1, 2))


def _check_temperatures(value: Sequence[float] | torch.Tensor, k_total: int) -> torch.Tensor:
    try:
        t = None if isinstance(value, (str, bytes, bool)) else torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or t.numel() != k_total or not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ValueError(f"temperatures: expected {k_total} positive finite floats (one per ticket), got {value!r}")
    return t


def _superposed(layer: RTLLinear, alpha: torch.Tensor):
    """A forward for ``layer`` computing ``Σ_k α_{b,k} · x_b (W ⊙ M_k)ᵀ + bias`` for each sample ``b``."""
    k_total = layer.num_tickets

    def forward(x: torch.Tensor, routes) -> torch.Tensor:
        b = x.shape[0]
        xs = x.unsqueeze(0).expand(k_total, *x.shape).reshape(k_total * b, *x.shape[1:])
        routes_k = torch.arange(k_total, device=x.device).repeat_interleave(b)
        y = routed_linear(xs, layer.weight, layer.packed_masks, routes_k, None, backend=layer.backend)
        y = y.reshape(k_total, b, *y.shape[1:])
        a = alpha.t().reshape(k_total, b, *([1] * (y.dim() - 2)))
        out = (y * a).sum(0)
        return out if layer.bias is None else out + layer.bias

    return forward
