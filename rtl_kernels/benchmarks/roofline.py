"""Bytes that must move and FLOPs each approach executes (kernel-design notes §7.1).

Notation: s = element size, E = weight elements, M = rows (images for conv), A = s·M·(in + out)
activation bytes (read X once, write Y once), K_act = tickets with rows in the batch.

- ``dense``   (unmasked floor):              s·E + A
- ``fused``   (our backends, bit masks):     s·E + K_act·(mask words bytes per ticket) + A + 8·M (routes)
- ``copies``  (K dense copies, loop):        K_act·s·E + 3·A + 8·M   (gather X / scatter Y add 2·A)
- ``grouped`` (K copies, torch._grouped_mm): K_act·s·E + 3·A + 8·M
- ``per_row`` (K copies, one op per row):    K_act·s·E + A + 8·M     (each copy read once if caches keep it)
- ``naive``   (W*M_k built per call):        K_act·((3·s + 1)·E + 8·M) + 3·A
  (per ticket: read W, read the bool mask, write and re-read W_k; scan the routes)
- ``bsr``     (per-ticket BSR weights):      stored bytes of the active tickets' BSR tensors + 3·A + 8·M

FLOPs are ``2·M·(in·out per row)`` for every approach except ``bsr``, which only multiplies the
stored blocks (``2·Σ_k M_k·nnz_k``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .cases import ConvShape, LinearShape
from .problem import Problem

ROUTE_BYTES = 8  # int64 ticket id per row

KINDS = ("dense", "fused", "copies", "grouped", "per_row", "naive", "bsr")


@dataclass(frozen=True)
class Geometry:
    """What the byte/FLOP formulas need from one case."""

    rows: int
    elem_size: int
    weight_elems: int
    in_elems: int  # per row (linear: K_in; conv: C_in·H·W)
    out_elems: int  # per row (linear: N; conv: C_out·H_out·W_out)
    macs_per_row: int  # multiply-adds per row of a dense op
    active_tickets: float
    mask_bytes_per_ticket: int
    bsr_bytes_active: float = 0.0  # stored BSR bytes (values + indices) summed over active tickets
    bsr_macs: float = 0.0  # Σ_k rows_k · stored elements of ticket k


def activation_bytes(g: Geometry) -> int:
    return g.elem_size * g.rows * (g.in_elems + g.out_elems)


def approach_bytes(kind: str, g: Geometry) -> float:
    """Minimum bytes an approach of this family moves through memory for one call."""
    act, w, routes = activation_bytes(g), g.elem_size * g.weight_elems, ROUTE_BYTES * g.rows
    if kind == "dense":
        return w + act
    if kind == "fused":
        return w + g.active_tickets * g.mask_bytes_per_ticket + act + routes
    if kind in ("copies", "grouped"):
        return g.active_tickets * w + 3 * act + routes
    if kind == "per_row":
        return g.active_tickets * w + act + routes
    if kind == "naive":
        return g.active_tickets * ((3 * g.elem_size + 1) * g.weight_elems + routes) + 3 * act
    if kind == "bsr":
        return g.bsr_bytes_active + 3 * act + routes
    raise ValueError(f"kind: expected one of {list(KINDS)}, got {kind!r}")


def approach_flops(kind: str, g: Geometry) -> float:
    """FLOPs the approach executes (2 per multiply-add)."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {list(KINDS)}, got {kind!r}")
    if kind == "bsr":
        return 2.0 * g.bsr_macs
    return 2.0 * g.rows * g.macs_per_row


def geometry(problem: Problem) -> Geometry:
    """The formula inputs of a generated problem (ticket activity from its rotated route sets)."""
    geo = problem.geometry
    if isinstance(geo, LinearShape):
        in_elems, out_elems = geo.in_features, geo.out_features
        macs = geo.in_features * geo.out_features
    elif isinstance(geo, ConvShape):
        in_elems = geo.in_channels * geo.size**2
        out_elems = geo.out_channels * geo.size**2  # stride 1, "same" padding
        macs = out_elems * geo.in_channels * geo.kernel**2
    else:
        raise TypeError(f"problem.geometry: expected LinearShape or ConvShape, got {type(geo).__name__}")
    k = problem.num_tickets
    counts = problem.ticket_counts()
    weight_elems = problem.weight.numel()
    bsr_bytes = bsr_macs = 0.0
    if problem.case.structure == "tile":
        per_ticket = problem.masks.reshape(k, -1).sum(1).cpu()  # tile masks: stored elements = set bits
        n_out = problem.weight.shape[0]
        tr, tc = problem.case.tile
        nblocks = per_ticket.double() / (tr * tc)
        index_bytes = 8 * (nblocks + n_out / tr + 1)
        active = counts > 0
        bsr_bytes = float((per_ticket.double() * problem.weight.element_size() + index_bytes)[active].sum())
        bsr_macs = float((counts.double() * per_ticket.double()).sum())
    return Geometry(
        rows=problem.rows,
        elem_size=problem.weight.element_size(),
        weight_elems=weight_elems,
        in_elems=in_elems,
        out_elems=out_elems,
        macs_per_row=macs,
        active_tickets=problem.active_tickets(),
        mask_bytes_per_ticket=problem.packed.bits[0].numel() * 4,
        bsr_bytes_active=bsr_bytes,
        bsr_macs=bsr_macs,
    )
