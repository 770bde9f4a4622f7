"""Reference (oracle) for the masked-delta linear: plain PyTorch, one dense product per active ticket.

Ticket ``k``'s weight is ``base + scale[k] · (delta ⊙ M[k])`` built with a *select*: a value of
``delta`` outside the mask is never read, so a NaN stored there reaches no output or gradient.
"""

from __future__ import annotations

import torch

from ..masks.packed import PackedMasks
from ..routing_plans.plan import RoutingPlan
from .reference import accumulation_dtype, active_segments, masked_weight, ticket_mask


def _scales(scales: torch.Tensor, acc: torch.dtype) -> list[float]:
    return scales.to(acc).tolist()


def add_bias(y: torch.Tensor, bias: torch.Tensor | None, routes: torch.Tensor) -> torch.Tensor:
    """``y + bias`` for a shared bias ``[N]``, ``y + bias[routes]`` for a per-ticket bias ``[K, N]``."""
    if bias is None:
        return y
    b = bias.to(y.dtype)
    return y + (b if b.dim() == 1 else b.index_select(0, routes))


def forward(x, base, delta, masks: PackedMasks, scales, plan: RoutingPlan, bias):
    acc = accumulation_dtype(x.dtype)
    y = x.new_zeros(x.shape[0], base.shape[0], dtype=acc)
    s = _scales(scales, acc)
    for ticket, rows in active_segments(plan):
        wk = base.to(acc) + s[ticket] * masked_weight(delta, masks, ticket, acc)
        y[rows] = x[rows].to(acc) @ wk.T
    return add_bias(y, bias, plan.routes).to(x.dtype)


def backward(dy, x, base, delta, masks: PackedMasks, scales, plan: RoutingPlan, need_dx: bool, need_ddelta: bool, need_dscales: bool):
    """``(dx, ddelta, dscales)``, each None unless asked: ``dx`` with each row's ticket weight,
    ``ddelta = Σ_k s_k · M_k ⊙ (dY_kᵀ X_k)``, ``dscales[k] = ⟨M_k ⊙ delta, dY_kᵀ X_k⟩``."""
    acc = accumulation_dtype(x.dtype)
    dx = x.new_zeros(x.shape, dtype=acc) if need_dx else None
    dd = delta.new_zeros(delta.shape, dtype=acc) if need_ddelta else None
    ds = torch.zeros(scales.shape[0], dtype=acc, device=x.device) if need_dscales else None
    s = _scales(scales, acc)
    zero = torch.zeros((), dtype=acc, device=x.device)
    for ticket, rows in active_segments(plan):
        mask = ticket_mask(masks, ticket)
        md = torch.where(mask, delta.to(acc), zero)
        dy_k = dy[rows].to(acc)
        if need_dx:
            dx[rows] = dy_k @ (base.to(acc) + s[ticket] * md)
        if need_ddelta or need_dscales:
            g = dy_k.T @ x[rows].to(acc)
            if need_ddelta:
                dd += s[ticket] * torch.where(mask, g, zero)
            if need_dscales:
                ds[ticket] = (md * g).sum()
    return (
        dx.to(x.dtype) if need_dx else None,
        dd.to(delta.dtype) if need_ddelta else None,
        ds.to(scales.dtype) if need_dscales else None,
    )
