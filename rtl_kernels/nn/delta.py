"""Merged experts in one layer: ticket k's weight is ``weight + scale_k · (delta ⊙ M_k)``.

``RTLDeltaLinear`` (for ``nn.Linear``) and ``RTLDeltaConv2d`` (for ``nn.Conv2d``): ``weight`` and
``bias`` hold the pre-trained base (named as in the dense layer), ``delta``/``bias_delta`` the shared
merged task vector, ``mask_bits``/``bias_mask_bits`` one bit per entry and ticket, and ``scales`` one
scalar per ticket: 2 weights + K/32 of bits, whatever K is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backends import cpu_backend, crossovers
from ..backends.masked_delta_backends import resolve as resolve_backend
from ..backends.reference import active_segments
from ..conv_params import conv_output_format
from ..masks.packed import PackedMasks, ones_bits, pack_masks
from ..ops.checks import check_float, check_tensor
from ..ops.conv import routed_conv2d
from ..ops.define import _any_autocast
from ..ops.masked_delta import apply_checked, masked_delta_linear
from ..routing_plans.plan import RoutingPlan
from ..routing_plans.routes import plan_for_rows
from .base import RTLLayer
from .conv import ConvGeometry

DELTA_CONV_FORMS = ("auto", "fused", "per_ticket")
# measured crossover (data: cpu_crossovers.json, "delta_conv2d"): without autograd on the CPU, the
# per-ticket form runs once the multiply-adds per active ticket and output channel, (images per
# active ticket) × (output pixels) × (in_channels / groups × kh × kw), reach this many
PER_TICKET_MIN_MACS = crossovers.per_dtype("delta_conv2d", "per_ticket_min_macs_per_ticket_channel")


class RTLDeltaLayer(RTLLayer):
    """What the "base + masked delta" layers share: the delta, the K scales, the bias parts, and
    each ticket's dense weight and bias. Subclasses set up ``weight``/``bias`` (out features first)."""

    delta: nn.Parameter
    scales: nn.Parameter

    def _init_delta(self) -> None:
        """A zero delta, unit scales and all-ones bias masks: every ticket is the base."""
        w = self.weight
        kw = {"device": w.device, "dtype": w.dtype}
        self.delta = nn.Parameter(torch.zeros(w.shape, **kw))
        self.scales = nn.Parameter(torch.ones(self.num_tickets, **kw))
        if self.bias is not None:
            self.bias_delta = nn.Parameter(torch.zeros(w.shape[0], **kw))
            self.register_buffer("bias_mask_bits", ones_bits(self.num_tickets, (w.shape[0],), device=w.device))
        else:
            self.register_parameter("bias_delta", None)
            self.register_buffer("bias_mask_bits", None)

    def _check_merge(self, delta: object, scales: object, bias_delta: object, bias_masks: object) -> None:
        """``set_merge``'s tensors against this layer, before anything is written (each error names its argument)."""
        k, shape, out = self.num_tickets, tuple(self.weight.shape), self.weight.shape[0]
        if tuple(check_tensor("delta", delta).shape) != shape:
            raise ValueError(f"delta: expected shape {list(shape)} (the weight's), got {list(delta.shape)}")
        if tuple(check_tensor("scales", scales).shape) != (k,):
            raise ValueError(f"scales: expected shape [{k}] (one per ticket), got {list(scales.shape)}")
        if self.bias is None:
            for name, value in (("bias_delta", bias_delta), ("bias_masks", bias_masks)):
                if value is not None:
                    raise ValueError(f"{name}: expected None (this layer has no bias), got a {type(value).__name__}")
            return
        if bias_delta is not None and tuple(check_tensor("bias_delta", bias_delta).shape) != (out,):
            raise ValueError(f"bias_delta: expected shape [{out}] (the bias'), got {list(bias_delta.shape)}")
        if bias_masks is not None:
            check_tensor("bias_masks", bias_masks)
            if bias_masks.dtype != torch.bool:
                raise TypeError(f"bias_masks: expected a bool tensor [{k}, {out}], got dtype {bias_masks.dtype}")
            if tuple(bias_masks.shape) != (k, out):
                raise ValueError(f"bias_masks: expected shape [{k}, {out}] (one mask of the bias per ticket), got {list(bias_masks.shape)}")

    @torch.no_grad()
    def set_merge(
        self,
        delta: torch.Tensor,
        masks: torch.Tensor | PackedMasks,
        scales: torch.Tensor,
        bias_delta: torch.Tensor | None = None,
        bias_masks: torch.Tensor | None = None,
    ) -> None:
        """Set the shared delta, the K masks (bool ``[K, *weight.shape]`` or packed) and the K scales (bias parts likewise)."""
        self._check_merge(delta, scales, bias_delta, bias_masks)
        self.set_masks(masks)
        self.delta.copy_(delta)
        self.scales.copy_(scales.to(self.scales.dtype))
        if self.bias is not None:
            self.bias_delta.copy_(torch.zeros_like(self.bias_delta) if bias_delta is None else bias_delta)
            out = self.weight.shape[0]
            bm = torch.ones((self.num_tickets, out), dtype=torch.bool) if bias_masks is None else bias_masks
            self.bias_mask_bits.copy_(pack_masks(bm.to(self.bias_mask_bits.device)).bits)

    def extra_mask_shapes(self) -> dict[str, tuple[int, ...]]:
        """Packed-mask buffers besides ``mask_bits`` and the shape each covers (``rtl.save`` stores them flat)."""
        return {} if self.bias is None else {"bias_mask_bits": (self.weight.shape[0],)}

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
        m = PackedMasks.trusted(bits, (bias.shape[0],)).unpack()
        out = bias + scales[:, None] * torch.where(m, bias_delta, torch.zeros((), dtype=bias_delta.dtype))
        if caching:
            self._bias_cache = (key, out.detach())
        return out

    def ticket_weight(self, ticket: int) -> torch.Tensor:
        """Ticket ``ticket``'s dense weight ``weight + scale · (delta ⊙ M)``."""
        if not 0 <= ticket < self.num_tickets:
            raise ValueError(f"ticket: expected an int in [0, {self.num_tickets}), got {ticket}")
        m = self.packed_masks.select([ticket]).unpack()[0]
        d = self.delta.detach()
        return self.weight.detach() + self.scales.detach()[ticket] * torch.where(m, d, torch.zeros((), dtype=d.dtype))

    def _ticket_bias_of(self, ticket: int) -> torch.Tensor | None:
        bias = self.ticket_bias()
        return None if bias is None else bias[ticket].detach()


