"""``RTLDeltaLinear``: K merged experts in one linear layer, ``W_k = weight + scale_k · (delta ⊙ M_k)``.

``weight`` and ``bias`` hold the pre-trained base (named as in ``nn.Linear``), ``delta``/``bias_delta``
the shared merged task vector, ``mask_bits``/``bias_mask_bits`` one bit per entry and ticket, and
``scales`` one scalar per ticket: 2 weights + K/32 of bits, whatever K is.
"""

from __future__ import annotations

import torch
from torch import nn

from ..masks.packed import PackedMasks, ones_bits, pack_masks
from ..ops.masked_delta import apply_checked, masked_delta_linear
from ..routing_plans.plan import RoutingPlan
from .base import RTLLayer, check_num_tickets


class RTLDeltaLinear(RTLLayer):
    """Routed "base + masked delta" linear layer; ``forward(x, routes)`` like :class:`RTLLinear`."""

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
        check_num_tickets(num_tickets)
        self.in_features, self.out_features = in_features, out_features
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.delta = nn.Parameter(torch.zeros(out_features, in_features, **kw))
        self.scales = nn.Parameter(torch.ones(num_tickets, **kw))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **kw))
            self.bias_delta = nn.Parameter(torch.zeros(out_features, **kw))
            self.register_buffer("bias_mask_bits", ones_bits(num_tickets, (out_features,), device=device))
        else:
            self.register_parameter("bias", None)
            self.register_parameter("bias_delta", None)
            self.register_buffer("bias_mask_bits", None)
        nn.Linear.reset_parameters(self)
        self._init_masks(num_tickets)

    @classmethod
    def from_dense(cls, module: nn.Linear, num_tickets: int) -> RTLDeltaLinear:
        """A layer whose base is a copy of ``module``'s parameters, with a zero delta (every ticket = ``module``)."""
        if not isinstance(module, nn.Linear):
            raise TypeError(f"module: expected an nn.Linear, got {type(module).__name__}")
        w = module.weight
        layer = cls(module.in_features, module.out_features, num_tickets, module.bias is not None, w.device, w.dtype)
        with torch.no_grad():
            layer.weight.copy_(w)
            if module.bias is not None:
                layer.bias.copy_(module.bias)
        layer.train(module.training)
        return layer

    @torch.no_grad()
    def set_merge(
        self,
        delta: torch.Tensor,
        masks: torch.Tensor | PackedMasks,
        scales: torch.Tensor,
        bias_delta: torch.Tensor | None = None,
        bias_masks: torch.Tensor | None = None,
    ) -> None:
        """Set the shared delta, the K masks (bool ``[K, out, in]`` or packed) and the K scales (bias parts likewise)."""
        self.set_masks(masks)
        self.delta.copy_(delta)
        self.scales.copy_(scales.to(self.scales.dtype))
        if self.bias is not None:
            self.bias_delta.copy_(torch.zeros_like(self.bias_delta) if bias_delta is None else bias_delta)
            bm = torch.ones((self.num_tickets, self.out_features), dtype=torch.bool) if bias_masks is None else bias_masks
            self.bias_mask_bits.copy_(pack_masks(bm.to(self.bias_mask_bits.device)).bits)

    def ticket_bias(self) -> torch.Tensor | None:
        """Per-ticket bias ``[K, out]``: ``bias + scale_k · (bias_delta ⊙ m_k)`` (a select, never a multiply by the mask).

        Without autograd (serving) the result is cached until a parameter or the masks change.
        """
        if self.bias is None:
            return None
        parts = (self.bias, self.bias_delta, self.scales, self.bias_mask_bits)
        caching = not (torch.is_grad_enabled() and any(t.requires_grad for t in parts))
        key = tuple((t.data_ptr(), t._version) for t in parts)
        if caching and getattr(self, "_bias_cache", (None,))[0] == key:
            return self._bias_cache[1]
        m = PackedMasks.trusted(self.bias_mask_bits, (self.out_features,)).unpack()
        out = self.bias + self.scales[:, None] * torch.where(m, self.bias_delta, torch.zeros((), dtype=self.bias_delta.dtype))
        if caching:
            self._bias_cache = (key, out.detach())
        return out

    def forward(self, x: torch.Tensor, routes: int | torch.Tensor | RoutingPlan | None = None) -> torch.Tensor:
        w = self.weight
        # the layer's own tensors agree by construction: only x is checked against them (one boundary)
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.in_features or x.dtype != w.dtype or x.device != w.device:
            return masked_delta_linear(
                x, w, self.delta, self.packed_masks, self.scales, self._resolve_routes(routes), self.ticket_bias(), backend=self.backend
            )  # the full checks name what is wrong
        return apply_checked(x, w, self.delta, self.mask_bits, self.scales, self._resolve_routes(routes), self.ticket_bias(), self.backend)

    def ticket_weight(self, ticket: int) -> torch.Tensor:
        """Ticket ``ticket``'s dense weight ``weight + scale · (delta ⊙ M)``."""
        if not 0 <= ticket < self.num_tickets:
            raise ValueError(f"ticket: expected an int in [0, {self.num_tickets}), got {ticket}")
        m = self.packed_masks.select([ticket]).unpack()[0]
        d = self.delta.detach()
        return self.weight.detach() + self.scales.detach()[ticket] * torch.where(m, d, torch.zeros((), dtype=d.dtype))

    def to_dense(self, ticket: int) -> nn.Linear:
        """A plain ``nn.Linear`` equal to ticket ``ticket`` (the per-task model TALL/EMR would rebuild)."""
        w = self.ticket_weight(ticket)
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            dense.weight.copy_(w)
            if self.bias is not None:
                dense.bias.copy_(self.ticket_bias()[ticket])
        return dense

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, num_tickets={self.num_tickets}"
