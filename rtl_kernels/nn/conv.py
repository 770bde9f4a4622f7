"""``RTLConv2d``: an ``nn.Conv2d`` whose filter is shared by K tickets, each with its own mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ..ops.conv import routed_conv2d
from ..routing_plans.plan import RoutingPlan
from .base import RTLLayer, check_num_tickets
from .overrides import override_of

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class RTLConv2d(RTLLayer):
    """Routed masked conv2d; ``weight``/``bias`` are named and initialised as in ``nn.Conv2d``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        num_tickets: int,
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        check_num_tickets(num_tickets)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups: expected a positive int, got {groups!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups: expected in_channels ({in_channels}) and out_channels ({out_channels}) divisible by groups = {groups}"
            )
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode: expected one of {_PADDING_MODES}, got {padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.padding_mode = padding_mode
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        nn.Conv2d.reset_parameters(self)
        self._init_masks(num_tickets)

    @classmethod
    def from_dense(cls, module: nn.Conv2d, num_tickets: int) -> RTLConv2d:
        """An RTL layer that shares ``module``'s Parameter objects, with all-ones masks."""
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"module: expected an nn.Conv2d, got {type(module).__name__}")
        check_num_tickets(num_tickets)
        layer = cls.__new__(cls)
        RTLLayer.__init__(layer)
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
            setattr(layer, attr, getattr(module, attr))
        layer.weight = module.weight
        layer.bias = module.bias
        layer._init_masks(num_tickets)
        layer.train(module.training)
        return layer

    def _explicit_padding(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) pads for non-zero padding modes."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            return (totals[1] // 2, totals[1] - totals[1] // 2, totals[0] // 2, totals[0] - totals[0] // 2)
        ph, pw = self.padding
        return (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor, routes: int | torch.Tensor | RoutingPlan | None = None) -> torch.Tensor:
        special = override_of(self)
        if special is not None:
            return special(x, self._resolve_routes(routes))
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._explicit_padding(), mode=self.padding_mode)
            padding = 0
        return routed_conv2d(
            x, self.weight, self.packed_masks, self._resolve_routes(routes), self.bias,
            self.stride, padding, self.dilation, self.groups, backend=self.backend,
        )  # fmt: skip

    def to_dense(self, ticket: int) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with ticket ``ticket``'s mask baked into a copy of the weight."""
        w = self._masked_weight(ticket)
        dense = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, self.bias is not None, self.padding_mode, device=w.device, dtype=w.dtype,
        )  # fmt: skip
        with torch.no_grad():
            dense.weight.copy_(w)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}, "
            f"num_tickets={self.num_tickets}"
        )
