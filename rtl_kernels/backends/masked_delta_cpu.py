"""CPU (C++) masked-delta linear: the fused weight-stationary kernel for small batches, one
materialised weight per active ticket + ``torch.mm`` for large ones; backward by per-ticket
products with masked accumulation kernels.

float32 and bfloat16: the bf16 forward is the same fused kernel (bf16 loads widened, float32
accumulation, y rounded once to bf16, as the routed bf16 forward); large bf16 batches take the
grouped path on float32 copies; the bf16 backward is the reference's (float32 accumulation).
"""

from __future__ import annotations

import torch

from ..masks.packed import PackedMasks
from ..routing_plans.plan import RoutingPlan
from . import extension, masked_delta_reference
from .cpu_backend import use_direct
from .reference import active_segments

# rows per active ticket up to which the fused kernel beats materialise + torch.mm (bench/merge_bench.py;
# the bf16 limit is the float32 one, not measured separately)
DIRECT_ROWS_PER_TICKET = {torch.float32: 48, torch.bfloat16: 48}
DTYPES = (torch.float32, torch.bfloat16)


def supports(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in DTYPES and extension.load_cpu() is not None


def _direct(plan: RoutingPlan, dtype: torch.dtype) -> bool:
    return use_direct(plan, dtype, DIRECT_ROWS_PER_TICKET)


def forward(x, base, delta, masks: PackedMasks, scales, plan: RoutingPlan, bias):
    ext = extension.load_cpu()
    s = scales.to(torch.float32).contiguous()
    b = None if bias is None else bias.contiguous()
    args = (masks.bits.contiguous(), s, plan.perm.contiguous(), plan.offsets.contiguous())
    if _direct(plan, x.dtype):
        return ext.delta_forward(x, base, delta, *args, b)
    if x.dtype == torch.bfloat16:  # the grouped path is float32: widen once, round y once
        f32 = (t if t is None else t.to(torch.float32).contiguous() for t in (x, base, delta, b))
        xf, bf, df, biasf = f32
        return ext.delta_forward_grouped(xf, bf, df, *args, biasf).to(x.dtype)
    return ext.delta_forward_grouped(x, base, delta, *args, b)


def backward(dy, x, base, delta, masks: PackedMasks, scales, plan: RoutingPlan, need_dx: bool, need_ddelta: bool, need_dscales: bool):
    if x.dtype != torch.float32:  # the masked accumulation kernels are float32 only
        return masked_delta_reference.backward(dy, x, base, delta, masks, scales, plan, need_dx, need_ddelta, need_dscales)
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
