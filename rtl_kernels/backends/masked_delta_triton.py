"""Triton masked-delta linear (CUDA; CPU only under ``TRITON_INTERPRET=1``, for tests): the fused
kernel for the forward and for ``dx``; ``ddelta``/``dscales`` from per-ticket products on the device."""

from __future__ import annotations

import os

import torch

from ..masks.packed import PackedMasks
from ..routing_plans.plan import RoutingPlan
from . import masked_delta_reference
from .masked_delta_reference import add_bias

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
    if need_ddelta or need_dscales:  # per-ticket products, as the reference computes them
        _, dd, ds = masked_delta_reference.backward(dy, x, base, delta, masks, scales, plan, False, need_ddelta, need_dscales)
    return dx, dd, ds
