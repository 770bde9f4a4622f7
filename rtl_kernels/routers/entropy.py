"""``EntropyRouter``: SupSup's task inference, per sample, with no label or context.

``method="exact"`` runs every ticket and routes each sample to the one whose output has the lowest
entropy. ``method="one_shot"`` is SupSup's one-shot rule (Wortsman et al. 2020, Eq. 4): with the
superposition ``W ⊙ Σ_k α_k M_k`` at ``α_k = 1/K``, each sample goes to the ticket with the largest
``−∂H/∂α_k``. Per sample, every RTL linear layer computes all K ticket outputs ``x (W ⊙ M_k)ᵀ``
with the routed kernel and mixes them with that sample's own α, so one backward gives every
sample's gradient (the model must not mix samples, e.g. BatchNorm in train mode).
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.routing import routing
from ..models.state import named_rtl_layers
from ..nn.linear import RTLLinear
from ..nn.overrides import forward_overrides
from ..ops.linear import routed_linear
from .store import register_router_class

METHODS = ("exact", "one_shot")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` over the last dim, one value per sample (mean over other dims)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    h = -(logp.exp() * logp).sum(-1)
    return h.reshape(h.shape[0], -1).mean(1) if h.dim() > 1 else h


@register_router_class
class EntropyRouter(nn.Module):
    """``router(x) -> LongTensor [B]``: each sample to the ticket with the lowest output entropy (SupSup)."""

    def __init__(self, model: nn.Module, *, method: str = "exact") -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
        layers = named_rtl_layers(model)
        if not layers:
            raise ValueError("model: expected a converted model with RTL layers, found none")
        ks = {m.num_tickets for m in layers.values()}
        if len(ks) != 1:
            raise ValueError(f"model: expected every RTL layer to have the same number of tickets, got {sorted(ks)}")
        if method == "one_shot":
            others = sorted({f"{n} ({type(m).__name__})" for n, m in layers.items() if type(m) is not RTLLinear})
            if others:
                raise ValueError(f"method: 'one_shot' needs RTLLinear layers only, the model has {others}; use method='exact'")
        self.num_tickets = ks.pop()
        self.method = method
        self.__dict__["model"] = model  # not a submodule: the router's state is its config alone

    @torch.no_grad()
    def entropies(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, K]``: the entropy of every sample's output under every ticket."""
        cols = []
        for k in range(self.num_tickets):
            with routing(self.model, k):
                cols.append(entropy(self.model(x)))
        return torch.stack(cols, dim=1)

    def alpha_gradients(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, K]``: ``∂H_b/∂α_{b,k}`` at ``α = 1/K`` (SupSup's one-shot signal), per sample."""
        k_total = self.num_tickets
        alpha = torch.full((x.shape[0], k_total), 1.0 / k_total, device=x.device, requires_grad=True)
        layers = named_rtl_layers(self.model)
        # the routes are unused (each layer mixes every ticket), but layers resolve them before the override
        with torch.enable_grad(), forward_overrides({m: _superposed(m, alpha) for m in layers.values()}), routing(self.model, 0):
            h = entropy(self.model(x))
            (grad,) = torch.autograd.grad(h.sum(), alpha)
        return grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a tensor batch, got {type(x).__name__}")
        if self.method == "exact":
            return self.entropies(x).argmin(dim=1)
        return self.alpha_gradients(x).argmin(dim=1)  # largest −∂H/∂α

    def router_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Nothing learned: the config alone (``rtl.routers.save_router``)."""
        return {}, {"method": self.method, "num_tickets": self.num_tickets}

    @classmethod
    def from_router_state(cls, tensors: dict, config: dict, model: nn.Module | None = None) -> EntropyRouter:
        if model is None:
            raise ValueError("model: an EntropyRouter routes by running the model; pass model= to load it")
        return cls(model, method=str(config.get("method", "exact")))


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
