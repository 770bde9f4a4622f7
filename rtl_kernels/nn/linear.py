"""``RTLLinear``: an ``nn.Linear`` whose weight is shared by K tickets, each with its own mask."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.linear import routed_linear
from ..routing_plans.plan import RoutingPlan
from .base import RTLLayer
from .overrides import override_of


class RTLLinear(RTLLayer):
    """Routed masked linear layer; ``weight``/``bias`` are named and initialised as in ``nn.Linear``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_tickets: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._init_linear(in_features, out_features, num_tickets, bias, device, dtype)

    @classmethod
    def from_dense(cls, module: nn.Linear, num_tickets: int) -> RTLLinear:
        """An RTL layer that shares ``module``'s Parameter objects, with all-ones masks."""
        if not isinstance(module, nn.Linear):
            raise TypeError(f"module: expected an nn.Linear, got {type(module).__name__}")
        return cls._sharing(module, num_tickets, in_features=module.in_features, out_features=module.out_features)

    def forward(self, x: torch.Tensor, routes: int | torch.Tensor | RoutingPlan | None = None) -> torch.Tensor:
        routes = self._resolve_routes(routes)
        special = override_of(self)
        if special is not None:
            return special(x, routes)
        y = self._seeded_output(x, self.packed_masks, routes, self.bias)  # a seeded weight: regenerated, not read
        if y is not None:
            return y
        return routed_linear(x, self.weight, self.packed_masks, routes, self.bias, backend=self.backend)

    def to_dense(self, ticket: int) -> nn.Linear:
        """A plain ``nn.Linear`` with ticket ``ticket``'s mask baked into a copy of the weight."""
        w = self._masked_weight(ticket)
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            dense.weight.copy_(w)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, num_tickets={self.num_tickets}"
