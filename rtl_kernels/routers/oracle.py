"""``OracleRouter``: routes known from labels (or a context) through a label -> ticket mapping, as in the paper."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..ops.checks import check_num_tickets
from .store import register_router_class

Labels = torch.Tensor | Sequence[int]


class _GivenLabels(threading.local):
    """Per-thread ``given(labels)`` stacks, keyed by router: a block in one thread never routes another
    thread's calls (a thread-local, unlike a ContextVar, is read by ``torch.compile`` without a graph break)."""

    def __init__(self) -> None:
        self.stacks: dict[int, list[torch.Tensor]] = {}


_GIVEN = _GivenLabels()


def _lookup_table(mapping: Mapping[int, int] | Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Dense int64 table ``label -> ticket`` (-1 for labels the mapping leaves out)."""
    if isinstance(mapping, Mapping):
        items = list(mapping.items())
        for label, ticket in items:
            for what, value in (("label", label), ("ticket", ticket)):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"mapping: expected non-negative int labels and tickets, got {what} {value!r}")
        size = max((label for label, _ in items), default=-1) + 1
        table = torch.full((size,), -1, dtype=torch.int64)
        for label, ticket in items:
            table[label] = ticket
        return table
    table = torch.as_tensor(mapping)
    if table.dim() != 1 or table.dtype.is_floating_point or table.dtype == torch.bool:
        raise ValueError(
            f"mapping: expected a dict, a sequence or a 1-D integer tensor (label -> ticket), got {table.dtype} of shape {list(table.shape)}"
        )
    return table.to(torch.int64).clone()


@register_router_class
class OracleRouter(nn.Module):
    """Routes from known labels: ``ticket = mapping[label]``.

    Labels come from, in order: the ``given(labels)`` context, ``key(x)`` when a key function is
    set, or ``x`` itself (an integer tensor of labels). ``mapping`` is a dict, a sequence or a 1-D
    tensor from label to ticket; None means the label is the ticket.
    """

    def __init__(
        self,
        mapping: Mapping[int, int] | Sequence[int] | torch.Tensor | None = None,
        *,
        num_tickets: int | None = None,
        key: Callable[[object], Labels] | None = None,
    ) -> None:
        super().__init__()
        if key is not None and not callable(key):
            raise TypeError(f"key: expected a callable x -> labels, got {type(key).__name__}")
        table = None if mapping is None else _lookup_table(mapping)
        if table is not None and table.numel() and int(table.max()) < 0:
            raise ValueError("mapping: expected at least one label mapped to a ticket, got none")
        if num_tickets is not None:
            check_num_tickets(num_tickets)
            if table is not None and table.numel() and int(table.max()) >= num_tickets:
                raise ValueError(f"mapping: expected tickets in [0, {num_tickets}), got {int(table.max())}")
        elif table is not None:
            num_tickets = int(table.max()) + 1
        self.num_tickets = num_tickets
        self.key = key
        self.register_buffer("table", table if table is not None else torch.empty(0, dtype=torch.int64), persistent=table is not None)
        self._identity = table is None

    @contextmanager
    def given(self, labels: Labels) -> Iterator[OracleRouter]:
        """Inside the block, calls of this router from this thread route by these ``labels`` (one per sample) whatever ``x`` is."""
        stack = _GIVEN.stacks.setdefault(id(self), [])
        stack.append(self._as_labels(labels, "labels"))
        try:
            yield self
        finally:
            stack.pop()
            if not stack:
                del _GIVEN.stacks[id(self)]

    @staticmethod
    def _as_labels(labels: object, name: str) -> torch.Tensor:
        labels = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(f"{name}: expected integer labels, got dtype {labels.dtype}")
        return labels.reshape(-1).to(torch.int64)

    def route(self, labels: Labels) -> torch.Tensor:
        """Ticket ids ``[B]`` for ``labels`` ``[B]`` (on the labels' device); unknown labels raise ValueError."""
        labels = self._as_labels(labels, "labels")
        if self._identity:
            if labels.numel() and int(labels.min()) < 0:
                raise ValueError(f"labels: expected non-negative labels (each is its ticket), got {int(labels.min())}")
            if self.num_tickets is not None and labels.numel() and int(labels.max()) >= self.num_tickets:
                raise ValueError(f"labels: expected labels in [0, {self.num_tickets}) (each is its ticket), got {int(labels.max())}")
            return labels
        table = self.table.to(labels.device)
        if labels.numel():
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= table.numel():
                raise ValueError(f"labels: expected labels in [0, {table.numel()}) (the mapping's labels), got values in [{lo}, {hi}]")
        routes = table[labels]
        if routes.numel() and bool((routes < 0).any()):
            missing = sorted(set(labels[routes < 0].tolist()))
            raise ValueError(f"labels: no ticket in the mapping for labels {missing[:8]}")
        return routes

    def forward(self, x: object) -> torch.Tensor:
        """Ticket ids ``[B]`` on ``x``'s device (labels from the context, ``key(x)`` or ``x``)."""
        given = _GIVEN.stacks.get(id(self))
        if given:
            labels = given[-1]
            if isinstance(x, torch.Tensor) and x.dim() and labels.numel() != x.shape[0]:
                raise ValueError(f"labels: expected one label per sample of x ({x.shape[0]}), got {labels.numel()}")
        elif self.key is not None:
            labels = self._as_labels(self.key(x), "key(x)")
        elif isinstance(x, torch.Tensor):
            labels = self._as_labels(x, "x")
        else:
            raise TypeError(f"x: expected integer labels, a key function or the given(labels) context, got {type(x).__name__}")
        routes = self.route(labels)
        return routes.to(x.device) if isinstance(x, torch.Tensor) else routes

    def router_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The label -> ticket table (-1: unmapped) as a tensor; K and whether a key function was set as config."""
        config = {"num_tickets": self.num_tickets, "identity": self._identity, "key": self.key is not None}
        return ({} if self._identity else {"table": self.table}), config

    @classmethod
    def from_router_state(
        cls, tensors: dict[str, torch.Tensor], config: dict, model: object = None, *, key: Callable[[object], Labels] | None = None
    ) -> OracleRouter:
        """A router with the saved mapping (``key`` again when the saved one routed through a key function)."""
        if config.get("key") and key is None:
            raise ValueError(
                "key: the saved OracleRouter took labels from key(x), and functions are not saved; pass the same key= when loading, got None"
            )
        mapping = None if config["identity"] else tensors["table"]
        return cls(mapping, num_tickets=config["num_tickets"], key=key)

    def extra_repr(self) -> str:
        return f"num_tickets={self.num_tickets}, labels={'identity' if self._identity else self.table.numel()}"
