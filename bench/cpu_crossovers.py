"""Measure the cpu backend's path crossovers on this machine and store them as its set in ``cpu_crossovers.json``.

Linear (1024x1024, density 0.2), for float32 and bfloat16:
- ``direct_rows_per_ticket``: the weight-stationary kernel against the batched path (the fused GEMM
  for float32 on AVX-512, else masked copy + torch.mm), 4 tickets, rows per ticket swept;
- ``backward_direct_rows_per_ticket``: the backward kernels against masked copy + torch.mm;
- ``gemm_max_rows_one_ticket`` (float32): the fused GEMM against masked copy + torch.mm, all rows on one ticket.
Conv2d (the quick preset's 64x64x16x3, density 0.2, 4 tickets): the implicit-GEMM kernel against masked
copies + F.conv2d, forward and backward, images per ticket swept.
RTLDeltaConv2d (64->64, 3x3, 8x8 images, density 0.3, 4 tickets, no autograd, float32 and bfloat16):
``per_ticket_min_macs_per_ticket_channel``, the smallest swept (images per ticket) x (output pixels) x
(fan-in) from which the per-ticket form (ticket filters + dense F.conv2d) beats the fused form at every
larger count (robust to a noisy win below the crossover).
``--only-delta-conv`` measures that section alone; a stored set keeps the sections not measured.

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
from rtl_kernels.nn import RTLDeltaConv2d
from rtl_kernels.routing_plans.plan import make_plan

CONV_COUNTS = (1, 2, 4, 8, 16, 32, 64)
DELTA_CONV_IMAGES = (1, 2, 4, 8, 16, 32)
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


def first_win_onwards(times: dict[int, tuple[float, float]]) -> int | None:
    """Smallest count from which the second path wins at every larger count too (None: not at the largest)."""
    limit = None
    for n in sorted(times, reverse=True):
        first, second = times[n]
        if second >= first:
            break
        limit = n
    return limit


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


def delta_conv_pairs(dtype: torch.dtype) -> dict[int, Pair]:
    """``{multiply-adds per ticket and output channel: (fused, per-ticket)}`` for RTLDeltaConv2d."""
    torch.manual_seed(0)
    layer = RTLDeltaConv2d(64, 64, 3, TICKETS, padding=1, dtype=dtype)
    w = layer.weight
    layer.set_merge(torch.randn_like(w), torch.rand(TICKETS, *w.shape) < 0.3, torch.rand(TICKETS) + 0.5, torch.randn(64).to(dtype))
    layer.backend = "cpu"
    layer.requires_grad_(False)

    def run(x, routes, form):
        layer.delta_form = form
        return layer(x, routes)

    pairs = {}
    for n in DELTA_CONV_IMAGES:
        x, routes = torch.randn(n * TICKETS, 64, 8, 8).to(dtype), torch.arange(n * TICKETS) % TICKETS
        pairs[n * 8 * 8 * w[0].numel()] = (
            lambda x=x, r=routes: run(x, r, "fused"),
            lambda x=x, r=routes: run(x, r, "per_ticket"),
        )
    return pairs


def delta_conv_section(clock, rounds: int, how: str) -> dict:
    section = {"per_ticket_min_macs_per_ticket_channel": {}}
    for name in DTYPES:
        times = race(delta_conv_pairs(getattr(torch, name)), clock, rounds)
        section["per_ticket_min_macs_per_ticket_channel"][name] = limit = first_win_onwards(times)
        _show(f"delta_conv2d per_ticket_min_macs_per_ticket_channel {name}", limit, times)
    section["measured"] = f"{how}; images per ticket {list(DELTA_CONV_IMAGES)} at {TICKETS} tickets, 64->64 3x3 on 8x8"
    return section


def _how(clock, isa: str) -> str:
    return (
        f"bench/cpu_crossovers.py: {cpu_model()}, ISA {isa}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"{'thread CPU time' if clock is time.thread_time else 'wall clock'}, load average {os.getloadavg()[0]:.1f}, {utc_now().isoformat(timespec='seconds')}"
    )


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
    how = _how(clock, ext.isa_name())
    linear["measured"] = f"{how}; rows per ticket {list(ROWS_PER_TICKET)} at {TICKETS} tickets, one-ticket rows {list(ONE_TICKET_ROWS)}"
    conv["measured"] = f"{how}; images per ticket {list(CONV_COUNTS)} at {TICKETS} tickets"
    return {"linear": linear, "conv2d": conv, "delta_conv2d": delta_conv_section(clock, rounds, how)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-time", action="store_true", help="one thread, thread CPU time (for a shared machine)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only-delta-conv", action="store_true", help="measure only the RTLDeltaConv2d section")
    parser.add_argument("--dry-run", action="store_true", help="print the set, do not write the JSON")
    args = parser.parse_args()
    if args.cpu_time:
        torch.set_num_threads(1)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    if args.only_delta_conv:
        found = {"delta_conv2d": delta_conv_section(clock, args.rounds, _how(clock, cpu_backend._ext().isa_name()))}
    else:
        found = measure(clock, args.rounds)
    key = crossovers.machine_key()
    print(f"set for {key!r}:\n{json.dumps(found, indent=2)}")
    if not args.dry_run:
        table = json.loads(crossovers.PATH.read_text())
        table["machines"][key] = {**table["machines"].get(key, {}), **found}  # sections not measured stay
        crossovers.PATH.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
