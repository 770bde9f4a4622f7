"""Routing plan: what a grouped kernel needs, computed once from the routes.

Everything here runs on the routes' device with static shapes and no host synchronisation, so a
plan can be built inside a CUDA graph or a ``torch.compile`` region. The sort is stable, so the
plan is deterministic and dropless (every row appears exactly once).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class RoutingPlan:
    """Rows grouped by ticket.

    ``routes[i]`` is row i's ticket; ``perm`` lists row indices sorted by ticket (stable);
    ``offsets[k]:offsets[k+1]`` is ticket k's slice of ``perm``. Plans from :func:`make_plan` (and
    so ``rtl.plan_routes``) are consistent by construction; a hand-built one is checked once by
    :func:`check_plan` when first used by an op (a repeated row in ``perm`` would overwrite another).
    """

    routes: torch.Tensor  # int64 [M]
    perm: torch.Tensor  # int64 [M]
    offsets: torch.Tensor  # int64 [K + 1]
    _consistent: bool = field(default=False, repr=False, compare=False)  # built by make_plan, or checked

    @property
    def num_tickets(self) -> int:
        return int(self.offsets.shape[0]) - 1

    @property
    def num_rows(self) -> int:
        return int(self.routes.shape[0])

    @property
    def counts(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def repeat_rows(self, factor: int) -> RoutingPlan:
        """The plan for ``M * factor`` rows where row ``i`` becomes rows ``i*factor … i*factor+factor-1``.

        A model routed per sample (routes ``[B]``) uses this for a layer that sees ``[B, T, C]``:
        no new sort, only index arithmetic.
        """
        if factor == 1:
            return self
        step = torch.arange(factor, dtype=torch.int64, device=self.perm.device)
        return RoutingPlan(
            routes=self.routes.repeat_interleave(factor),
            perm=(self.perm.unsqueeze(1) * factor + step).reshape(-1),
            offsets=self.offsets * factor,
            _consistent=self._consistent,
        )

    def to(self, device: torch.device | str) -> RoutingPlan:
        return RoutingPlan(self.routes.to(device), self.perm.to(device), self.offsets.to(device), self._consistent)


# up to this many rows, an eager CPU plan is built with numpy: a few calls instead of a chain of
# small torch ops, whose dispatch dominates a decode step's host time
_NUMPY_MAX_ROWS = 4096


def make_plan(routes: torch.Tensor, num_tickets: int) -> RoutingPlan:
    """Build the plan for int64 ``routes`` ``[M]`` whose values lie in ``[0, num_tickets)``."""
    routes = routes.reshape(-1).to(torch.int64)
    if routes.device.type == "cpu" and routes.shape[0] <= _NUMPY_MAX_ROWS and not torch.compiler.is_compiling():
        return _make_plan_numpy(routes, num_tickets)
    counts = torch.zeros(num_tickets, dtype=torch.int64, device=routes.device)
    counts.scatter_add_(0, routes, torch.ones_like(routes))
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    perm = torch.argsort(routes, stable=True)
    return RoutingPlan(routes=routes, perm=perm, offsets=offsets, _consistent=True)


def _make_plan_numpy(routes: torch.Tensor, num_tickets: int) -> RoutingPlan:
    r = routes.numpy()
    offsets = np.zeros(num_tickets + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=num_tickets), out=offsets[1:])
    perm = np.argsort(r, kind="stable")
    return RoutingPlan(routes=routes, perm=torch.from_numpy(perm), offsets=torch.from_numpy(offsets), _consistent=True)


def check_plan(plan: RoutingPlan, num_tickets: int) -> None:
    """Check a hand-built plan (once; reads it on the host): int64 vectors, ``offsets`` rising from 0 to M,
    ``perm`` a permutation of the rows, and ``routes[perm]`` equal to the tickets the offsets say."""
    for name in ("routes", "perm", "offsets"):
        t = getattr(plan, name)
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.dim() != 1:
            got = f"{t.dtype} of shape {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"routes: RoutingPlan.{name}: expected a 1-D int64 tensor, got {got}")
    m = plan.routes.shape[0]
    if plan.perm.shape[0] != m:
        raise ValueError(f"routes: RoutingPlan.perm: expected {m} entries (one per row of routes), got {plan.perm.shape[0]}")
    counts = plan.offsets[1:] - plan.offsets[:-1]
    if plan.offsets.shape[0] != num_tickets + 1 or int(plan.offsets[0]) != 0 or int(plan.offsets[-1]) != m or bool((counts < 0).any()):
        raise ValueError(
            f"routes: RoutingPlan.offsets: expected {num_tickets + 1} values rising from 0 to {m}, got {plan.offsets.tolist()}"
        )
    if not torch.equal(torch.sort(plan.perm).values, torch.arange(m, device=plan.perm.device)):
        raise ValueError("routes: RoutingPlan.perm: expected a permutation of the rows 0..M-1 (each row exactly once), got repeats or gaps")
    expected = torch.repeat_interleave(torch.arange(num_tickets, device=counts.device), counts)
    if not torch.equal(plan.routes[plan.perm], expected):
        raise ValueError(
            "routes: RoutingPlan.routes: expected routes[perm] to be the tickets the offsets give, got a row on another ticket"
        )
    object.__setattr__(plan, "_consistent", True)


@dataclass(frozen=True)
class BlockSchedule:
    """Per-block metadata for a grouped kernel with ``block_rows`` rows per tile.

    Each ticket's rows are split into ``ceil(count / block_rows)`` blocks; ``block_ticket[b]`` is the
    ticket of block b (-1 for the unused tail, whose size is the static upper bound
    ``ceil(M / block_rows) + K``), and ``block_start[b]`` its first position in ``perm``.
    """

    block_ticket: torch.Tensor  # int32 [max_blocks]
    block_start: torch.Tensor  # int64 [max_blocks]
    block_end: torch.Tensor  # int64 [max_blocks]: end of that ticket's segment in ``perm``
    block_rows: int

    @property
    def max_blocks(self) -> int:
        return int(self.block_ticket.shape[0])


def block_schedule(plan: RoutingPlan, block_rows: int) -> BlockSchedule:
    """Blocks of at most ``block_rows`` rows, each within one ticket (padded like vLLM's MoE align)."""
    if block_rows < 1:
        raise ValueError(f"block_rows: expected a positive integer, got {block_rows}")
    counts = plan.counts
    k = counts.shape[0]
    device = counts.device
    blocks_per_ticket = (counts + block_rows - 1) // block_rows
    first_block = torch.cumsum(blocks_per_ticket, 0) - blocks_per_ticket
    max_blocks = (plan.num_rows + block_rows - 1) // block_rows + k
    block_ids = torch.arange(max_blocks, dtype=torch.int64, device=device)
    # ticket of each block = number of tickets whose first block is <= b, minus one (searchsorted)
    ticket = torch.searchsorted(first_block + blocks_per_ticket, block_ids, right=True)
    valid = ticket < k
    ticket_c = ticket.clamp_max(k - 1)
    start = plan.offsets[ticket_c] + (block_ids - first_block[ticket_c]) * block_rows
    end = plan.offsets[ticket_c + 1]
    return BlockSchedule(
        block_ticket=torch.where(valid, ticket_c, torch.full_like(ticket_c, -1)).to(torch.int32),
        block_start=torch.where(valid, start, torch.zeros_like(start)),
        block_end=torch.where(valid, end, torch.zeros_like(end)),
        block_rows=block_rows,
    )
