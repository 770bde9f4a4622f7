"""``routed_conv2d``: each image convolved with its own ticket's masked copy of one shared filter."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backends.registry import check_backend_name
from ..conv_params import conv_output_size
from ..masks.packed import PackedMasks
from ..routing_plans.plan import RoutingPlan
from ..routing_plans.routes import plan_for_rows
from .checks import as_packed_masks, check_bias, check_device, check_float, check_tensor
from .define import autocast_inputs
from .library import routed_conv2d as routed_conv2d_op


def _pair(name: str, value: int | tuple[int, ...] | list[int], minimum: int) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, tuple | list) or len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in value):
        raise ValueError(f"{name}: expected values >= {minimum}, got {tuple(value)}")
    return int(value[0]), int(value[1])


def resolve_padding(
    x: torch.Tensor, padding: str | int | tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Symmetric padding for the kernel, pre-padding ``x`` when ``"same"`` needs an asymmetric pad."""
    if not isinstance(padding, str):
        return x, _pair("padding", padding, 0)
    if padding == "valid":
        return x, (0, 0)
    if padding != "same":
        raise ValueError(f"padding: expected an int, a pair of ints, 'valid' or 'same', got {padding!r}")
    if stride != (1, 1):
        raise ValueError(f"padding: 'same' needs stride 1, got stride {stride}")
    totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
    left = [t // 2 for t in totals]
    if all(t % 2 == 0 for t in totals):
        return x, (left[0], left[1])
    pads = (left[1], totals[1] - left[1], left[0], totals[0] - left[0])
    return F.pad(x, pads), (0, 0)


def routed_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    masks: torch.Tensor | PackedMasks,
    routes: int | torch.Tensor | RoutingPlan,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: str | int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    backend: str = "auto",
    check_routes: bool | None = None,
) -> torch.Tensor:
    """Convolve each image ``x[b]`` with ``weight * masks[routes[b]]`` (``routes``: int or ``[B]``).

    Same semantics as ``F.conv2d`` otherwise (memory format preserved, unbatched ``[C, H, W]``
    input accepted). ``check_routes`` as in :func:`routed_linear`.
    """
    x = check_tensor("x", x, (3, 4))
    weight = check_tensor("weight", weight, 4)
    x, weight, bias = autocast_inputs(x, weight, bias)
    check_float("x", x)
    check_float("weight", weight, x)
    check_device("weight", weight, x.device)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups: expected a positive int, got {groups!r}")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    if weight.shape[0] % groups:
        raise ValueError(f"weight: expected out_channels {weight.shape[0]} divisible by groups = {groups}")
    if x.shape[1] != weight.shape[1] * groups:
        raise ValueError(
            f"x: expected {weight.shape[1] * groups} input channels (weight.shape[1] * groups = {weight.shape[1]} * {groups}), "
            f"got x of shape {list(x.shape)}"
        )
    bias = check_bias(bias, weight.shape[0], x)
    packed = as_packed_masks(masks, weight)
    stride_p = _pair("stride", stride, 1)
    dilation_p = _pair("dilation", dilation, 1)
    kernel = (weight.shape[2], weight.shape[3])
    x, padding_p = resolve_padding(x, padding, kernel, stride_p, dilation_p)
    out_hw = [conv_output_size(x.shape[2 + i], kernel[i], stride_p[i], padding_p[i], dilation_p[i]) for i in range(2)]
    if min(out_hw) < 1:
        raise ValueError(
            f"x: spatial size {list(x.shape[2:])} is too small for kernel {list(kernel)} with padding {padding_p} "
            f"and dilation {dilation_p} (output would be {out_hw})"
        )
    plan = plan_for_rows(routes, packed.num_tickets, x.shape[:1], x.device, check=check_routes, what="[B] (the batch size)")
    check_backend_name(backend)
    y = routed_conv2d_op(
        x, weight.contiguous(), packed.bits, plan.routes, plan.perm, plan.offsets, bias,
        list(stride_p), list(padding_p), list(dilation_p), groups, backend,
    )  # fmt: skip
    return y.squeeze(0) if unbatched else y
