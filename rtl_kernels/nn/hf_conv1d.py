"""``RTLConv1DLinear``: routed masks for Hugging Face ``Conv1D`` (GPT-2), whose weight is stored ``[in, out]``.

The masks cover the Conv1D weight in its own shape ``[in, out]`` (so pruning by magnitude sees the
same tensor as the model), and the forward is ``routed_linear`` on ``weight.T`` with the masks
transposed once per mask change on the CPU (see :meth:`RTLConv1DLinear._linear_masks`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..masks.packed import PackedMasks, pack_masks
from ..ops.linear import routed_linear
from ..routing_plans.plan import RoutingPlan
from .base import RTLLayer
from .overrides import override_of

# where transformers defines Conv1D; matched by name so that importing rtl_kernels never imports transformers
HF_CONV1D_QUALNAME = "transformers.pytorch_utils.Conv1D"


def is_hf_conv1d_class(klass: type) -> bool:
    """True for transformers' ``Conv1D`` and its subclasses, without importing transformers."""
    return isinstance(klass, type) and any(f"{k.__module__}.{k.__qualname__}" == HF_CONV1D_QUALNAME for k in klass.__mro__)


def is_hf_conv1d(module: object) -> bool:
    """True when ``module`` is a transformers ``Conv1D`` (or subclass)."""
    return is_hf_conv1d_class(type(module))


def transpose_masks(masks: PackedMasks) -> PackedMasks:
    """The same K masks for the transposed 2-D weight (``[in, out]`` -> ``[out, in]``)."""
    return pack_masks(masks.unpack().transpose(1, 2).contiguous())


class RTLConv1DLinear(RTLLayer):
    """Routed masked ``Conv1D``: ``y = x @ (weight * mask[r]) + bias`` with ``weight`` of shape ``[nx, nf]``."""

    def __init__(
        self,
        nf: int,
        nx: int,
        num_tickets: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self._init_weight((nx, nf), (nf,) if bias else None, num_tickets, device, dtype)
        nn.init.normal_(self.weight, std=0.02)
        if bias:
            nn.init.zeros_(self.bias)
        self._init_masks(num_tickets)
        self._t_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def in_features(self) -> int:
        return self.nx

    @property
    def out_features(self) -> int:
        return self.nf

    @classmethod
    def from_dense(cls, module: nn.Module, num_tickets: int) -> RTLConv1DLinear:
        """An RTL layer that shares the Conv1D's Parameter objects (``weight`` ``[nx, nf]``), with all-ones masks."""
        if not is_hf_conv1d(module):
            raise TypeError(f"module: expected a transformers Conv1D, got {type(module).__name__}")
        nx, nf = module.weight.shape
        return cls._sharing(module, num_tickets, nx=nx, nf=nf, _t_cache=None)

    def _linear_masks(self) -> PackedMasks:
        """Masks in ``routed_linear``'s layout (over ``weight.T``).

        Transposing costs an unpack and a pack, so on the CPU the result is cached with a copy of the
        bits it came from and reused while the buffer holds the same words (compared by content:
        writes through ``.data`` do not bump ``_version``). Elsewhere it is recomputed, since the
        comparison would wait for the device.
        """
        bits = self.mask_bits
        if torch.compiler.is_compiling() or bits.device.type != "cpu":
            return transpose_masks(self.packed_masks)
        cache = self._t_cache
        if cache is None or cache[0].shape != bits.shape or not torch.equal(cache[0], bits):
            cache = self._t_cache = (bits.clone(), transpose_masks(self.packed_masks).bits)
        return PackedMasks.trusted(cache[1], (self.nf, self.nx))

    def forward(self, x: torch.Tensor, routes: int | torch.Tensor | RoutingPlan | None = None) -> torch.Tensor:
        routes = self._resolve_routes(routes)
        special = override_of(self)
        if special is not None:
            return special(x, routes)
        y = self._seeded_output(x, self.packed_masks, routes, self.bias)  # seeded: masks in their own [in, out] layout
        if y is not None:
            return y
        return routed_linear(x, self.weight.t(), self._linear_masks(), routes, self.bias, backend=self.backend)

    def to_dense(self, ticket: int) -> nn.Module:
        """A transformers ``Conv1D`` with ticket ``ticket``'s mask baked into a copy of the weight."""
        from transformers.pytorch_utils import Conv1D

        w = self._masked_weight(ticket)
        dense = Conv1D(self.nf, self.nx).to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            dense.weight.copy_(w)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
            else:
                dense.bias.zero_()
        return dense

    def extra_repr(self) -> str:
        return f"nx={self.nx}, nf={self.nf}, bias={self.bias is not None}, num_tickets={self.num_tickets}"
