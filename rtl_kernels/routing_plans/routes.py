"""From what the user passes as ``routes`` to a checked :class:`RoutingPlan`.

Accepted: a Python int (whole batch on one ticket), an integer tensor whose shape is a prefix of
the row dims (broadcast over the rest), or a ready :class:`RoutingPlan` (computed once per model
forward and reused by every layer, see :func:`plan_routes`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from .plan import RoutingPlan, check_plan, make_plan

Tensor = torch.Tensor

# uint16/32/64 are left out on purpose: torch supports few ops on them (no sort on every device)
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_INT_NAMES = "uint8, int8, int16, int32 or int64"
_CHECKS = {"enabled": os.environ.get("RTL_KERNELS_CHECK_ROUTES", "1") != "0"}


def set_route_checks(enabled: bool) -> None:
    """Turn the route range check on or off globally (default on).

    The check reads the routes' min/max on the host (a device sync). Latency-critical serving whose
    router is trusted may turn it off (also ``RTL_KERNELS_CHECK_ROUTES=0``); routes outside
    ``[0, K)`` are then clamped into range (wrong tickets, but never an out-of-bounds access).
    """
    _CHECKS["enabled"] = bool(enabled)


def route_checks_enabled() -> bool:
    return _CHECKS["enabled"]


def check_route_values(routes: Tensor, num_tickets: int, *, copy: bool = True) -> Tensor:
    """``routes`` as int64 (a copy unless ``copy=False``); ``ValueError`` for a route outside ``[0, num_tickets)``."""
    if routes.device.type == "cpu":  # numpy: no chain of small torch ops on a latency-critical path
        values = routes.numpy()
        if values.size:
            _check_range(int(values.min()), int(values.max()), num_tickets, routes)
        return routes.to(torch.int64, copy=copy)
    out = routes.to(torch.int64, copy=copy)
    if out.numel():
        lo, hi = (int(v) for v in torch.aminmax(out))
        _check_range(lo, hi, num_tickets, out)
    return out


def _check_range(lo: int, hi: int, num_tickets: int, routes: Tensor) -> None:
    if lo < 0 or hi >= num_tickets:
        bad = routes[(routes < 0) | (routes >= num_tickets)]
        raise ValueError(
            f"routes: expected ticket ids in [0, {num_tickets}), got {bad.numel()} out of range "
            f"(min {lo}, max {hi}; first offending value {int(bad[0])})"
        )


@torch.library.custom_op("rtl_kernels::check_routes", mutates_args=())
def check_routes(routes: Tensor, num_tickets: int) -> Tensor:
    """:func:`check_route_values` as an op that ``torch.compile`` keeps opaque (its host read stays out of the graph)."""
    return check_route_values(routes, num_tickets)


@check_routes.register_fake
def _(routes: Tensor, num_tickets: int) -> Tensor:
    return torch.empty_like(routes, dtype=torch.int64)


def _checked(routes: torch.Tensor, num_tickets: int, check: bool | None) -> torch.Tensor:
    if route_checks_enabled() if check is None else check:
        if torch.compiler.is_compiling():  # the op keeps the host read out of the traced graph
            return torch.ops.rtl_kernels.check_routes(routes, num_tickets)
        return check_route_values(routes, num_tickets, copy=False)
    return routes.to(torch.int64).clamp(0, num_tickets - 1)


def validate_route_tensor(routes: object, device: torch.device, name: str = "routes") -> torch.Tensor:
    """Type and device checks shared by every entry point that takes routes."""
    if not isinstance(routes, torch.Tensor):
        raise TypeError(f"{name}: expected an int, an integer tensor or a RoutingPlan, got {type(routes).__name__}")
    if routes.dtype not in _INT_DTYPES:
        raise TypeError(f"{name}: expected an integer tensor of dtype {_INT_NAMES} (ticket ids), got dtype {routes.dtype}")
    if routes.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the input's device), got one on {routes.device}")
    return routes


def plan_routes(
    routes: int | torch.Tensor, num_tickets: int, *, device: torch.device | str | None = None, check: bool | None = None
) -> RoutingPlan:
    """Check ``routes`` (an int or an integer tensor, flattened) and build its plan once.

    Pass the result as ``routes=`` to every routed op of one forward: layers whose inputs have
    more rows (e.g. ``[B, T, C]`` for routes ``[B]``) expand it without sorting again.
    """
    if isinstance(routes, torch.Tensor):
        dev = routes.device if device is None else torch.device(device)
        routes = validate_route_tensor(routes, dev)
        return make_plan(_checked(routes.reshape(-1), num_tickets, check), num_tickets)
    return plan_for_rows(routes, num_tickets, (1,), torch.device(device or "cpu"), check=check)


def _check_int_route(route: int, num_tickets: int) -> int:
    if isinstance(route, bool) or not isinstance(route, int):
        raise TypeError(f"routes: expected an int, an integer tensor or a RoutingPlan, got {type(route).__name__}")
    if not 0 <= route < num_tickets:
        raise ValueError(f"routes: expected a ticket id in [0, {num_tickets}), got {route}")
    return route


def plan_for_rows(
    routes: int | torch.Tensor | RoutingPlan,
    num_tickets: int,
    lead_shape: Sequence[int],
    device: torch.device,
    *,
    check: bool | None = None,
    what: str = "x.shape[:-1]",
) -> RoutingPlan:
    """The plan for ``prod(lead_shape)`` rows, broadcasting ``routes`` over trailing row dims."""
    if type(routes) is RoutingPlan and routes._consistent and len(lead_shape) == 1:  # the per-layer fast path
        plan = routes
        if plan.routes.shape[0] == lead_shape[0] and plan.offsets.shape[0] == num_tickets + 1 and plan.routes.device == device:
            return plan
    lead_shape = tuple(int(s) for s in lead_shape)
    rows = math.prod(lead_shape)
    if isinstance(routes, RoutingPlan):
        return _expand_plan(routes, num_tickets, lead_shape, device, what)
    if isinstance(routes, torch.Tensor):
        routes = validate_route_tensor(routes, device)
        if tuple(routes.shape) != lead_shape[: routes.dim()]:
            raise ValueError(f"routes: expected a shape that is a prefix of {what} = {list(lead_shape)}, got {list(routes.shape)}")
        plan = make_plan(_checked(routes.reshape(-1), num_tickets, check), num_tickets)
        return plan.repeat_rows(rows // max(routes.numel(), 1) if routes.numel() else 1)
    route = _check_int_route(routes, num_tickets)
    return make_plan(torch.full((rows,), route, dtype=torch.int64, device=device), num_tickets)


def _expand_plan(plan: RoutingPlan, num_tickets: int, lead_shape: tuple[int, ...], device: torch.device, what: str) -> RoutingPlan:
    if plan.num_tickets != num_tickets:
        raise ValueError(f"routes: the RoutingPlan was built for {plan.num_tickets} tickets, this layer has {num_tickets}")
    if plan.routes.device != device:
        raise ValueError(f"routes: expected a RoutingPlan on {device} (the input's device), got one on {plan.routes.device}")
    if not plan._consistent and not torch.compiler.is_compiling():
        check_plan(plan, num_tickets)
    n = plan.num_rows
    for prefix in range(len(lead_shape) + 1):
        if math.prod(lead_shape[:prefix]) == n:
            return plan.repeat_rows(math.prod(lead_shape[prefix:]))
    raise ValueError(
        f"routes: the RoutingPlan covers {n} rows, which is not the size of a prefix of {what} = {list(lead_shape)} "
        "(was it built for a batch of a different size?)"
    )
