"""``RTLConv2d``: an ``nn.Conv2d`` whose filter is shared by K tickets, each with its own mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ..ops.conv import resolve_padding, routed_conv2d
from ..routing_plans.plan import RoutingPlan
from .base import RTLLayer, check_num_tickets
from .overrides import override_of

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
CONV_ATTRS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")


class ConvGeometry:
    """``nn.Conv2d``'s static attributes and what follows from them, for the RTL conv layers
    (:class:`RTLConv2d`, :class:`~rtl_kernels.nn.delta.RTLDeltaConv2d`)."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: str | tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    padding_mode: str
    weight: nn.Parameter
    bias: nn.Parameter | None

    def _init_conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        num_tickets: int,
        stride: int | tuple[int, int],
        padding: str | int | tuple[int, int],
        dilation: int | tuple[int, int],
        groups: int,
        bias: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        padding_mode: str,
    ) -> None:
        """Checked attributes, ``weight`` and ``bias`` initialised as ``nn.Conv2d`` does, and all-ones masks."""
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

    @staticmethod
    def _conv_attrs(module: nn.Module) -> dict[str, object]:
        """The static attributes of the dense ``module`` (for ``from_dense``)."""
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"module: expected an nn.Conv2d, got {type(module).__name__}")
        return {attr: getattr(module, attr) for attr in CONV_ATTRS}

    def _explicit_padding(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) pads for non-zero padding modes."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            return (totals[1] // 2, totals[1] - totals[1] // 2, totals[0] // 2, totals[0] - totals[0] // 2)
        ph, pw = self.padding
        return (pw, pw, ph, ph)

    def _padded_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``x`` padded as the padding mode asks, and the symmetric zero padding left for the kernel."""
        padding = self.padding
        if self.padding_mode != "zeros":
            x, padding = F.pad(x, self._explicit_padding(), mode=self.padding_mode), 0
        return resolve_padding(x, padding, tuple(self.kernel_size), tuple(self.stride), tuple(self.dilation))

    def _dense_conv(self, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` of this geometry holding copies of ``weight`` and ``bias``."""
        dense = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, self.bias is not None, self.padding_mode, device=weight.device, dtype=weight.dtype,
        )  # fmt: skip
        with torch.no_grad():
            dense.weight.copy_(weight)
            if self.bias is not None:
                dense.bias.copy_(bias)
        return dense

    def _conv_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}"
        )


class RTLConv2d(ConvGeometry, RTLLayer):
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
        self._init_conv(
            in_channels, out_channels, kernel_size, num_tickets, stride, padding, dilation, groups, bias, device, dtype, padding_mode
        )

    @classmethod
    def from_dense(cls, module: nn.Conv2d, num_tickets: int) -> RTLConv2d:
        """An RTL layer that shares ``module``'s Parameter objects, with all-ones masks."""
        return cls._sharing(module, num_tickets, **cls._conv_attrs(module))

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
        return self._dense_conv(self._masked_weight(ticket), self.bias)

    def extra_repr(self) -> str:
        return f"{self._conv_repr()}, num_tickets={self.num_tickets}"
