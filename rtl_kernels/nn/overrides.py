"""Call-scoped replacement forwards for RTL layers (used by the strong-ticket search's mixed-ticket steps).

The mapping lives in a context variable, so it belongs to the call (thread, asyncio task), never to
the shared modules, and a nested block restores the enclosing mapping when it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

Forward = Callable[..., torch.Tensor]  # (x, routes); attention layers: (x, routes, in_proj rows)
_FORWARDS: ContextVar[Mapping[int, Forward] | None] = ContextVar("rtl_forward_overrides", default=None)


@contextmanager
def forward_overrides(forwards: Mapping[nn.Module, Forward]) -> Iterator[None]:
    """Inside the block, each listed RTL layer computes ``forwards[layer](x, routes)`` instead of its own forward."""
    token = _FORWARDS.set({id(m): f for m, f in forwards.items()})
    try:
        yield
    finally:
        _FORWARDS.reset(token)


def override_of(layer: nn.Module) -> Forward | None:
    """The replacement forward of ``layer`` in the current call, if any (never inside ``torch.compile``)."""
    if torch.compiler.is_compiling():
        return None
    table = _FORWARDS.get()
    return None if table is None else table.get(id(layer))
