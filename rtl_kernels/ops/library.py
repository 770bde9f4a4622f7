"""``torch.library`` custom ops: the boundary that ``torch.compile`` and CUDA graphs see.

Each op takes only tensors and static scalars (the routing plan travels as its three tensors),
has a fake implementation for tracing, and dispatches to the backend named by the caller
(``"auto"`` is resolved inside the op, at run time, so tracing never touches kernel loading).
Autograd is registered on the forward ops; the backward ops are custom ops themselves.
"""

from __future__ import annotations

import torch

from ..backends.registry import Call, ConvParams, conv_output_format, resolve_backend
from ..dispatch.plan import RoutingPlan
from ..masks.packed import PackedMasks

Tensor = torch.Tensor
_EMPTY = (0,)


def check_route_values(routes: Tensor, num_tickets: int, *, copy: bool = True) -> Tensor:
    """``routes`` as int64 (a copy unless ``copy=False``); ``ValueError`` for a route outside ``[0, num_tickets)``."""
    if routes.device.type == "cpu":  # numpy: no chain of small torch ops on a latency-critical path
        values = routes.numpy()
        if values.size:
            _check_range(int(values.min()), int(values.max()), num_tickets, routes)
        return routes.to(torch.int64, copy=copy)
    out = routes.to(torch.int64, copy=copy)
    if out.numel():
        lo, hi = (int(v) for v in torch.aminmax(out))
        _check_range(lo, hi, num_tickets, out)
    return out


def _check_range(lo: int, hi: int, num_tickets: int, routes: Tensor) -> None:
    if lo < 0 or hi >= num_tickets:
        bad = routes[(routes < 0) | (routes >= num_tickets)]
        raise ValueError(
            f"routes: expected ticket ids in [0, {num_tickets}), got {bad.numel()} out of range "
            f"(min {lo}, max {hi}; first offending value {int(bad[0])})"
        )


@torch.library.custom_op("rtl_kernels::check_routes", mutates_args=())
def check_routes(routes: Tensor, num_tickets: int) -> Tensor:
    """:func:`check_route_values` as an op that ``torch.compile`` keeps opaque (its host read stays out of the graph)."""
    return check_route_values(routes, num_tickets)


@check_routes.register_fake
def _(routes: Tensor, num_tickets: int) -> Tensor:
    return torch.empty_like(routes, dtype=torch.int64)


def _plan(routes: Tensor, perm: Tensor, offsets: Tensor) -> RoutingPlan:
    return RoutingPlan(routes=routes, perm=perm, offsets=offsets)


def _backend(name: str, op: str, x: Tensor, weight: Tensor, bits: Tensor):
    """Resolve ``name`` (possibly ``"auto"``) here, at run time: availability checks may build an
    extension, which must stay outside anything ``torch.compile`` traces."""
    return resolve_backend(name, Call(op, x.device, x.dtype, int(x.shape[0]), tuple(weight.shape), int(bits.shape[0])))


def _wants_grad(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))


