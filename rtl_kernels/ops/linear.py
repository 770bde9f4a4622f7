"""``routed_linear``: each row multiplied by its own ticket's masked copy of one shared weight."""

from __future__ import annotations

import math

import torch

from ..backends.registry import check_backend_name
from ..masks.packed import PackedMasks
from ..routing_plans.plan import RoutingPlan
from ..routing_plans.routes import plan_for_rows
from .checks import as_packed_masks, check_bias, check_device, check_float, check_tensor
from .define import autocast_inputs
from .library import routed_linear as routed_linear_op


def routed_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    masks: torch.Tensor | PackedMasks,
    routes: int | torch.Tensor | RoutingPlan,
    bias: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    check_routes: bool | None = None,
) -> torch.Tensor:
    """``y[..., :] = x[...] @ (weight * masks[r]).T + bias`` with ``r`` the route of that row.

    ``routes`` is an int, an integer tensor whose shape is a prefix of ``x.shape[:-1]``, or a
    :class:`RoutingPlan` from :func:`rtl_kernels.plan_routes`. ``check_routes=False`` skips the
    route range check (a host sync) for trusted serving; the default follows
    :func:`rtl_kernels.set_route_checks`.
    """
    x = check_tensor("x", x)
    weight = check_tensor("weight", weight, 2)
    if x.dim() < 1:
        raise ValueError("x: expected a tensor of shape [..., in_features], got a 0-D tensor")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x: expected last dimension in_features = {weight.shape[1]} (weight is {list(weight.shape)}), got x of shape {list(x.shape)}"
        )
    x, weight, bias = autocast_inputs(x, weight, bias)
    check_float("x", x)
    check_float("weight", weight, x)
    check_device("weight", weight, x.device)
    bias = check_bias(bias, weight.shape[0], x)
    packed = as_packed_masks(masks, weight)
    check_backend_name(backend)
    lead = x.shape[:-1]
    plan = plan_for_rows(routes, packed.num_tickets, lead, x.device, check=check_routes)
    if x.dim() == 2:  # rows already: no reshape on the common path
        return routed_linear_op(x.contiguous(), weight.contiguous(), packed.bits, plan.routes, plan.perm, plan.offsets, bias, backend)
    x2 = x.reshape(math.prod(lead), x.shape[-1]).contiguous()  # explicit rows: -1 is ambiguous when in_features = 0
    y = routed_linear_op(x2, weight.contiguous(), packed.bits, plan.routes, plan.perm, plan.offsets, bias, backend)
    return y.reshape(*lead, weight.shape[0])
