"""What every RTL layer shares: K packed masks over its weight, and where its routes come from."""

from __future__ import annotations

import torch
from torch import nn

from ..masks.packed import PackedMasks, ones_bits, pack_masks
from ..ops.checks import check_num_tickets
from ..routing_plans.plan import RoutingPlan
from .scope import resolve_routes


class RTLLayer(nn.Module):
    """Base of :class:`RTLLinear` and :class:`RTLConv2d`.

    Masks live in the int32 buffer ``mask_bits`` (see :mod:`rtl_kernels.masks.packed`); a fresh
    layer has all-ones masks. ``backend`` picks the kernel (default ``"auto"``).
    """

    weight: nn.Parameter
    mask_bits: torch.Tensor
    backend: str = "auto"

    def _init_weight(
        self,
        weight_shape: tuple[int, ...],
        bias_shape: tuple[int, ...] | None,
        num_tickets: int,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        """Uninitialised ``weight`` (and ``bias``, or None) Parameters; the caller initialises them, then ``_init_masks``."""
        check_num_tickets(num_tickets)
        self.weight = nn.Parameter(torch.empty(weight_shape, device=device, dtype=dtype))
        if bias_shape is not None:
            self.bias = nn.Parameter(torch.empty(bias_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def _init_linear(self, in_features: int, out_features: int, num_tickets: int, bias: bool, device, dtype) -> None:
        """``nn.Linear``'s attributes, weight and bias (initialised as ``nn.Linear`` does), and all-ones masks."""
        self.in_features, self.out_features = in_features, out_features
        self._init_weight((out_features, in_features), (out_features,) if bias else None, num_tickets, device, dtype)
        nn.Linear.reset_parameters(self)
        self._init_masks(num_tickets)

    @classmethod
    def _sharing(cls, module: nn.Module, num_tickets: int, **attrs: object) -> RTLLayer:
        """A layer of this class holding ``module``'s own weight and bias Parameter objects, with
        all-ones masks and ``attrs`` set (the ``from_dense`` of layers that wrap a dense one)."""
        check_num_tickets(num_tickets)
        layer = cls.__new__(cls)
        RTLLayer.__init__(layer)
        for name, value in attrs.items():
            setattr(layer, name, value)
        layer.weight = module.weight
        bias = getattr(module, "bias", None)
        if bias is None:
            layer.register_parameter("bias", None)  # registered, as in the dense layer (not a plain attribute)
        else:
            layer.bias = bias
        layer._init_masks(num_tickets)
        layer.train(module.training)
        return layer

    def _init_masks(self, num_tickets: int) -> None:
        check_num_tickets(num_tickets)
        self.register_buffer("mask_bits", ones_bits(num_tickets, self.weight.shape, device=self.weight.device))

    @property
    def num_tickets(self) -> int:
        return int(self.mask_bits.shape[0])

    @property
    def packed_masks(self) -> PackedMasks:
        return PackedMasks.trusted(self.mask_bits, self.weight.shape)

    def get_masks(self) -> torch.Tensor:
        """Bool masks ``[K, *weight.shape]``."""
        return self.packed_masks.unpack()

    @torch.no_grad()
    def set_masks(self, masks: torch.Tensor | PackedMasks) -> None:
        """Replace the masks (bool ``[K, *weight.shape]`` or :class:`PackedMasks` with this layer's K)."""
        if isinstance(masks, torch.Tensor):
            if masks.dtype != torch.bool:
                raise TypeError(f"masks: expected a bool tensor or PackedMasks, got dtype {masks.dtype}")
            if tuple(masks.shape) != (self.num_tickets, *self.weight.shape):
                raise ValueError(f"masks: expected shape {[self.num_tickets, *self.weight.shape]}, got {list(masks.shape)}")
            packed = pack_masks(masks)
        elif isinstance(masks, PackedMasks):
            if masks.num_tickets != self.num_tickets or tuple(masks.weight_shape) != tuple(self.weight.shape):
                raise ValueError(
                    f"masks: expected PackedMasks with {self.num_tickets} tickets for weight shape {list(self.weight.shape)}, "
                    f"got {masks.num_tickets} tickets for {list(masks.weight_shape)}"
                )
            packed = masks
        else:
            raise TypeError(f"masks: expected a bool tensor or PackedMasks, got {type(masks).__name__}")
        self.mask_bits.copy_(packed.bits.to(self.mask_bits.device))

    def _resolve_routes(self, routes: int | torch.Tensor | RoutingPlan | None) -> int | torch.Tensor | RoutingPlan:
        return resolve_routes(self, routes, self.num_tickets)

    def _seeded_output(
        self, x: torch.Tensor, masks: PackedMasks, routes, bias: torch.Tensor | None, rows: slice | None = None
    ) -> torch.Tensor | None:
        """The seeded kernel's output when this layer's weight is seeded (regenerated, never read), else None.

        ``__dict__`` lookup: ``getattr`` on an unseeded module raises and catches inside ``nn.Module`` on every call.
        """
        if self.__dict__.get("_rtl_seeded") is None:
            return None
        from ..ops.seeded import seeded_layer_forward  # ops imports nn

        return seeded_layer_forward(self, x, masks, routes, bias, rows)

    def _masked_weight(self, ticket: int) -> torch.Tensor:
        if not 0 <= ticket < self.num_tickets:
            raise ValueError(f"ticket: expected an int in [0, {self.num_tickets}), got {ticket}")
        w = self.weight.detach()
        return torch.where(self.packed_masks.select([ticket]).unpack()[0], w, torch.zeros((), dtype=w.dtype, device=w.device))