def _or_empty(t: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(_EMPTY) if t is None else t


# ----------------------------------------------------------------------------- linear


def _linear_forward(x, weight, bits, routes, perm, offsets, bias, backend):
    masks = PackedMasks.trusted(bits, weight.shape)
    return _backend(backend, "linear", x, weight, bits).linear_forward(x, weight, masks, _plan(routes, perm, offsets), bias)


@torch.library.custom_op("rtl_kernels::routed_linear", mutates_args=())
def routed_linear_op(
    x: Tensor, weight: Tensor, bits: Tensor, routes: Tensor, perm: Tensor, offsets: Tensor, bias: Tensor | None, backend: str
) -> Tensor:
    return _linear_forward(x, weight, bits, routes, perm, offsets, bias, backend)


@routed_linear_op.register_fake
def _(x, weight, bits, routes, perm, offsets, bias, backend):
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.custom_op("rtl_kernels::routed_linear_backward", mutates_args=())
def routed_linear_backward_op(
    dy: Tensor,
    x: Tensor,
    weight: Tensor,
    bits: Tensor,
    routes: Tensor,
    perm: Tensor,
    offsets: Tensor,
    backend: str,
    need_dx: bool,
    need_dw: bool,
) -> tuple[Tensor, Tensor]:
    masks = PackedMasks.trusted(bits, weight.shape)
    chosen = _backend(backend, "linear", x, weight, bits)
    dx, dw = chosen.linear_backward(dy, x, weight, masks, _plan(routes, perm, offsets), need_dx, need_dw)
    return _or_empty(dx, x), _or_empty(dw, weight)


@routed_linear_backward_op.register_fake
def _(dy, x, weight, bits, routes, perm, offsets, backend, need_dx, need_dw):
    dx = torch.empty_like(x) if need_dx else x.new_empty(_EMPTY)
    dw = torch.empty_like(weight) if need_dw else weight.new_empty(_EMPTY)
    return dx, dw


def _linear_setup(ctx, inputs, output):
    x, weight, bits, routes, perm, offsets, _bias, backend = inputs
    ctx.save_for_backward(x, weight, bits, routes, perm, offsets)
    ctx.backend = backend


def _bias_grad(dy: Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    acc = torch.float64 if dy.dtype == torch.float64 else torch.float32
    return dy.sum(dims, dtype=acc).to(dtype)


def _linear_backward(ctx, dy):
    x, weight, bits, routes, perm, offsets = ctx.saved_tensors
    need_dx, need_dw, need_db = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[6]
    dx = dw = db = None
    if need_dx or need_dw:
        dx, dw = routed_linear_backward_op(dy.contiguous(), x, weight, bits, routes, perm, offsets, ctx.backend, need_dx, need_dw)
    if need_db:
        db = _bias_grad(dy, (0,), weight.dtype)
    return (dx if need_dx else None), (dw if need_dw else None), None, None, None, None, db, None


routed_linear_op.register_autograd(_linear_backward, setup_context=_linear_setup)


def _no_double_backward(op: str):
    """Autograd of a backward op: differentiating a gradient again is not supported, and says so."""

    def backward(ctx, *grads):
        raise NotImplementedError(
            f"{op}: double backward is not supported (the gradient of a gradient, e.g. torch.autograd.grad(..., "
            "create_graph=True) followed by another backward); first-order gradients are"
        )

    return backward


routed_linear_backward_op.register_autograd(_no_double_backward("routed_linear"))


class _LinearFunction(torch.autograd.Function):
    """Eager fast path: the op's forward and backward without the custom-op dispatch overhead."""

    @staticmethod
    def forward(ctx, *inputs):
        _linear_setup(ctx, inputs, None)
        return _linear_forward(*inputs)

    backward = staticmethod(_linear_backward)


def routed_linear_call(
    x: Tensor, weight: Tensor, bits: Tensor, routes: Tensor, perm: Tensor, offsets: Tensor, bias: Tensor | None, backend: str
) -> Tensor:
    """The custom op when ``torch.compile`` traces; in eager mode the same computation as an
    autograd.Function, or called directly when no gradient is wanted (inference)."""
    if torch.compiler.is_compiling():
        return routed_linear_op(x, weight, bits, routes, perm, offsets, bias, backend)
    if not _wants_grad(x, weight, bias):
        return _linear_forward(x, weight, bits, routes, perm, offsets, bias, backend)
    return _LinearFunction.apply(x, weight, bits, routes, perm, offsets, bias, backend)


# ----------------------------------------------------------------------------- conv2d


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _conv_params(stride: list[int], padding: list[int], dilation: list[int], groups: int) -> ConvParams:
    return ConvParams(tuple(stride), tuple(padding), tuple(dilation), groups)


def _conv_forward(x, weight, bits, routes, perm, offsets, bias, stride, padding, dilation, groups, backend):
    masks = PackedMasks.trusted(bits, weight.shape)
    params = _conv_params(stride, padding, dilation, groups)
    return _backend(backend, "conv2d", x, weight, bits).conv2d_forward(x, weight, masks, _plan(routes, perm, offsets), bias, params)


@torch.library.custom_op("rtl_kernels::routed_conv2d", mutates_args=())
def routed_conv2d_op(
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
    return _conv_forward(x, weight, bits, routes, perm, offsets, bias, stride, padding, dilation, groups, backend)


@routed_conv2d_op.register_fake
def _(x, weight, bits, routes, perm, offsets, bias, stride, padding, dilation, groups, backend):
    h, w = (conv_output_size(x.shape[2 + i], weight.shape[2 + i], stride[i], padding[i], dilation[i]) for i in range(2))
    return x.new_empty((x.shape[0], weight.shape[0], h, w)).contiguous(memory_format=conv_output_format(x))


@torch.library.custom_op("rtl_kernels::routed_conv2d_backward", mutates_args=())
def routed_conv2d_backward_op(
    dy: Tensor,
    x: Tensor,
    weight: Tensor,
    bits: Tensor,
    routes: Tensor,
    perm: Tensor,
    offsets: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    backend: str,
    need_dx: bool,
    need_dw: bool,
) -> tuple[Tensor, Tensor]:
    masks = PackedMasks.trusted(bits, weight.shape)
    params = _conv_params(stride, padding, dilation, groups)
    plan = _plan(routes, perm, offsets)
    dx, dw = _backend(backend, "conv2d", x, weight, bits).conv2d_backward(dy, x, weight, masks, plan, params, need_dx, need_dw)
    return _or_empty(dx, x), _or_empty(dw, weight)


@routed_conv2d_backward_op.register_fake
def _(dy, x, weight, bits, routes, perm, offsets, stride, padding, dilation, groups, backend, need_dx, need_dw):
    dx = torch.empty_like(x).contiguous(memory_format=conv_output_format(x)) if need_dx else x.new_empty(_EMPTY)
    dw = torch.empty_like(weight) if need_dw else weight.new_empty(_EMPTY)
    return dx, dw


def _conv_setup(ctx, inputs, output):
    x, weight, bits, routes, perm, offsets, _bias, stride, padding, dilation, groups, backend = inputs
    ctx.save_for_backward(x, weight, bits, routes, perm, offsets)
    ctx.static = (stride, padding, dilation, groups, backend)


def _conv_backward(ctx, dy):
    x, weight, bits, routes, perm, offsets = ctx.saved_tensors
    need_dx, need_dw, need_db = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[6]
    dx = dw = db = None
    if need_dx or need_dw:
        dy_c = dy.contiguous(memory_format=conv_output_format(x))
        dx, dw = routed_conv2d_backward_op(dy_c, x, weight, bits, routes, perm, offsets, *ctx.static, need_dx, need_dw)
    if need_db:
        db = _bias_grad(dy, (0, 2, 3), weight.dtype)
    return (dx if need_dx else None), (dw if need_dw else None), None, None, None, None, db, None, None, None, None, None


routed_conv2d_op.register_autograd(_conv_backward, setup_context=_conv_setup)
routed_conv2d_backward_op.register_autograd(_no_double_backward("routed_conv2d"))


class _Conv2dFunction(torch.autograd.Function):
    """Eager fast path: the op's forward and backward without the custom-op dispatch overhead."""

    @staticmethod
    def forward(ctx, *inputs):
        _conv_setup(ctx, inputs, None)
        return _conv_forward(*inputs)

    backward = staticmethod(_conv_backward)


def routed_conv2d_call(*inputs: object) -> Tensor:
    """The custom op when ``torch.compile`` traces; in eager mode the same computation as an
    autograd.Function, or called directly when no gradient is wanted (arguments as for ``routed_conv2d_op``)."""
    if torch.compiler.is_compiling():
        return routed_conv2d_op(*inputs)
    x, weight, bias = inputs[0], inputs[1], inputs[6]
    if not _wants_grad(x, weight, bias):
        return _conv_forward(*inputs)
    return _Conv2dFunction.apply(*inputs)
