"""``torch.library`` custom ops: the boundary that ``torch.compile`` and CUDA graphs see.

Each op is one :func:`~rtl_kernels.ops.define.define_routed_op` declaration: a forward body on
checked tensors and static scalars (the routing plan travels as its three tensors), its fake, and
a backward body. The bodies dispatch to the backend named by the caller (``"auto"`` is resolved
inside the op, at run time, so tracing never touches kernel loading).
"""

from __future__ import annotations

import torch

from ..backends.registry import Call, resolve_backend
from ..conv_params import ConvParams, conv_output_format, conv_output_size
from ..masks.packed import PackedMasks
from ..routing_plans.plan import RoutingPlan
from .define import define_routed_op

Tensor = torch.Tensor


def _plan(routes: Tensor, perm: Tensor, offsets: Tensor) -> RoutingPlan:
    return RoutingPlan(routes=routes, perm=perm, offsets=offsets)


def _backend(name: str, op: str, x: Tensor, weight: Tensor, bits: Tensor):
    """Resolve ``name`` (possibly ``"auto"``) here, at run time: availability checks may build an
    extension, which must stay outside anything ``torch.compile`` traces."""
    return resolve_backend(name, Call(op, x.device, x.dtype, int(x.shape[0]), tuple(weight.shape), int(bits.shape[0])))


def _bias_grad(dy: Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    acc = torch.float64 if dy.dtype == torch.float64 else torch.float32
    return dy.sum(dims, dtype=acc).to(dtype)


# ----------------------------------------------------------------------------- linear


def _linear_forward(
    x: Tensor, weight: Tensor, bits: Tensor, routes: Tensor, perm: Tensor, offsets: Tensor, bias: Tensor | None, backend: str
) -> Tensor:
    masks = PackedMasks.trusted(bits, weight.shape)
    return _backend(backend, "linear", x, weight, bits).linear_forward(x, weight, masks, _plan(routes, perm, offsets), bias)


def _linear_fake(x, weight, bits, routes, perm, offsets, bias, backend):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _linear_backward(dy, x, weight, bits, routes, perm, offsets, bias, backend, *, needs):
    need_dx, need_dw, need_db = needs
    dx = dw = None
    if need_dx or need_dw:
        masks = PackedMasks.trusted(bits, weight.shape)
        chosen = _backend(backend, "linear", x, weight, bits)
        dx, dw = chosen.linear_backward(dy.contiguous(), x, weight, masks, _plan(routes, perm, offsets), need_dx, need_dw)
    return dx, dw, (_bias_grad(dy, (0,), weight.dtype) if need_db else None)


routed_linear = define_routed_op(
    "routed_linear", _linear_forward, fake=_linear_fake, backward=_linear_backward, differentiable=("x", "weight", "bias")
)
"""``routed_linear(x[M, Kin], weight, bits, routes, perm, offsets, bias, backend)`` on checked inputs."""


# ----------------------------------------------------------------------------- conv2d


def _conv_params(stride: list[int], padding: list[int], dilation: list[int], groups: int) -> ConvParams:
    return ConvParams(tuple(stride), tuple(padding), tuple(dilation), groups)


def _conv_forward(
    x: Tensor,
    weight: Tensor,
    bits: Tensor,
    routes: Tensor,
    perm: Tensor,
    offsets: Tensor,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    backend: str,
) -> Tensor:
    masks = PackedMasks.trusted(bits, weight.shape)
    params = _conv_params(stride, padding, dilation, groups)
    return _backend(backend, "conv2d", x, weight, bits).conv2d_forward(x, weight, masks, _plan(routes, perm, offsets), bias, params)


def _conv_fake(x, weight, bits, routes, perm, offsets, bias, stride, padding, dilation, groups, backend):
    h, w = (conv_output_size(x.shape[2 + i], weight.shape[2 + i], stride[i], padding[i], dilation[i]) for i in range(2))
    return x.new_empty((x.shape[0], weight.shape[0], h, w)).contiguous(memory_format=conv_output_format(x))


def _conv_backward(dy, x, weight, bits, routes, perm, offsets, bias, stride, padding, dilation, groups, backend, *, needs):
    need_dx, need_dw, need_db = needs
    dx = dw = None
    if need_dx or need_dw:
        masks = PackedMasks.trusted(bits, weight.shape)
        params = _conv_params(stride, padding, dilation, groups)
        chosen = _backend(backend, "conv2d", x, weight, bits)
        dy_c = dy.contiguous(memory_format=conv_output_format(x))
        dx, dw = chosen.conv2d_backward(dy_c, x, weight, masks, _plan(routes, perm, offsets), params, need_dx, need_dw)
    return dx, dw, (_bias_grad(dy, (0, 2, 3), weight.dtype) if need_db else None)


def _conv_grad_fake(dy, x, weight, bits, routes, perm, offsets, bias, *rest, needs):
    dx = torch.empty_like(x).contiguous(memory_format=conv_output_format(x))
    return dx, torch.empty_like(weight), (torch.empty_like(bias) if bias is not None else None)


routed_conv2d = define_routed_op(
    "routed_conv2d",
    _conv_forward,
    fake=_conv_fake,
    backward=_conv_backward,
    differentiable=("x", "weight", "bias"),
    grad_fake=_conv_grad_fake,
)
"""``routed_conv2d(x[B, C, H, W], weight, bits, routes, perm, offsets, bias, stride, padding, dilation, groups, backend)``."""
