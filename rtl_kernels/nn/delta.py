"""``RTLDeltaLinear``: K merged experts in one linear layer, ``W_k = weight + scale_k · (delta ⊙ M_k)``.

``weight`` and ``bias`` hold the pre-trained base (named as in ``nn.Linear``), ``delta``/``bias_delta``
the shared merged task vector, ``mask_bits``/``bias_mask_bits`` one bit per entry and ticket, and
``scales`` one scalar per ticket: 2 weights + K/32 of bits, whatever K is.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backends.masked_delta_backends import resolve as resolve_backend
from ..masks.packed import PackedMasks, ones_bits, pack_masks
from ..ops.define import _any_autocast
from ..ops.masked_delta import apply_checked, masked_delta_linear
from ..routing_plans.plan import RoutingPlan
from .base import RTLLayer


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
        self._init_linear(in_features, out_features, num_tickets, bias, device, dtype)
        self._init_delta()

    def _init_delta(self) -> None:
        """A zero delta, unit scales and all-ones bias masks: every ticket is the base."""
        w = self.weight
        kw = {"device": w.device, "dtype": w.dtype}
        self.delta = nn.Parameter(torch.zeros(w.shape, **kw))
        self.scales = nn.Parameter(torch.ones(self.num_tickets, **kw))
        if self.bias is not None:
            self.bias_delta = nn.Parameter(torch.zeros(self.out_features, **kw))
            self.register_buffer("bias_mask_bits", ones_bits(self.num_tickets, (self.out_features,), device=w.device))
        else:
            self.register_parameter("bias_delta", None)
            self.register_buffer("bias_mask_bits", None)

    @classmethod
    def from_dense(cls, module: nn.Linear, num_tickets: int) -> RTLDeltaLinear:
        """A layer whose base is ``module``'s own weight and bias, with a zero delta (every ticket = ``module``)."""
        if not isinstance(module, nn.Linear):
            raise TypeError(f"module: expected an nn.Linear, got {type(module).__name__}")
        layer = cls._sharing(module, num_tickets, in_features=module.in_features, out_features=module.out_features)
        layer._init_delta()
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

    def extra_mask_shapes(self) -> dict[str, tuple[int, ...]]:
        """Packed-mask buffers besides ``mask_bits`` and the shape each covers (``rtl.save`` stores them flat)."""
        return {} if self.bias is None else {"bias_mask_bits": (self.out_features,)}

    def ticket_bias(self) -> torch.Tensor | None:
        """Per-ticket bias ``[K, out]``: ``bias + scale_k · (bias_delta ⊙ m_k)`` (a select, never a multiply by the mask).

        Without autograd (serving) the result is cached until a parameter or the masks change.
        """
        params = self._parameters  # the dicts, not nn.Module.__getattr__: this runs on every serving call
        bias, bias_delta, scales, bits = params["bias"], params["bias_delta"], params["scales"], self._buffers["bias_mask_bits"]
        if bias is None:
            return None
        parts = (bias, bias_delta, scales, bits)
        caching = not (torch.is_grad_enabled() and (bias.requires_grad or bias_delta.requires_grad or scales.requires_grad))
        key = tuple((t.data_ptr(), t._version) for t in parts)
        cache = self.__dict__.get("_bias_cache")
        if caching and cache is not None and cache[0] == key:
            return cache[1]
        m = PackedMasks.trusted(bits, (self.out_features,)).unpack()
        out = bias + scales[:, None] * torch.where(m, bias_delta, torch.zeros((), dtype=bias_delta.dtype))
        if caching:
            self._bias_cache = (key, out.detach())
        return out

    def forward(self, x: torch.Tensor, routes: int | torch.Tensor | RoutingPlan | None = None) -> torch.Tensor:
        routes = self._resolve_routes(routes)
        params, bits = self._parameters, self._buffers["mask_bits"]
        w = params["weight"]
        if (
            type(routes) is RoutingPlan
            and not torch.is_grad_enabled()
            and type(x) is torch.Tensor
            and x.dim() == 2
            and routes._consistent
            and routes.routes.shape[0] == x.shape[0]
            and x.shape[1] == self.in_features
            and x.dtype == w.dtype
            and x.device == w.device == routes.routes.device
            and routes.offsets.shape[0] == bits.shape[0] + 1
            and not _any_autocast()
            and not torch.compiler.is_compiling()
        ):
            # serving: a plan built once per model call for these rows (see rtl.RoutedModel), no autograd:
            # straight to the backend's forward, as the op's eager path would go, without re-planning
            masks = PackedMasks.trusted(bits, w.shape)
            return resolve_backend(self.backend, x).forward(
                x.contiguous(), w, params["delta"], masks, params["scales"], routes, self.ticket_bias()
            )
        # the layer's own tensors agree by construction: only x is checked against them (one boundary)
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.in_features or x.dtype != w.dtype or x.device != w.device:
            return masked_delta_linear(
                x, w, self.delta, self.packed_masks, self.scales, routes, self.ticket_bias(), backend=self.backend
            )  # the full checks name what is wrong
        return apply_checked(x, w, self.delta, self.mask_bits, self.scales, routes, self.ticket_bias(), self.backend)

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
