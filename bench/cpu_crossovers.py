"""Measure the cpu backend's path crossovers on this machine and store them as its set in ``cpu_crossovers.json``.

Linear (1024x1024, density 0.2), for float32 and bfloat16:
- ``direct_rows_per_ticket``: the weight-stationary kernel against the batched path (the fused GEMM
  for float32 on AVX-512, else masked copy + torch.mm), 4 tickets, rows per ticket swept;
- ``backward_direct_rows_per_ticket``: the backward kernels against masked copy + torch.mm;
- ``gemm_max_rows_one_ticket`` (float32): the fused GEMM against masked copy + torch.mm, all rows on one ticket.
Conv2d (the quick preset's 64x64x16x3, density 0.2, 4 tickets): the implicit-GEMM kernel against masked
copies + F.conv2d, forward and backward, images per ticket swept.

Both paths of a point run in interleaved rounds (min of each); the crossover is the largest swept
count at which the first path is still faster (``null``: it won everywhere measured). The set is stored
under this machine's key (CPU model / ISA level, see ``rtl_kernels/backends/crossovers.py``); other
machines' sets stay as they are. ``--dry-run`` only prints. Time it on a quiet machine; ``--cpu-time``
(one thread, thread CPU time) leaves out time spent descheduled on a shared one.

    python bench/cpu_crossovers.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import torch

from rtl_kernels.backends import cpu_backend, crossovers
from rtl_kernels.benchmarks.machine import cpu_model, utc_now
from rtl_kernels.conv_params import ConvParams
from rtl_kernels.masks.packed import pack_masks
from rtl_kernels.routing_plans.plan import make_plan

CONV_COUNTS = (1, 2, 4, 8, 16, 32, 64)
ROWS_PER_TICKET = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
ONE_TICKET_ROWS = (64, 128, 192, 256, 384, 512, 1024, 2048)
TICKETS = 4
DTYPES = ("float32", "bfloat16")
Pair = tuple[Callable[[], object], Callable[[], object]]


def _time(fn, clock, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def race(pairs: dict[int, Pair], clock, rounds: int) -> dict[int, tuple[float, float]]:
    """``{count: (first s, second s)}``: both paths of each point, interleaved so load hits both alike."""
    out = {}
    for n, (first, second) in pairs.items():
        first(), second()
        t1 = t2 = float("inf")
        for _ in range(3):
            t1 = min(t1, _time(first, clock, rounds))
            t2 = min(t2, _time(second, clock, rounds))
        out[n] = (t1, t2)
    return out


def crossover(times: dict[int, tuple[float, float]]) -> int | None:
    """Largest count before the first one where the second path wins (None: the first always won)."""
    last = None
    for n in sorted(times):
        first, second = times[n]
        if second < first:
            return last if last is not None else 0
        last = n
    return None


def _linear(rows: int, tickets: int, dtype: torch.dtype, one_ticket: bool = False):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 1024, generator=g).to(dtype)
    w = torch.randn(1024, 1024, generator=g).to(dtype)
    masks = pack_masks(torch.rand(tickets, 1024, 1024, generator=g) < 0.2)
    routes = torch.zeros(rows, dtype=torch.long) if one_ticket else torch.arange(rows) % tickets
    plan = make_plan(routes, tickets)
    return x, w, masks.bits, plan.perm, plan.offsets, torch.randn(rows, 1024, generator=g).to(dtype)


def linear_pairs(ext, dtype: torch.dtype, kind: str) -> dict[int, Pair]:
    pairs = {}
    batched = "forward_gemm" if dtype == torch.float32 and ext.gemm_supported() else "forward_grouped"
    counts = ONE_TICKET_ROWS if kind == "one_ticket" else ROWS_PER_TICKET
    for n in counts:
        if kind == "one_ticket":
            x, w, bits, perm, offsets, _ = _linear(n, TICKETS, dtype, one_ticket=True)
            pairs[n] = (
                lambda a=(x, w, bits, perm, offsets): ext.forward_gemm(*a),
                lambda a=(x, w, bits, perm, offsets): ext.forward_grouped(*a),
            )
            continue
        x, w, bits, perm, offsets, dy = _linear(n * TICKETS, TICKETS, dtype)
        a = (x, w, bits, perm, offsets)
        if kind == "forward":
            pairs[n] = (lambda a=a: ext.forward(*a), lambda a=a, f=getattr(ext, batched): f(*a))
        else:
            pairs[n] = (
                lambda a=a, dy=dy: (ext.grad_input(dy, *a[1:]), ext.grad_weight(dy, *a)),
                lambda a=a, dy=dy: ext.backward_grouped(dy, *a, True, True),
            )
    return pairs


def conv_pairs(ext, dtype: torch.dtype, backward: bool) -> dict[int, Pair]:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 64, 3, 3, generator=g).to(dtype)
    masks = pack_masks(torch.rand(TICKETS, *weight.shape, generator=g) < 0.2)
    params, conv = ConvParams((1, 1), (1, 1), (1, 1), 1), ([1, 1], [1, 1], [1, 1], 1)
    pairs = {}
    for n in CONV_COUNTS:
        x = torch.randn(n * TICKETS, 64, 16, 16, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
        dy = torch.randn(n * TICKETS, 64, 16, 16, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
        plan = make_plan(torch.arange(n * TICKETS) % TICKETS, TICKETS)
        if backward:
            pairs[n] = (
                lambda x=x, dy=dy, plan=plan: ext.conv_backward(dy, x, weight, masks.bits, plan.perm, plan.offsets, *conv, True, True),
                lambda x=x, dy=dy, plan=plan: cpu_backend.grouped_conv2d_backward(dy, x, weight, masks, plan, params, True, True),
            )
        else:
            pairs[n] = (
                lambda x=x, plan=plan: ext.conv_forward(x, weight, masks.bits, plan.perm, plan.offsets, None, *conv),
                lambda x=x, plan=plan: cpu_backend.grouped_conv2d_forward(x, weight, masks, plan, None, params),
            )
    return pairs


def _show(label: str, limit, times: dict[int, tuple[float, float]]) -> None:
    rows = ", ".join(f"{n}: {a * 1e6:.0f}/{b * 1e6:.0f}" for n, (a, b) in times.items())
    print(f"{label}: {limit}  (count: first/second path µs) {rows}", flush=True)


def measure(clock, rounds: int) -> dict:
    """This machine's set: the linear and conv2d sections."""
    ext = cpu_backend._ext()
    linear = {"direct_rows_per_ticket": {}, "backward_direct_rows_per_ticket": {}}
    for name in DTYPES:
        dtype = getattr(torch, name)
        for key, kind in (("direct_rows_per_ticket", "forward"), ("backward_direct_rows_per_ticket", "backward")):
            times = race(linear_pairs(ext, dtype, kind), clock, rounds)
            linear[key][name] = crossover(times)
            _show(f"linear {key} {name}", linear[key][name], times)
    if ext.gemm_supported():
        times = race(linear_pairs(ext, torch.float32, "one_ticket"), clock, rounds)
        linear["gemm_max_rows_one_ticket"] = crossover(times)
        _show("linear gemm_max_rows_one_ticket float32", linear["gemm_max_rows_one_ticket"], times)
    else:
        linear["gemm_max_rows_one_ticket"] = 0  # no fused GEMM on this ISA: the rule never applies
    conv = {"kernel_max_images_per_ticket": {}, "backward_kernel_max_images_per_ticket": {}}
    for key, backward in (("kernel_max_images_per_ticket", False), ("backward_kernel_max_images_per_ticket", True)):
        for name in DTYPES:
            times = race(conv_pairs(ext, getattr(torch, name), backward), clock, rounds)
            conv[key][name] = crossover(times)
            _show(f"conv2d {key} {name}", conv[key][name], times)
    how = (
        f"bench/cpu_crossovers.py: {cpu_model()}, ISA {ext.isa_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"{'thread CPU time' if clock is time.thread_time else 'wall clock'}, load average {os.getloadavg()[0]:.1f}, {utc_now().isoformat(timespec='seconds')}"
    )
    linear["measured"] = f"{how}; rows per ticket {list(ROWS_PER_TICKET)} at {TICKETS} tickets, one-ticket rows {list(ONE_TICKET_ROWS)}"
    conv["measured"] = f"{how}; images per ticket {list(CONV_COUNTS)} at {TICKETS} tickets"
    return {"linear": linear, "conv2d": conv}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-time", action="store_true", help="one thread, thread CPU time (for a shared machine)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dry-run", action="store_true", help="print the set, do not write the JSON")
    args = parser.parse_args()
    if args.cpu_time:
        torch.set_num_threads(1)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    found = measure(clock, args.rounds)
    key = crossovers.machine_key()
    print(f"set for {key!r}:\n{json.dumps(found, indent=2)}")
    if not args.dry_run:
        table = json.loads(crossovers.PATH.read_text())
        table["machines"][key] = found
        crossovers.PATH.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
