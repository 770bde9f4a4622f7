"""CPU (C++) masked-delta linear: the fused weight-stationary kernel for small batches, one
materialised weight per active ticket + ``torch.mm`` for large ones; backward by per-ticket
products with masked accumulation kernels.
"""

from __future__ import annotations

import torch

from ..masks.packed import PackedMasks
from ..routing_plans.plan import RoutingPlan
from . import extension
from .cpu_backend import use_direct
from .reference import active_segments

# rows per active ticket up to which the fused kernel beats materialise + torch.mm (bench/merge_bench.py)
DIRECT_ROWS_PER_TICKET = 48


def supports(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and extension.load_cpu() is not None


def _direct(plan: RoutingPlan) -> bool:
    return use_direct(plan, torch.float32, {torch.float32: DIRECT_ROWS_PER_TICKET})


def forward(x, base, delta, masks: PackedMasks, scales, plan: RoutingPlan, bias):
    ext = extension.load_cpu()
    s = scales.to(torch.float32).contiguous()
    run = ext.delta_forward if _direct(plan) else ext.delta_forward_grouped
    b = None if bias is None else bias.contiguous()
    return run(x, base, delta, masks.bits.contiguous(), s, plan.perm.contiguous(), plan.offsets.contiguous(), b)


def backward(dy, x, base, delta, masks: PackedMasks, scales, plan: RoutingPlan, need_dx: bool, need_ddelta: bool, need_dscales: bool):
    ext = extension.load_cpu()
    bits, s = masks.bits.contiguous(), scales.to(torch.float32).contiguous()
    s_list = s.tolist()
    dx = torch.empty_like(x) if need_dx else None
    dd = torch.zeros_like(delta) if need_ddelta else None
    ds = torch.zeros(scales.shape[0], dtype=torch.float32) if need_dscales else None
    for ticket, rows in active_segments(plan):
        dy_k = dy.index_select(0, rows)
        if need_dx:
            dx.index_copy_(0, rows, dy_k @ ext.delta_materialize(base, delta, bits, s, ticket))
        if need_ddelta or need_dscales:
            g = (dy_k.T @ x.index_select(0, rows)).contiguous()
            if need_ddelta:
                ext.delta_masked_axpy(dd, g, base, bits, s, ticket, s_list[ticket])
            if need_dscales:
                ds[ticket] = ext.delta_masked_dot(delta, g, bits, s, ticket)
    if need_dx and plan.num_rows == 0:
        dx.zero_()
    return dx, dd, None if ds is None else ds.to(scales.dtype)