class RTLDeltaLinear(RTLDeltaLayer):
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

    @classmethod
    def from_dense(cls, module: nn.Linear, num_tickets: int) -> RTLDeltaLinear:
        """A layer whose base is ``module``'s own weight and bias, with a zero delta (every ticket = ``module``)."""
        if not isinstance(module, nn.Linear):
            raise TypeError(f"module: expected an nn.Linear, got {type(module).__name__}")
        layer = cls._sharing(module, num_tickets, in_features=module.in_features, out_features=module.out_features)
        layer._init_delta()
        return layer

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


class RTLDeltaConv2d(ConvGeometry, RTLDeltaLayer):
    """Routed "base + masked delta" conv2d: image b is convolved with ticket ``routes[b]``'s filter
    ``weight + scales[k] · (delta ⊙ M_k)`` and bias ``bias + scales[k] · (bias_delta ⊙ m_k)``.

    Two forms compute it (``delta_form``: ``"auto"``, the default, ``"fused"`` or ``"per_ticket"``):

    - *fused*: no ticket's filter is built, ``y = conv2d(x, weight) + scales[routes] · routed_conv2d(x,
      delta, masks, routes) + bias[routes]``, the second term the fused routed masked conv (every backend
      of :func:`rtl_kernels.routed_conv2d`, with its backward): base, delta and mask bits are each read
      once, but the images go through two convolutions;
    - *per_ticket*: each active ticket's filter is built (a select, never a multiply by the mask) and
      one dense ``F.conv2d`` runs on that ticket's images, grouped by the routing plan: one convolution,
      plus a few weight-sized ops per active ticket. Built from differentiable ops, so it is exact under
      autograd too.

    ``"auto"`` picks *per_ticket* only without autograd on the CPU, when the multiply-adds per active
    ticket and output channel, (images per active ticket) × (output pixels) × (in_channels / groups ×
    kh × kw), reach the measured crossover ``PER_TICKET_MIN_MACS[dtype]`` (the second convolution the
    fused form saves against the per-ticket filter builds and calls; measured on 16..256 channels, 3×3).
    Training (its backward crossover is not measured), other devices (not measured) and an empty batch
    run *fused*. Attributes and arguments as in ``nn.Conv2d``
    (stride, padding, padding modes, dilation, groups) and :class:`RTLDeltaLinear`.
    """

    delta_form: str = "auto"

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
        self._init_delta()

    @classmethod
    def from_dense(cls, module: nn.Conv2d, num_tickets: int) -> RTLDeltaConv2d:
        """A layer whose base is ``module``'s own weight and bias, with a zero delta (every ticket = ``module``)."""
        layer = cls._sharing(module, num_tickets, **cls._conv_attrs(module))
        layer._init_delta()
        return layer

    def _checked_input(self, x: object) -> torch.Tensor:
        """``x`` checked against the layer (named ``x``: the op would name the layer's tensors instead)."""
        x = check_tensor("x", x, (3, 4))
        check_float("x", x)
        w = self.weight
        if x.device != w.device:
            raise ValueError(f"x: expected a tensor on {w.device} (the layer's device), got one on {x.device}")
        if x.dtype != w.dtype and not _any_autocast():
            raise TypeError(f"x: expected dtype {w.dtype} (the layer's dtype), got {x.dtype}")
        if x.shape[-3] != self.in_channels:
            raise ValueError(f"x: expected {self.in_channels} input channels ([B, C, H, W] or [C, H, W]), got shape {list(x.shape)}")
        return x

    def forward(self, x: torch.Tensor, routes: int | torch.Tensor | RoutingPlan | None = None) -> torch.Tensor:
        routes = self._resolve_routes(routes)
        x = self._checked_input(x)
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        x, padding = self._padded_input(x)
        plan = plan_for_rows(routes, self.num_tickets, x.shape[:1], x.device, what="[B] (the batch size)")
        if self._form(x, padding, plan) == "per_ticket":
            y = self._per_ticket(x, padding, plan)
        else:
            y = self._fused(x, padding, plan)
        return y.squeeze(0) if unbatched else y

    def _out_pixels(self, x: torch.Tensor, padding: tuple[int, int]) -> int:
        """Output pixels per image (``<= 0`` when the kernel does not fit: the fused op names ``x`` then)."""
        sizes = [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(x.shape[2:], padding, self.dilation, self.kernel_size, self.stride)
        ]
        return sizes[0] * sizes[1] if min(sizes) > 0 else 0

    def _form(self, x: torch.Tensor, padding: tuple[int, int], plan: RoutingPlan) -> str:
        """``"fused"`` or ``"per_ticket"``: ``delta_form`` when forced, else the measured cost rule."""
        form = self.delta_form
        if form not in DELTA_CONV_FORMS:
            raise ValueError(f"delta_form: expected one of {DELTA_CONV_FORMS}, got {form!r}")
        pixels = self._out_pixels(x, padding)
        if pixels <= 0:
            return "fused"  # its checks name x (spatial size too small for the kernel)
        if form != "auto":
            return form
        if x.device.type != "cpu" or x.shape[0] == 0:
            return "fused"
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self._parameters.values() if p is not None)):
            return "fused"  # training: the backward crossover is not measured
        active = max(int(torch.count_nonzero(plan.counts)), 1)
        fan_in = self.weight[0].numel()  # in_channels / groups × kh × kw: multiply-adds per output value
        limit = PER_TICKET_MIN_MACS.get(x.dtype, PER_TICKET_MIN_MACS[torch.float32])
        return "per_ticket" if x.shape[0] * pixels * fan_in >= limit * active else "fused"

    def _fused(self, x: torch.Tensor, padding: tuple[int, int], plan: RoutingPlan) -> torch.Tensor:
        """Base conv + scales[routes] · routed masked delta conv + ticket bias."""
        stride, dilation, groups = self.stride, self.dilation, self.groups
        # the routed masked delta first: its checks name x (spatial size too small for the kernel)
        d = routed_conv2d(x, self.delta, self.packed_masks, plan, None, stride, padding, dilation, groups, backend=self.backend)
        y = F.conv2d(x, self.weight, None, stride, padding, dilation, groups)
        y = torch.addcmul(y, self.scales[plan.routes].to(d.dtype)[:, None, None, None], d)
        bias = self.ticket_bias()
        if bias is not None:
            y = y + bias[plan.routes].to(y.dtype)[:, :, None, None]
        return y

    def _ticket_filters(self, tickets: list[int]) -> list[torch.Tensor] | torch.Tensor:
        """The dense filters of ``tickets`` (a select, never a multiply by the mask: a NaN outside stays out).

        Without autograd on the CPU the cpu backend's kernel selects ``delta ⊙ M_t`` straight from the
        bits (measured 10-25x faster than unpacking the masks and ``torch.where``); else differentiable ops.
        """
        w, delta, scales = self.weight, self.delta, self.scales
        grad = torch.is_grad_enabled() and (w.requires_grad or delta.requires_grad or scales.requires_grad)
        if not grad and delta.device.type == "cpu" and delta.dtype in cpu_backend.DTYPES and cpu_backend.is_available(delta.device):
            s, bits = scales.tolist(), self.mask_bits
            return [torch.add(w, cpu_backend.masked_filter(delta, bits, t), alpha=s[t]) for t in tickets]
        masks = self.packed_masks.select(tickets).unpack()  # only the active tickets' masks
        picked = scales[torch.tensor(tickets, device=delta.device)].view(-1, 1, 1, 1, 1)
        return w + picked * torch.where(masks, delta, torch.zeros((), dtype=delta.dtype, device=delta.device))

    def _per_ticket(self, x: torch.Tensor, padding: tuple[int, int], plan: RoutingPlan) -> torch.Tensor:
        """Each active ticket's filter ``weight + s_t · (delta ⊙ M_t)`` and bias, one dense conv on its images."""
        segments = active_segments(plan) or [(0, plan.perm)]  # an empty batch: ticket 0's filter on no images
        tickets = [t for t, _ in segments]
        filters = self._ticket_filters(tickets)
        bias = self.ticket_bias()
        conv = (self.stride, padding, self.dilation, self.groups)
        if len(segments) == 1:  # one ticket holds every image (or the batch is empty)
            return F.conv2d(x, filters[0], None if bias is None else bias[tickets[0]], *conv)
        y = None
        for i, (t, rows) in enumerate(segments):
            yt = F.conv2d(x.index_select(0, rows), filters[i], None if bias is None else bias[t], *conv)
            if y is None:
                y = torch.empty((x.shape[0], *yt.shape[1:]), dtype=yt.dtype, device=yt.device, memory_format=conv_output_format(x))
            y.index_copy_(0, rows, yt)
        return y

    def to_dense(self, ticket: int) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` equal to ticket ``ticket`` (the per-task model TALL/EMR would rebuild)."""
        return self._dense_conv(self.ticket_weight(ticket), self._ticket_bias_of(ticket))

    def extra_repr(self) -> str:
        return f"{self._conv_repr()}, num_tickets={self.num_tickets}"
