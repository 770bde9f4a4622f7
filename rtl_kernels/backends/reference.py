"""Reference backend: plain PyTorch, one dense masked op per active ticket.

It is the oracle every kernel is tested against and the fallback on any device. It computes in
float32 (float64 for float64 inputs) and reads the ticket offsets on the host, so it is neither
fast nor CUDA-graph safe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..conv_params import ConvParams, conv_output_format
from ..masks.packed import PackedMasks
from ..routing_plans.plan import RoutingPlan
from .registry import Backend, register_backend


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def active_segments(plan: RoutingPlan) -> list[tuple[int, torch.Tensor]]:
    """``(ticket, row indices)`` for every ticket that has rows (one host read of the offsets)."""
    offsets = plan.offsets.tolist()
    return [(k, plan.perm[lo:hi]) for k, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:])) if hi > lo]


def ticket_mask(masks: PackedMasks, ticket: int) -> torch.Tensor:
    return masks.select([ticket]).unpack()[0]


def masked_weight(weight: torch.Tensor, masks: PackedMasks, ticket: int, dtype: torch.dtype) -> torch.Tensor:
    """The ticket's weight, pruned entries selected away (a NaN/Inf stored there is never read, unlike ``weight * mask``)."""
    w = weight.to(dtype)
    return torch.where(ticket_mask(masks, ticket), w, torch.zeros((), dtype=dtype, device=w.device))


def masked_grad(grad: torch.Tensor, masks: PackedMasks, ticket: int) -> torch.Tensor:
    """A ticket's weight gradient with pruned entries exactly zero (selected, so NaN from x or dy stays out)."""
    return torch.where(ticket_mask(masks, ticket), grad, torch.zeros((), dtype=grad.dtype, device=grad.device))


def linear_forward(x, weight, masks, plan, bias):
    acc = accumulation_dtype(x.dtype)
    y = x.new_zeros(x.shape[0], weight.shape[0], dtype=acc)
    for ticket, rows in active_segments(plan):
        y[rows] = x[rows].to(acc) @ masked_weight(weight, masks, ticket, acc).T
    if bias is not None:
        y += bias.to(acc)
    return y.to(x.dtype)


def linear_backward(dy, x, weight, masks, plan, need_dx, need_dw):
    acc = accumulation_dtype(x.dtype)
    dx = x.new_zeros(x.shape, dtype=acc) if need_dx else None
    dw = weight.new_zeros(weight.shape, dtype=acc) if need_dw else None
    for ticket, rows in active_segments(plan):
        wk = masked_weight(weight, masks, ticket, acc)
        dy_k = dy[rows].to(acc)
        if need_dx:
            dx[rows] = dy_k @ wk
        if need_dw:
            dw += masked_grad(dy_k.T @ x[rows].to(acc), masks, ticket)
    return (dx.to(x.dtype) if need_dx else None), (dw.to(weight.dtype) if need_dw else None)


def conv2d_forward(x, weight, masks, plan, bias, params: ConvParams):
    acc = accumulation_dtype(x.dtype)
    out = None
    for ticket, rows in active_segments(plan):
        y_k = F.conv2d(
            x[rows].to(acc), masked_weight(weight, masks, ticket, acc), None, params.stride, params.padding, params.dilation, params.groups
        )
        if out is None:
            out = y_k.new_zeros((x.shape[0], *y_k.shape[1:]))
        out[rows] = y_k
    if out is None:  # empty batch: the shape comes from a zero-size conv
        out = F.conv2d(x.to(acc), weight.to(acc), None, params.stride, params.padding, params.dilation, params.groups)
    if bias is not None:
        out += bias.to(acc).view(1, -1, 1, 1)
    return out.to(x.dtype).contiguous(memory_format=conv_output_format(x))


def conv2d_backward(dy, x, weight, masks, plan, params: ConvParams, need_dx, need_dw):
    acc = accumulation_dtype(x.dtype)
    dx = torch.zeros(x.shape, dtype=acc, device=x.device) if need_dx else None
    dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_dw else None
    args = (params.stride, params.padding, params.dilation, params.groups)
    for ticket, rows in active_segments(plan):
        dy_k = dy[rows].to(acc)
        x_k = x[rows].to(acc)
        if need_dx:
            wk = masked_weight(weight, masks, ticket, acc)
            dx[rows] = torch.nn.grad.conv2d_input(x_k.shape, wk, dy_k, *args)
        if need_dw:
            dw += masked_grad(torch.nn.grad.conv2d_weight(x_k, weight.shape, dy_k, *args), masks, ticket)
    if need_dx:
        dx = dx.to(x.dtype).contiguous(memory_format=conv_output_format(x))
    return dx, (dw.to(weight.dtype) if need_dw else None)


register_backend(
    Backend(
        name="reference",
        is_available=lambda device: True,
        priority=lambda device: 0,
        linear_forward=linear_forward,
        linear_backward=linear_backward,
        conv2d_forward=conv2d_forward,
        conv2d_backward=conv2d_backward,
    )
)
