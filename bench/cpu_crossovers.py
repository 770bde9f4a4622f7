"""Measure the cpu backend's conv2d crossover (implicit-GEMM kernel vs masked copies + F.conv2d) and store it.

For each dtype and images-per-ticket count, both paths run the same batch (4 tickets, that many
images each) in interleaved rounds; the crossover is the largest count at which the kernel is
still faster (``null``: it won everywhere measured, so the kernel always runs). The result goes
into ``rtl_kernels/backends/cpu_crossovers.json`` (``--dry-run`` only prints it). On a shared
machine use ``--cpu-time`` (one thread, thread CPU time), which leaves out time spent descheduled.

    python bench/cpu_crossovers.py --cpu-time
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from rtl_kernels.backends import cpu_backend, crossovers
from rtl_kernels.benchmarks.machine import cpu_model, utc_now
from rtl_kernels.conv_params import ConvParams
from rtl_kernels.masks.packed import pack_masks
from rtl_kernels.routing_plans.plan import make_plan

COUNTS = (1, 2, 4, 8, 16, 32, 64)


def _time(fn, clock, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def _paths(x, dy, weight, masks, plan, params, backward: bool):
    """The kernel call and the masked copies + F.conv2d call of one batch (forward, or dx and dW)."""
    ext, conv = cpu_backend._ext(), ([1, 1], [1, 1], [1, 1], 1)
    if backward:
        return (
            lambda: ext.conv_backward(dy, x, weight, masks.bits, plan.perm, plan.offsets, *conv, True, True),
            lambda: cpu_backend.grouped_conv2d_backward(dy, x, weight, masks, plan, params, True, True),
        )
    return (
        lambda: ext.conv_forward(x, weight, masks.bits, plan.perm, plan.offsets, None, *conv),
        lambda: cpu_backend.grouped_conv2d_forward(x, weight, masks, plan, None, params),
    )


def measure(dtype: torch.dtype, backward: bool, clock, rounds: int, tickets: int = 4) -> dict[int, tuple[float, float]]:
    """``{images per ticket: (kernel s, grouped s)}`` on the quick preset's conv shape (64x64x16x3, density 0.2)."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 64, 3, 3, generator=g).to(dtype)
    masks = pack_masks(torch.rand(tickets, *weight.shape, generator=g) < 0.2)
    params = ConvParams((1, 1), (1, 1), (1, 1), 1)
    out = {}
    for n in COUNTS:
        x = torch.randn(n * tickets, 64, 16, 16, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
        plan = make_plan(torch.arange(n * tickets) % tickets, tickets)
        dy = torch.randn(n * tickets, 64, 16, 16, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
        ours, theirs = _paths(x, dy, weight, masks, plan, params, backward)
        ours(), theirs()
        t_ours = t_theirs = float("inf")
        for _ in range(3):  # interleaved, so load from other processes hits both alike
            t_ours = min(t_ours, _time(ours, clock, rounds))
            t_theirs = min(t_theirs, _time(theirs, clock, rounds))
        out[n] = (t_ours, t_theirs)
    return out


def crossover(times: dict[int, tuple[float, float]]) -> int | None:
    """Largest count before the first one where the grouped path wins (None: the kernel always won)."""
    last = None
    for n in sorted(times):
        ours, theirs = times[n]
        if theirs < ours:
            return last if last is not None else 0
        last = n
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-time", action="store_true", help="one thread, thread CPU time (for a shared machine)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dry-run", action="store_true", help="print the table, do not write the JSON")
    args = parser.parse_args()
    if args.cpu_time:
        torch.set_num_threads(1)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    table = json.loads(crossovers.PATH.read_text())
    conv = table["conv2d"]
    for key, backward in (("kernel_max_images_per_ticket", False), ("backward_kernel_max_images_per_ticket", True)):
        for name in ("float32", "bfloat16"):
            times = measure(getattr(torch, name), backward, clock, args.rounds)
            conv[key][name] = crossover(times)
            rows = ", ".join(f"{n}: {a * 1e6:.0f}/{b * 1e6:.0f}" for n, (a, b) in times.items())
            print(f"{key} {name}: {conv[key][name]}  (images/ticket: kernel/grouped µs) {rows}")
    load = os.getloadavg()[0]
    conv["measured"] = (
        f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"{'thread CPU time' if args.cpu_time else 'wall clock'}, load average {load:.1f}, {utc_now().isoformat()}; "
        f"images per ticket measured: {list(COUNTS)}"
    )
    if not args.dry_run:
        crossovers.PATH.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
