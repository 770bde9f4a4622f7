"""The routes in effect for the current call: a per-call scope, never state on the modules.

``rtl.routing`` and ``RoutedModel`` open a scope that maps each RTL layer of a model to the
routes of this call; a layer called without routes looks itself up in the innermost scope.

- Eager code keeps the scopes in a :class:`contextvars.ContextVar`, so every thread and every
  asyncio task sees only its own routes, and leaving a scope restores the enclosing one.
- Dynamo cannot trace ``ContextVar``; while ``torch.compile`` traces, scopes opened inside the
  traced code live on a thread-local stack, which dynamo traces (and whose push and pop cancel
  out, so the compiled graph carries the routes as ordinary inputs and reads no shared state).
  A scope opened outside a compiled region is read there through a graph break (not possible
  with ``fullgraph=True``: open the scope inside, e.g. compile the ``RoutedModel``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from ..routing_plans.plan import RoutingPlan

Routes = int | torch.Tensor | RoutingPlan
# layer id -> routes; a new dict per scope (scopes are never mutated once opened)
Scope = dict[int, Routes]

_EAGER: ContextVar[Scope | None] = ContextVar("rtl_kernels_routes", default=None)


class _TraceStack(threading.local):
    def __init__(self) -> None:
        self.scopes: list[Scope] = []


_TRACED = _TraceStack()


@contextmanager
def route_scope(layers: Iterable[torch.nn.Module], routes: Routes) -> Iterator[None]:
    """Within the block, ``layers`` called without routes use ``routes`` (in this thread / task only)."""
    if torch.compiler.is_compiling():
        stack = _TRACED.scopes
        scope = dict(stack[-1]) if stack else {}
        scope.update((id(layer), routes) for layer in layers)
        stack.append(scope)
        try:
            yield
        finally:
            stack.pop()
        return
    enclosing = _EAGER.get()
    scope = {} if enclosing is None else dict(enclosing)
    scope.update((id(layer), routes) for layer in layers)
    token = _EAGER.set(scope)
    try:
        yield
    finally:
        _EAGER.reset(token)


def current_routes(layer: torch.nn.Module) -> Routes | None:
    """The routes the innermost scope gives ``layer``, or None when no scope names it."""
    if torch.compiler.is_compiling():
        stack = _TRACED.scopes
        # no scope opened inside the traced code: read an eager one at run time, outside the graph
        return stack[-1].get(id(layer)) if stack else _eager_routes_outside_graph(layer)
    return _eager_routes(layer)


def _eager_routes(layer: torch.nn.Module) -> Routes | None:
    scope = _EAGER.get()
    return None if scope is None else scope.get(id(layer))


_eager_routes_outside_graph = torch.compiler.disable(_eager_routes)


def resolve_routes(layer: torch.nn.Module, routes: Routes | None, num_tickets: int) -> Routes:
    """``routes`` when given, else the scope's routes for ``layer``, else ticket 0 when K = 1; otherwise a ValueError."""
    if routes is not None:
        return routes
    scoped = current_routes(layer)
    if scoped is not None:
        return scoped
    if num_tickets == 1:
        return 0
    raise ValueError(
        f"routes: expected ticket ids for this {type(layer).__name__} with {num_tickets} tickets, got None "
        "(pass routes to forward, or call the model inside `with rtl.routing(model, routes):`)"
    )
