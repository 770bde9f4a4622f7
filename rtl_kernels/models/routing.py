"""Routes for a whole model: the ``routing`` context and :class:`RoutedModel`.

The routing plan (rows sorted by ticket) is computed once per forward and handed to every RTL
layer, which only expands it to its own row count; no layer sorts again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..nn.base import RTLLayer
from ..nn.norm import RTLBatchNorm
from ..nn.scope import route_scope
from ..routing_plans.plan import RoutingPlan, check_plan
from ..routing_plans.routes import plan_routes


def rtl_layers(model: nn.Module) -> list[RTLLayer]:
    """The RTL layers of ``model`` (each once), raising when there are none or their K differ."""
    return _routed_modules(model)[0]


def _routed_modules(model: nn.Module) -> tuple[list[RTLLayer], list[nn.Module]]:
    """In one walk: the RTL layers (checked as in :func:`rtl_layers`) and every module that reads the call's
    routes (those layers and the routed BatchNorms, whose K must match)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    layers, routed = [], []
    for m in model.modules():
        if isinstance(m, RTLLayer):
            layers.append(m)
            routed.append(m)
        elif isinstance(m, RTLBatchNorm):
            routed.append(m)
    if not layers:
        raise ValueError("model: expected a model with RTL layers (convert it with rtl.convert first), found none")
    ks = {m.num_tickets for m in routed}
    if len(ks) > 1:
        raise ValueError(f"model: expected all RTL layers (and routed BatchNorms) to have the same number of tickets, found {sorted(ks)}")
    return layers, routed


def _model_plan(layers: list[RTLLayer], routes: int | torch.Tensor | RoutingPlan, check: bool | None) -> RoutingPlan:
    if isinstance(routes, RoutingPlan):
        if not routes._consistent:
            check_plan(routes, layers[0].num_tickets)  # once here, not in every layer
        return routes
    device = routes.device if isinstance(routes, torch.Tensor) else layers[0].weight.device
    return plan_routes(routes, layers[0].num_tickets, device=device, check=check)


@contextmanager
def routing(model: nn.Module, routes: int | torch.Tensor | RoutingPlan, *, check: bool | None = None) -> Iterator[RoutingPlan]:
    """Inside the block, every RTL layer of ``model`` uses ``routes`` when called without routes.

    ``routes`` is an int, an integer tensor (one ticket per sample, ``[B]``, or per row) or a plan;
    the plan is built once here and yielded. The routes belong to this thread or asyncio task
    only, and the enclosing routes come back when the block ends.
    """
    layers, routed = _routed_modules(model)
    plan = _model_plan(layers, routes, check)
    with route_scope(routed, plan):
        yield plan


class RoutedModel(nn.Module):
    """A converted model plus a router: ``forward(*args, routes=None, **kwargs)``.

    When ``routes`` is None the router computes them from the first positional argument. The
    routing plan is built once per call and shared by every RTL layer; it belongs to this call,
    so one model may serve many threads or asyncio tasks at once.
    """

    def __init__(self, model: nn.Module, router: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        # found once: walking every module on each call costs more than a small layer's kernel
        # (convert the model before wrapping it; layers added later are not seen)
        self._rtl_layers, self._routed = _routed_modules(model)
        if router is not None and not callable(router):
            raise TypeError(f"router: expected a callable router(x) -> LongTensor [B], got {type(router).__name__}")
        self.model = model
        self.router = router

    def route(self, *args: object, **kwargs: object) -> torch.Tensor:
        """The router's ticket ids for this input, checked for type and batch size (range: when planned)."""
        if self.router is None:
            raise ValueError("routes: expected routes=... because this RoutedModel has no router, got None")
        if not args:
            raise ValueError("args: the router needs the input as the first positional argument, got none")
        routes = self.router(args[0])
        if not isinstance(routes, torch.Tensor):
            raise TypeError(f"router: expected it to return an integer tensor [B], got {type(routes).__name__}")
        if routes.dtype.is_floating_point or routes.dtype == torch.bool or routes.is_complex():
            raise TypeError(f"router: expected it to return integer ticket ids [B], got dtype {routes.dtype}")
        _check_batch(routes, args[0], "router")
        return routes

    def forward(self, *args: object, routes: int | torch.Tensor | RoutingPlan | None = None, **kwargs: object) -> object:
        layers = self._rtl_layers
        if routes is None:
            routes = self.route(*args, **kwargs)
            try:
                plan = _model_plan(layers, routes, None)
            except ValueError as exc:
                raise ValueError(f"router: returned ticket ids the model cannot use ({exc})") from None
        else:
            if isinstance(routes, torch.Tensor) and args:
                _check_batch(routes, args[0], "routes")
            plan = _model_plan(layers, routes, None)
        with route_scope(self._routed, plan):
            return self.model(*args, **kwargs)


def _check_batch(routes: torch.Tensor, x: object, name: str) -> None:
    """Routes with a batch dimension must match the input's batch size (``x.shape[0]``)."""
    if routes.dim() and isinstance(x, torch.Tensor) and x.dim() and routes.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name}: expected one ticket id per sample of the first argument (batch {x.shape[0]}), got shape {list(routes.shape)}"
        )
