"""Tensors of one benchmark case: shared weight, K masks, rotated inputs and routes, reference rows.

Everything is generated from a fixed seed so that every approach sees identical data and a re-run
sees the same data as the last one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..masks.packed import PackedMasks, pack_masks
from .cases import Case, ConvShape, LinearShape, parse_shape
from .probes import dtype_of

ZIPF_EXPONENT = 1.1
CHECK_ROWS = {"linear": 256, "conv2d": 8}


@dataclass
class Problem:
    """One case's data. ``inputs`` is a list of ``(x, routes)`` pairs cycled by the timer."""

    case: Case
    device: torch.device
    dtype: torch.dtype
    geometry: LinearShape | ConvShape
    weight: torch.Tensor
    bias: torch.Tensor
    masks: torch.Tensor  # bool [K, *weight.shape]
    packed: PackedMasks
    inputs: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def rows(self) -> int:
        return self.case.rows

    @property
    def num_tickets(self) -> int:
        return self.case.tickets

    def active_tickets(self) -> float:
        """Mean number of tickets with at least one row over the rotated route sets."""
        return sum(int(torch.unique(r).numel()) for _, r in self.inputs) / len(self.inputs)

    def ticket_counts(self) -> torch.Tensor:
        """Rows per ticket (int64 [K]) of the first route set."""
        return torch.bincount(self.inputs[0][1].cpu(), minlength=self.num_tickets)


def sample_routes(kind: str, rows: int, tickets: int, gen: torch.Generator) -> torch.Tensor:
    """Ticket ids (int64 [rows]) drawn from a routing distribution.

    ``uniform``: independent uniform draws; ``zipf``: ticket k with probability proportional to
    ``1 / (k + 1) ** 1.1``; ``one``: every row on ticket 0; ``distinct``: round robin over the
    tickets, shuffled, so rows differ from each other as much as K allows (all distinct when
    rows <= K).
    """
    if kind == "uniform":
        return torch.randint(tickets, (rows,), generator=gen)
    if kind == "zipf":
        probs = 1.0 / torch.arange(1, tickets + 1, dtype=torch.float64) ** ZIPF_EXPONENT
        return torch.multinomial(probs, rows, replacement=True, generator=gen)
    if kind == "one":
        return torch.zeros(rows, dtype=torch.int64)
    if kind == "distinct":
        return (torch.arange(rows) % tickets)[torch.randperm(rows, generator=gen)]
    raise ValueError(f"routing: expected one of uniform, zipf, one, distinct, got {kind!r}")


def sample_masks(
    structure: str, tickets: int, rows: int, cols: int, density: float, tile: tuple[int, int], gen: torch.Generator
) -> torch.Tensor:
    """Bool masks ``[K, rows, cols]``: independent bits (``unstructured``) or whole tiles (``tile``)."""
    if structure == "unstructured":
        return torch.rand(tickets, rows, cols, generator=gen) < density
    if structure == "tile":
        tr, tc = tile
        grid = torch.rand(tickets, math.ceil(rows / tr), math.ceil(cols / tc), generator=gen) < density
        return grid.repeat_interleave(tr, 1).repeat_interleave(tc, 2)[:, :rows, :cols].contiguous()
    raise ValueError(f"structure: expected 'unstructured' or 'tile', got {structure!r}")


def _rotations(per_set_bytes: int, requested: int, budget_bytes: int) -> int:
    return max(1, min(requested, budget_bytes // max(per_set_bytes, 1)))


def build_problem(case: Case, device: torch.device, *, rotations: int = 4, input_budget_bytes: int = 1 << 30, seed: int = 0) -> Problem:
    """Generate the case's tensors on ``device`` (CPU generator, so data do not depend on the device)."""
    gen = torch.Generator().manual_seed(seed)
    dtype = dtype_of(case.dtype)
    geo = parse_shape(case.op, case.shape)
    if isinstance(geo, LinearShape):
        wshape: tuple[int, ...] = (geo.out_features, geo.in_features)
        xshape: tuple[int, ...] = (case.rows, geo.in_features)
        fan_in = geo.in_features
    else:
        wshape = (geo.out_channels, geo.in_channels, geo.kernel, geo.kernel)
        xshape = (case.rows, geo.in_channels, geo.size, geo.size)
        fan_in = geo.in_channels * geo.kernel**2
    weight = (torch.randn(wshape, generator=gen) / math.sqrt(fan_in)).to(device=device, dtype=dtype)
    bias = (0.1 * torch.randn(wshape[0], generator=gen)).to(device=device, dtype=dtype)
    cols = math.prod(wshape[1:])
    masks = sample_masks(case.structure, case.tickets, wshape[0], cols, case.density, case.tile, gen).reshape(case.tickets, *wshape)
    masks = masks.to(device)
    per_set = math.prod(xshape) * weight.element_size() + 8 * case.rows
    inputs = []
    for _ in range(_rotations(per_set, rotations, input_budget_bytes)):
        x = torch.randn(xshape, generator=gen).to(device=device, dtype=dtype)
        if isinstance(geo, ConvShape):
            x = x.contiguous(memory_format=torch.channels_last)
        inputs.append((x, sample_routes(case.routing, case.rows, case.tickets, gen).to(device)))
    return Problem(case, device, dtype, geo, weight, bias, masks, pack_masks(masks), inputs)


def reference_rows(problem: Problem) -> tuple[int, torch.Tensor]:
    """Float64 output of the first input set's first rows (the correctness check's ground truth)."""
    x, routes = problem.inputs[0]
    n = min(problem.rows, CHECK_ROWS[problem.case.op])
    xs, rs = x[:n].double(), routes[:n]
    w, b = problem.weight.double(), problem.bias.double()
    out = None
    for ticket in torch.unique(rs).tolist():
        idx = (rs == ticket).nonzero().squeeze(1)
        wk = w * problem.masks[ticket]
        if problem.case.op == "linear":
            yk = F.linear(xs[idx], wk, b)
        else:
            yk = F.conv2d(xs[idx], wk, b, padding=problem.geometry.padding)
        if out is None:
            out = yk.new_zeros((n, *yk.shape[1:]))
        out[idx] = yk
    return n, out


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖out − ref‖ / ‖ref‖`` in float64 (0 when both are zero)."""
    diff = torch.linalg.vector_norm((out.double() - ref).flatten())
    norm = torch.linalg.vector_norm(ref.flatten())
    return float(diff / norm) if float(norm) > 0 else float(diff)
