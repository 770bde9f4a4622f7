"""Triton masked-delta linear (CUDA; CPU only under ``TRITON_INTERPRET=1``, for tests): the fused
kernel for the forward and for ``dx``; ``ddelta``/``dscales`` from per-ticket products on the device."""

from __future__ import annotations

import os

import torch

from ..masks.packed import PackedMasks
from ..routing_plans.plan import RoutingPlan
from .masked_delta_reference import add_bias
from .reference import active_segments

try:
    from ..kernels.triton.common import sorted_tickets
    from ..kernels.triton.masked_delta import launch
except ImportError:  # Triton is optional
    launch = None

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def supports(x: torch.Tensor) -> bool:
    if launch is None or x.dtype not in DTYPES:
        return False
    if x.device.type == "cuda":
        return True
    # the CPU interpreter computes bfloat16 wrongly (as for the routed kernels)
    return x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1" and x.dtype != torch.bfloat16


def _scales(scales: torch.Tensor) -> torch.Tensor:
    return scales.to(torch.float32).contiguous()


def forward(x, base, delta, masks: PackedMasks, scales, plan: RoutingPlan, bias):
    st = sorted_tickets(plan.routes, plan.perm)
    y = launch(x, base, delta, masks.bits.contiguous(), _scales(scales), plan.perm, st, plan.offsets, False)
    return add_bias(y, bias, plan.routes)


def backward(dy, x, base, delta, masks: PackedMasks, scales, plan: RoutingPlan, need_dx: bool, need_ddelta: bool, need_dscales: bool):
    dx = dd = ds = None
    if need_dx:
        dx = launch(
            dy, base, delta, masks.bits.contiguous(), _scales(scales), plan.perm, sorted_tickets(plan.routes, plan.perm), plan.offsets, True
        )
    if need_ddelta or need_dscales:
        acc = torch.float32
        dd = torch.zeros(delta.shape, dtype=acc, device=x.device) if need_ddelta else None
        ds = torch.zeros(scales.shape[0], dtype=acc, device=x.device) if need_dscales else None
        s = scales.to(acc)
        zero = torch.zeros((), dtype=acc, device=x.device)
        for ticket, rows in active_segments(plan):
            g = dy[rows].to(acc).T @ x[rows].to(acc)
            mask = masks.select([ticket]).unpack()[0]
            if need_ddelta:
                dd += s[ticket] * torch.where(mask, g, zero)
            if need_dscales:
                ds[ticket] = (torch.where(mask, delta.to(acc), zero) * g).sum()
        dd = None if dd is None else dd.to(delta.dtype)
        ds = None if ds is None else ds.to(scales.dtype)
    return dx, dd, ds
