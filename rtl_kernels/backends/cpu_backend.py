"""CPU backend: C++ routed-linear kernels (AVX-512, AVX2 or portable, picked at run time).

Three forward paths, chosen per batch from measurements (``bench/cpu_kernel_bench.py``):

- *direct* (small batches): the weight-stationary kernel reads each block of W once and every
  active ticket applies its mask bits while loading (16-bit mask slices are AVX-512 lane masks);
- *gemm* (larger float32 batches on AVX-512): a fused GEMM that masks weight panels while
  packing them, gathers each ticket's rows while packing them and writes results to their rows;
- *grouped*: each active ticket's masked weight built by the kernels, then ``torch.mm``
  (MKL / oneDNN, AMX for bfloat16), which wins for bfloat16 and for one large ticket.

Backward uses the direct kernels for small batches and masked copies + ``torch.mm`` otherwise.

conv2d runs as an implicit GEMM over NHWC pixels (``csrc/cpu/routed_conv*``): each active
ticket's masked filter is packed once per call, every image's pixels gather their taps from a
table (padding, stride, dilation), depthwise convs vectorise over channels; dX is the transposed
gather and dW sums per ticket under its mask. Above the measured images-per-ticket crossover the
masked copies + ``F.conv2d`` (oneDNN) path runs instead. All crossovers live in ``cpu_crossovers.json``.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F

from ..conv_params import ConvParams, conv_output_format
from ..routing_plans.plan import RoutingPlan
from . import crossovers, extension
from .reference import active_segments, masked_grad
from .registry import Backend, Call, register_backend

DTYPES = (torch.float32, torch.bfloat16)
# measured crossovers (data: cpu_crossovers.json). The weight-stationary kernels run batches of up
# to this many rows per active ticket (backward crosses over to masked copies + torch.mm earlier)
DIRECT_ROWS_PER_TICKET = crossovers.per_dtype("linear", "direct_rows_per_ticket")
BACKWARD_DIRECT_ROWS_PER_TICKET = crossovers.per_dtype("linear", "backward_direct_rows_per_ticket")
# above this many rows of a single active ticket, one masked copy + torch.mm beats the fused GEMM
GEMM_MAX_ROWS_ONE_TICKET = crossovers.value("linear", "gemm_max_rows_one_ticket")
# the conv kernel runs batches of up to this many images per active ticket; above, masked copies + F.conv2d
CONV_KERNEL_IMAGES_PER_TICKET = crossovers.per_dtype("conv2d", "kernel_max_images_per_ticket")
CONV_BACKWARD_KERNEL_IMAGES_PER_TICKET = crossovers.per_dtype("conv2d", "backward_kernel_max_images_per_ticket")


def _ext() -> ModuleType:
    ext = extension.load_cpu()
    if ext is None:
        raise RuntimeError("backend 'cpu': the C++ extension is not available on this machine")
    return ext


def is_available(device: torch.device) -> bool:
    """CPU devices, once the extension is built (first call compiles it)."""
    return device.type == "cpu" and extension.load_cpu() is not None


def supports(call: Call) -> bool:
    return call.op in ("linear", "conv2d") and call.device.type == "cpu" and call.dtype in DTYPES


def _active(plan: RoutingPlan) -> int:
    """Tickets with rows (the plan is on the CPU: numpy reads it without a torch op)."""
    return int(np.count_nonzero(np.diff(plan.offsets.numpy())))


def use_direct(
    plan: RoutingPlan, dtype: torch.dtype, limits: dict[torch.dtype, int] = DIRECT_ROWS_PER_TICKET, active: int | None = None
) -> bool:
    """True when the weight-stationary kernels are the faster path for this batch (``active``:
    the plan's active-ticket count when the caller has it; counted here only when needed)."""
    rows, limit = plan.num_rows, limits[dtype]
    return rows <= limit or rows <= limit * (_active(plan) if active is None else active)


def forward_path(plan: RoutingPlan, dtype: torch.dtype, ext: ModuleType) -> str:
    """``"direct"``, ``"gemm"`` or ``"grouped"``: the measured fastest forward path for this batch."""
    if plan.num_rows <= DIRECT_ROWS_PER_TICKET[dtype]:
        return "direct"  # small batch: no need to count the active tickets
    active = _active(plan)  # counted once for both rules below
    if use_direct(plan, dtype, active=active):
        return "direct"
    if dtype == torch.float32 and ext.gemm_supported() and (plan.num_rows <= GEMM_MAX_ROWS_ONE_TICKET or active > 1):
        return "gemm"
    return "grouped"


_FORWARD_KERNELS = {"direct": "forward", "gemm": "forward_gemm", "grouped": "forward_grouped"}


def linear_forward(x, weight, masks, plan, bias):
    ext = _ext()
    run = getattr(ext, _FORWARD_KERNELS[forward_path(plan, x.dtype, ext)])
    return run(x, weight, masks.bits.contiguous(), plan.perm.contiguous(), plan.offsets.contiguous(), bias)


def linear_backward(dy, x, weight, masks, plan, need_dx, need_dw):
    ext = _ext()
    bits, perm, offsets = masks.bits.contiguous(), plan.perm.contiguous(), plan.offsets.contiguous()
    if not use_direct(plan, x.dtype, BACKWARD_DIRECT_ROWS_PER_TICKET):
        return ext.backward_grouped(dy, x, weight, bits, perm, offsets, need_dx, need_dw)
    dx = ext.grad_input(dy, weight, bits, perm, offsets) if need_dx else None
    dw = ext.grad_weight(dy, x, weight, bits, perm, offsets) if need_dw else None
    return dx, dw


def use_conv_kernel(plan: RoutingPlan, dtype: torch.dtype, limits: dict[torch.dtype, int] = CONV_KERNEL_IMAGES_PER_TICKET) -> bool:
    """True when the implicit-GEMM conv kernel is the faster path for this batch (else masked copies + F.conv2d)."""
    return use_direct(plan, dtype, limits)


def conv2d_forward(x, weight, masks, plan, bias, params: ConvParams):
    if not use_conv_kernel(plan, x.dtype):
        return grouped_conv2d_forward(x, weight, masks, plan, bias, params)
    y = _ext().conv_forward(
        x, weight, masks.bits.contiguous(), plan.perm.contiguous(), plan.offsets.contiguous(), bias, *_conv_args(params)
    )
    return y.contiguous(memory_format=conv_output_format(x))


def conv2d_backward(dy, x, weight, masks, plan, params: ConvParams, need_dx, need_dw):
    if not use_conv_kernel(plan, x.dtype, CONV_BACKWARD_KERNEL_IMAGES_PER_TICKET):
        return grouped_conv2d_backward(dy, x, weight, masks, plan, params, need_dx, need_dw)
    bits, perm, offsets = masks.bits.contiguous(), plan.perm.contiguous(), plan.offsets.contiguous()
    dx, dw = _ext().conv_backward(dy, x, weight, bits, perm, offsets, *_conv_args(params), need_dx, need_dw)
    return (dx.contiguous(memory_format=conv_output_format(x)) if need_dx else None), (dw if need_dw else None)


def _conv_args(params: ConvParams) -> tuple:
    return list(params.stride), list(params.padding), list(params.dilation), params.groups


def _masked_filter(ext: ModuleType, weight: torch.Tensor, bits: torch.Tensor, ticket: int) -> torch.Tensor:
    """One ticket's masked filter (selected, never multiplied: a NaN outside the mask stays out)."""
    return ext.masked_weight(weight.reshape(weight.shape[0], -1), bits, ticket).view(weight.shape)


def masked_filter(weight: torch.Tensor, bits: torch.Tensor, ticket: int) -> torch.Tensor:
    """Ticket ``ticket``'s filter ``weight ⊙ M_ticket`` from the packed ``bits`` by the C++ kernel (a select)."""
    return _masked_filter(_ext(), weight, bits, ticket)


def grouped_conv2d_forward(x, weight, masks, plan, bias, params: ConvParams):
    """Per active ticket: its masked filter, then ``F.conv2d`` (oneDNN) on that ticket's images."""
    ext, bits = _ext(), masks.bits.contiguous()
    args = (params.stride, params.padding, params.dilation, params.groups)
    out = None
    for ticket, rows in active_segments(plan):
        y = F.conv2d(x.index_select(0, rows), _masked_filter(ext, weight, bits, ticket), bias, *args)
        if out is None:
            out = y.new_empty((x.shape[0], *y.shape[1:])).contiguous(memory_format=conv_output_format(x))
        out.index_copy_(0, rows, y)
    return out


def grouped_conv2d_backward(dy, x, weight, masks, plan, params: ConvParams, need_dx, need_dw):
    """Per active ticket: ``conv2d_input`` with its masked filter and ``conv2d_weight`` added under its mask."""
    ext, bits = _ext(), masks.bits.contiguous()
    args = (params.stride, params.padding, params.dilation, params.groups)
    dx = torch.empty_like(x).contiguous(memory_format=conv_output_format(x)) if need_dx else None
    dw = torch.zeros(weight.shape, dtype=torch.float32) if need_dw else None
    for ticket, rows in active_segments(plan):
        x_k, dy_k = x.index_select(0, rows), dy.index_select(0, rows)
        if need_dx:
            dx.index_copy_(0, rows, torch.nn.grad.conv2d_input(x_k.shape, _masked_filter(ext, weight, bits, ticket), dy_k, *args))
        if need_dw:
            g = torch.nn.grad.conv2d_weight(x_k, weight.shape, dy_k, *args).float()
            dw += masked_grad(g, masks, ticket)
    return dx, (dw.to(weight.dtype) if need_dw else None)


register_backend(
    Backend(
        name="cpu",
        is_available=is_available,
        priority=lambda device: 10 if device.type == "cpu" else -1,
        supports=supports,
        linear_forward=linear_forward,
        linear_backward=linear_backward,
        conv2d_forward=conv2d_forward,
        conv2d_backward=conv2d_backward,
    )
)
