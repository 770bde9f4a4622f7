"""CPU backend: C++ routed-linear kernels (AVX-512, AVX2 or portable, picked at run time).

Small batches run the weight-stationary kernel: each block of W rows is read from memory once
and every active ticket applies its mask bits to it while loading (16-bit mask slices are the
AVX-512 lane masks). Large batches build each active ticket's masked weight with the same
kernels and multiply with ``torch.mm`` (MKL / oneDNN), which wins once the GEMM dominates. The
masked copies cost one extra weight write and read per active ticket, so the crossover scales
with the number of active tickets (``DIRECT_ROWS_PER_TICKET``, measured with
``bench/cpu_kernel_bench.py``).
"""

from __future__ import annotations

from types import ModuleType

import torch

from ..dispatch.plan import RoutingPlan
from . import extension
from .registry import Backend, Call, register_backend

DTYPES = (torch.float32, torch.bfloat16)
# the weight-stationary kernel runs batches of up to this many rows per active ticket (measured)
DIRECT_ROWS_PER_TICKET = 48


def _ext() -> ModuleType:
    ext = extension.load_cpu()
    if ext is None:
        raise RuntimeError("backend 'cpu': the C++ extension is not available on this machine")
    return ext


def is_available(device: torch.device) -> bool:
    """CPU devices, once the extension is built (first call compiles it)."""
    return device.type == "cpu" and extension.load_cpu() is not None


def supports(call: Call) -> bool:
    return call.op == "linear" and call.device.type == "cpu" and call.dtype in DTYPES


def use_direct(plan: RoutingPlan) -> bool:
    """True when the weight-stationary kernel is the faster path for this batch (else masked copies + torch.mm)."""
    rows = plan.num_rows
    if rows <= DIRECT_ROWS_PER_TICKET:
        return True
    active = int(torch.count_nonzero(plan.counts))  # CPU tensor: no device sync
    return rows <= DIRECT_ROWS_PER_TICKET * active


def linear_forward(x, weight, masks, plan, bias):
    ext = _ext()
    run = ext.forward if use_direct(plan) else ext.forward_grouped
    return run(x, weight, masks.bits.contiguous(), plan.perm.contiguous(), plan.offsets.contiguous(), bias)


def linear_backward(dy, x, weight, masks, plan, need_dx, need_dw):
    ext = _ext()
    bits, perm, offsets = masks.bits.contiguous(), plan.perm.contiguous(), plan.offsets.contiguous()
    if not use_direct(plan):
        return ext.backward_grouped(dy, x, weight, bits, perm, offsets, need_dx, need_dw)
    dx = ext.grad_input(dy, weight, bits, perm, offsets) if need_dx else None
    dw = ext.grad_weight(dy, x, weight, bits, perm, offsets) if need_dw else None
    return dx, dw


register_backend(
    Backend(
        name="cpu",
        is_available=is_available,
        priority=lambda device: 10 if device.type == "cpu" else -1,
        supports=supports,
        linear_forward=linear_forward,
        linear_backward=linear_backward,
        description="C++ CPU kernels (AVX-512/AVX2): weight read once per call for small batches, masked copies + torch.mm for large ones",
    )
)
