"""Every approach the benchmark times, as a factory ``make(problem) -> Approach``.

Each approach computes the same thing as ``rtl.routed_linear`` / ``rtl.routed_conv2d`` (bias
included) from ``(x, routes)``: any sort, gather and scatter it needs is part of the timed call.
A factory raises :class:`Unsupported` with a reason when the approach cannot run the case here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backends.registry import Call, available_backends, get_backend
from ..ops import routed_conv2d, routed_linear
from .problem import Problem

Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Unsupported(Exception):
    """The approach cannot run this case on this device/torch build (the message says why)."""


@dataclass
class Approach:
    """A timed callable ``fn(x, routes) -> y`` and the bytes it keeps resident (weights + masks)."""

    name: str
    kind: str  # roofline family: fused, naive, per_row, copies, grouped, bsr, dense
    fn: Fn
    footprint_bytes: int


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _padding(problem: Problem) -> int:
    return problem.geometry.padding


# --- our backends -----------------------------------------------------------------------------


def excluded_backend_reason(name: str, device: torch.device) -> str | None:
    """Why a registered backend must not be timed on ``device`` (None when it should be)."""
    get_backend(name)  # an unknown name raises here
    if name == "triton" and (device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        return "Triton interpreter (no GPU): interpreted timings are meaningless"
    return None


def backend_names(device: torch.device) -> tuple[list[str], dict[str, str]]:
    """Backends to time on ``device`` (fastest first) and the excluded ones with their reasons."""
    timed, excluded = [], {}
    for name in available_backends(device):
        reason = excluded_backend_reason(name, device)
        if reason is None:
            timed.append(name)
        else:
            excluded[name] = reason
    return timed, excluded


def make_backend(name: str) -> Callable[[Problem], Approach]:
    """Factory for ``rtl.routed_*`` with one named backend (route range check off, as in serving)."""

    def make(problem: Problem) -> Approach:
        backend = get_backend(name)
        call = Call(problem.case.op, problem.device, problem.dtype, problem.rows, tuple(problem.weight.shape), problem.num_tickets)
        if not backend.implements(call.op) or not backend.supports(call):
            raise Unsupported(f"backend {name!r} does not support this call ({call.op}, {problem.case.dtype}, {problem.device.type})")
        w, b, packed = problem.weight, problem.bias, problem.packed
        if problem.case.op == "linear":

            def fn(x: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
                return routed_linear(x, w, packed, routes, b, backend=name, check_routes=False)
        else:
            pad = _padding(problem)

            def fn(x: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
                return routed_conv2d(x, w, packed, routes, b, padding=pad, backend=name, check_routes=False)

        return Approach(f"rtl:{name}", "fused", fn, _nbytes(w, b, packed.bits))

    return make


# --- naive masking: what RTL research code does -------------------------------------------------

_COMPILED: dict[tuple[str, str], Callable] = {}


def _masked_linear(x: torch.Tensor, w: torch.Tensor, m: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w * m, b)


def _masked_conv(x: torch.Tensor, w: torch.Tensor, m: torch.Tensor, b: torch.Tensor, padding: int) -> torch.Tensor:
    return F.conv2d(x, w * m, b, padding=padding)


def compiled_body(op: str, mode: str) -> Callable:
    """``torch.compile`` of the per-ticket masked op (dynamic rows; compiled once per process)."""
    key = (op, mode)
    if key not in _COMPILED:
        body = _masked_linear if op == "linear" else _masked_conv
        _COMPILED[key] = torch.compile(body, dynamic=True, mode=None if mode == "default" else mode)
    return _COMPILED[key]


def _naive(problem: Problem, body: Callable, name: str) -> Approach:
    w, b, masks, k = problem.weight, problem.bias, problem.masks, problem.num_tickets
    conv = problem.case.op == "conv2d"
    extra = (_padding(problem),) if conv else ()

    def fn(x: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(routes, minlength=k).tolist()
        y = None
        for ticket, count in enumerate(counts):
            if count:
                idx = (routes == ticket).nonzero().squeeze(1)
                y_k = body(x.index_select(0, idx), w, masks[ticket], b, *extra)
                if y is None:
                    y = y_k.new_empty((x.shape[0], *y_k.shape[1:]))
                y.index_copy_(0, idx, y_k)
        return y

    return Approach(name, "naive", fn, _nbytes(w, b, masks))


def make_naive_eager(problem: Problem) -> Approach:
    """Per active ticket: ``F.linear(x[idx_k], W * M_k, b)`` with bool masks, then index_copy."""
    return _naive(problem, _masked_conv if problem.case.op == "conv2d" else _masked_linear, "naive_eager")


def make_naive_compiled(mode: str) -> Callable[[Problem], Approach]:
    """The naive loop with its per-ticket body compiled by ``torch.compile`` in ``mode``."""

    def make(problem: Problem) -> Approach:
        return _naive(problem, compiled_body(problem.case.op, mode), "naive_compiled")

    return make


# --- K pre-masked dense copies -------------------------------------------------------------------


def _copies(problem: Problem) -> torch.Tensor:
    return (problem.weight.unsqueeze(0) * problem.masks).contiguous()


def _sorted(routes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.argsort(routes, stable=True), torch.bincount(routes, minlength=k)


def make_copies_loop(problem: Problem) -> Approach:
    """K masked dense copies; rows sorted by ticket, one dense GEMM/conv (BLAS/cuDNN) per active ticket."""
    copies, b, k = _copies(problem), problem.bias, problem.num_tickets
    if problem.case.op == "conv2d":
        per_ticket = [c.contiguous(memory_format=torch.channels_last) for c in copies]
        pad = _padding(problem)

        def fn(x: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
            perm, counts = _sorted(routes, k)
            xs = x.index_select(0, perm).contiguous(memory_format=torch.channels_last)
            outs = [F.conv2d(xs[lo : lo + c], per_ticket[t], b, padding=pad) for t, lo, c in _segments(counts.tolist())]
            ys = torch.cat(outs) if len(outs) > 1 else outs[0]
            return torch.empty_like(ys).index_copy_(0, perm, ys)

        return Approach("copies_loop", "copies", fn, _nbytes(b, *per_ticket))

    def fn(x: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
        perm, counts = _sorted(routes, k)
        xs = x.index_select(0, perm)
        ys = x.new_empty(x.shape[0], copies.shape[1])
        for t, lo, c in _segments(counts.tolist()):
            torch.addmm(b, xs[lo : lo + c], copies[t].T, out=ys[lo : lo + c])
        return torch.empty_like(ys).index_copy_(0, perm, ys)

    return Approach("copies_loop", "copies", fn, _nbytes(b, copies))


def _segments(counts: list[int]) -> list[tuple[int, int, int]]:
    """``(ticket, start, count)`` of every non-empty ticket in sorted row order."""
    out, lo = [], 0
    for t, c in enumerate(counts):
        if c:
            out.append((t, lo, c))
            lo += c
    return out


MAX_PER_ROW = 4096


def make_per_row_loop(problem: Problem) -> Approach:
    """K masked dense copies and one dense op per row (or image) with that row's copy: the simplest serving loop."""
    if problem.rows > MAX_PER_ROW:
        raise Unsupported(f"per-row loop skipped above {MAX_PER_ROW} rows (one Python-level call per row)")
    copies, b = _copies(problem), problem.bias
    if problem.case.op == "conv2d":
        per_ticket = [c.contiguous(memory_format=torch.channels_last) for c in copies]
        pad = _padding(problem)

        def fn(x: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
            return torch.cat([F.conv2d(x[i : i + 1], per_ticket[r], b, padding=pad) for i, r in enumerate(routes.tolist())])

        return Approach("per_row_loop", "per_row", fn, _nbytes(b, *per_ticket))

    def fn(x: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
        y = x.new_empty(x.shape[0], copies.shape[1])
        for i, r in enumerate(routes.tolist()):
            torch.addmm(b, x[i : i + 1], copies[r].T, out=y[i : i + 1])
        return y

    return Approach("per_row_loop", "per_row", fn, _nbytes(b, copies))


def make_grouped_mm(problem: Problem) -> Approach:
    """K masked copies through ``torch._grouped_mm`` (one launch, no host sync), sort/gather/scatter included."""
    if problem.case.op != "linear":
        raise Unsupported("torch has no grouped conv2d over per-group weights")
    if not hasattr(torch, "_grouped_mm"):
        raise Unsupported(f"torch {torch.__version__} has no torch._grouped_mm")
    copies, b, k = _copies(problem), problem.bias, problem.num_tickets
    w_t = copies.transpose(1, 2)

    def fn(x: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
        perm, counts = _sorted(routes, k)
        offs = torch.cumsum(counts, 0).to(torch.int32)
        ys = torch._grouped_mm(x.index_select(0, perm), w_t, offs=offs) + b
        return torch.empty_like(ys).index_copy_(0, perm, ys)

    return Approach("grouped_mm", "grouped", fn, _nbytes(b, copies))


def make_bsr_loop(problem: Problem) -> Approach:
    """Per-ticket block-sparse (BSR) masked weight; rows sorted by ticket, one sparse x dense per ticket."""
    if problem.case.op != "linear":
        raise Unsupported("torch has no BSR conv2d")
    if problem.case.structure != "tile":
        raise Unsupported("unstructured masks: almost every tile is non-zero, BSR would store the dense weight")
    n, kin = problem.weight.shape
    tr, tc = problem.case.tile
    if n % tr or kin % tc:
        raise Unsupported(f"weight {n}x{kin} is not a multiple of the {tr}x{tc} tile")
    b, k = problem.bias, problem.num_tickets
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
            blocks = [(problem.weight * m).to_sparse_bsr((tr, tc)) for m in problem.masks]
    except (RuntimeError, NotImplementedError) as exc:
        raise Unsupported(f"to_sparse_bsr failed: {str(exc).splitlines()[0]}") from exc

    def fn(x: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
        perm, counts = _sorted(routes, k)
        xs = x.index_select(0, perm)
        ys = x.new_empty(x.shape[0], n)
        for t, lo, c in _segments(counts.tolist()):
            ys[lo : lo + c] = F.linear(xs[lo : lo + c], blocks[t], b)
        return torch.empty_like(ys).index_copy_(0, perm, ys)

    footprint = _nbytes(b, *(t for blk in blocks for t in (blk.values(), blk.col_indices(), blk.crow_indices())))
    return Approach("bsr_loop", "bsr", fn, footprint)


# --- the floor ----------------------------------------------------------------------------------


def make_dense(problem: Problem) -> Approach:
    """Unmasked dense op on the whole batch (ignores routes): the time floor, not a correct answer."""
    w, b = problem.weight, problem.bias
    if problem.case.op == "conv2d":
        w_cl, pad = w.contiguous(memory_format=torch.channels_last), _padding(problem)
        return Approach("dense_unmasked", "dense", lambda x, routes: F.conv2d(x, w_cl, b, padding=pad), _nbytes(w_cl, b))
    return Approach("dense_unmasked", "dense", lambda x, routes: F.linear(x, w, b), _nbytes(w, b))


def approach_factories(
    device: torch.device, *, compile_mode: str = "default"
) -> tuple[dict[str, Callable[[Problem], Approach]], dict[str, str]]:
    """Every approach for ``device`` by name (our timed backends first) and the excluded backends."""
    timed, excluded = backend_names(device)
    factories: dict[str, Callable[[Problem], Approach]] = {f"rtl:{name}": make_backend(name) for name in timed}
    factories.update(
        naive_eager=make_naive_eager,
        naive_compiled=make_naive_compiled(compile_mode),
        per_row_loop=make_per_row_loop,
        copies_loop=make_copies_loop,
        grouped_mm=make_grouped_mm,
        bsr_loop=make_bsr_loop,
        dense_unmasked=make_dense,
    )
    return factories, excluded
