"""Mixed-ticket edge-popup steps: K float (straight-through) masks, one routed batch, per-ticket score gradients.

Each RTL layer runs its routed kernel forward and its routed ``dx``; the gradient into ticket k's
mask is ``(ticket k's weight gradient over the rows routed to k) ⊙ W`` — for a linear layer
``(dY_kᵀ X_k) ⊙ W``, for a conv the conv weight gradient of ticket k's images. Supported layers:
``RTLLinear``, ``RTLConv2d``, ``RTLConv1DLinear`` (Hugging Face Conv1D) and
``RTLMultiheadAttention`` (its packed q/k/v projection; ``out_proj`` is an ``RTLLinear``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..masks.packed import pack_masks
from ..nn.attention import RTLMultiheadAttention
from ..nn.base import RTLLayer
from ..nn.conv import RTLConv2d
from ..nn.hf_conv1d import RTLConv1DLinear
from ..nn.linear import RTLLinear
from ..ops.conv import resolve_padding
from ..ops.library import routed_conv2d, routed_linear
from ..routing_plans.routes import plan_for_rows

MIXED_LAYERS = (RTLLinear, RTLConv2d, RTLConv1DLinear, RTLMultiheadAttention)


@dataclass(frozen=True)
class _Kernel:
    """One layer type's routed forward and ``dx``, and one ticket's (unmasked) weight gradient."""

    forward: Callable[..., torch.Tensor]  # (x, weight, bits, routes, perm, offsets, bias) -> y
    grad_input: Callable[..., torch.Tensor]  # (dy, x, weight, bits, routes, perm, offsets) -> dx
    grad_weight: Callable[..., torch.Tensor]  # (dy_k, x_k, weight) -> dL/dW_eff over ticket k's rows


def _linear_kernel(backend: str) -> _Kernel:
    return _Kernel(
        forward=lambda x, w, bits, r, p, o, b: routed_linear(x, w, bits, r, p, o, b, backend),
        grad_input=lambda dy, x, w, bits, r, p, o: routed_linear.backward(
            dy, x, w, bits, r, p, o, None, backend, needs=(True, False, False)
        )[0],
        grad_weight=lambda dy, x, w: dy.float().T @ x.float(),
    )


def _conv_kernel(stride: list[int], padding: list[int], dilation: list[int], groups: int, backend: str) -> _Kernel:
    conv = (stride, padding, dilation, groups, backend)
    return _Kernel(
        forward=lambda x, w, bits, r, p, o, b: routed_conv2d(x, w, bits, r, p, o, b, *conv),
        grad_input=lambda dy, x, w, bits, r, p, o: routed_conv2d.backward(dy, x, w, bits, r, p, o, None, *conv, needs=(True, False, False))[
            0
        ],
        grad_weight=lambda dy, x, w: torch.nn.grad.conv2d_weight(x.float(), w.shape, dy.float(), stride, padding, dilation, groups),
    )


class _Mixed(torch.autograd.Function):
    """Routed masked layer over K float STE masks ``[K, *W]``: gradients to ``x`` and to every ticket's mask."""

    @staticmethod
    def forward(ctx, x, masks_f, weight, bias, routes, perm, offsets, kernel):
        bits = pack_masks(masks_f.detach() > 0.5).bits
        ctx.save_for_backward(x, weight, bits, routes, perm, offsets)
        ctx.kernel = kernel
        return kernel.forward(x, weight, bits, routes, perm, offsets, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bits, routes, perm, offsets = ctx.saved_tensors
        kernel = ctx.kernel
        dy = dy.contiguous()
        dx = kernel.grad_input(dy, x, weight, bits, routes, perm, offsets) if ctx.needs_input_grad[0] else None
        dmasks = None
        if ctx.needs_input_grad[1]:
            dmasks = torch.zeros((bits.shape[0], *weight.shape), dtype=torch.float32, device=weight.device)
            w32 = weight.float()
            bounds = offsets.tolist()
            for k in range(bits.shape[0]):
                if bounds[k + 1] > bounds[k]:
                    rows = perm[bounds[k] : bounds[k + 1]]
                    dmasks[k] = kernel.grad_weight(dy[rows], x[rows], weight) * w32
        return dx, dmasks, None, None, None, None, None, None


def _mixed_linear(x, masks_f, weight, bias, routes, k_total: int, backend: str) -> torch.Tensor:
    lead = x.shape[:-1]
    plan = plan_for_rows(routes, k_total, lead, x.device)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    y = _Mixed.apply(x2, masks_f, weight.detach().contiguous(), bias, plan.routes, plan.perm, plan.offsets, _linear_kernel(backend))
    return y.reshape(*lead, weight.shape[0])


def _mixed_conv(layer: RTLConv2d, masks_f: torch.Tensor) -> Callable:
    def forward(x: torch.Tensor, routes) -> torch.Tensor:
        unbatched = x.dim() == 3
        x = x.unsqueeze(0) if unbatched else x
        padding = layer.padding
        if layer.padding_mode != "zeros":
            x, padding = F.pad(x, layer._explicit_padding(), mode=layer.padding_mode), 0
        x, pad = resolve_padding(x, padding, layer.kernel_size, tuple(layer.stride), tuple(layer.dilation))
        plan = plan_for_rows(routes, layer.num_tickets, x.shape[:1], x.device, what="[B] (the batch size)")
        kernel = _conv_kernel(list(layer.stride), list(pad), list(layer.dilation), layer.groups, layer.backend)
        w = layer.weight.detach().contiguous()
        y = _Mixed.apply(x, masks_f, w, layer.bias, plan.routes, plan.perm, plan.offsets, kernel)
        return y.squeeze(0) if unbatched else y

    return forward


def mixed_forward(layer: RTLLayer, masks_f: torch.Tensor) -> Callable:
    """The replacement forward of ``layer`` (for ``forward_overrides``) that trains the K float masks ``masks_f``."""
    k_total, backend = layer.num_tickets, layer.backend
    if isinstance(layer, RTLConv2d):
        return _mixed_conv(layer, masks_f)
    if isinstance(layer, RTLConv1DLinear):  # routed over weight.T [out, in]: the masks transpose with it
        return lambda x, routes: _mixed_linear(x, masks_f.transpose(1, 2), layer.weight.t(), layer.bias, routes, k_total, backend)
    if isinstance(layer, RTLMultiheadAttention):  # called per projection with the rows of in_proj it needs

        def project(x: torch.Tensor, routes, rows: slice) -> torch.Tensor:
            bias = None if layer.in_proj_bias is None else layer.in_proj_bias[rows]
            return _mixed_linear(x, masks_f[:, rows], layer.in_proj_weight[rows], bias, routes, k_total, backend)

        return project
    return lambda x, routes: _mixed_linear(x, masks_f, layer.weight, layer.bias, routes, k_total, backend)
