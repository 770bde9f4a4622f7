"""CPU backend: C++ routed-linear kernels (AVX-512, AVX2 or portable, picked at run time).

Three forward paths, chosen per batch from measurements (``bench/cpu_kernel_bench.py``):

- *direct* (small batches): the weight-stationary kernel reads each block of W once and every
  active ticket applies its mask bits while loading (16-bit mask slices are AVX-512 lane masks);
- *gemm* (larger float32 batches on AVX-512): a fused GEMM that masks weight panels while
  packing them, gathers each ticket's rows while packing them and writes results to their rows;
- *grouped*: each active ticket's masked weight built by the kernels, then ``torch.mm``
  (MKL / oneDNN, AMX for bfloat16), which wins for bfloat16 and for one large ticket.

Backward uses the direct kernels for small batches and masked copies + ``torch.mm`` otherwise.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch

from ..dispatch.plan import RoutingPlan
from . import extension
from .registry import Backend, Call, register_backend

DTYPES = (torch.float32, torch.bfloat16)
# the weight-stationary kernels run batches of up to this many rows per active ticket (measured
# with bench/cpu_kernel_bench.py; backward crosses over to masked copies + torch.mm earlier)
DIRECT_ROWS_PER_TICKET = {torch.float32: 48, torch.bfloat16: 12}
BACKWARD_DIRECT_ROWS_PER_TICKET = {torch.float32: 24, torch.bfloat16: 12}
# above this many rows of a single active ticket, one masked copy + torch.mm beats the fused GEMM
GEMM_MAX_ROWS_ONE_TICKET = 192


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


register_backend(
    Backend(
        name="cpu",
        is_available=is_available,
        priority=lambda device: 10 if device.type == "cpu" else -1,
        supports=supports,
        linear_forward=linear_forward,
        linear_backward=linear_backward,
        description="C++ CPU kernels (AVX-512/AVX2): weight read once per call for small batches, a fused masked GEMM or masked copies + torch.mm for large ones",
    )
)
