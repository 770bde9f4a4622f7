"""``rtl-kernels bench``: time our backends against every baseline and write JSON, Markdown and plots."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from ..benchmarks.cases import AXES, DTYPES, OPS, PRESETS, ROUTINGS, STRUCTURES, build_cases
from ..benchmarks.timing import TimerConfig

logger = logging.getLogger(__name__)

_AXIS_HELP = {
    "op": f"ops to run, from {', '.join(OPS)}",
    "shape": "linear layer shapes NxKin (out x in), e.g. 1024x1024,4096x4096",
    "rows": "rows per call (images for conv2d), e.g. 1,16,256,16384",
    "tickets": "number of tickets K, e.g. 2,4,8,16,64",
    "density": "fraction of weights each mask keeps, e.g. 0.5,0.2,0.1,0.05",
    "structure": f"mask structure, from {', '.join(STRUCTURES)} (tile: whole --tile blocks kept or dropped)",
    "routing": f"routing distribution, from {', '.join(ROUTINGS)} (one: all rows on one ticket; distinct: round robin)",
    "dtype": f"element types, from {', '.join(DTYPES)}",
}
_CASTS = {"rows": int, "tickets": int, "density": float}


def _csv(cast):
    def parse(text: str) -> list:
        try:
            return [cast(t) for t in text.split(",") if t.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected comma-separated {cast.__name__} values, got {text!r}") from exc

    return parse


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = (int(t) for t in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS such as 32x32, got {text!r}") from exc
    return a, b


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark routed kernels against every baseline",
        description=(
            "Time rtl_kernels' backends against naive masking (eager and torch.compile), K pre-masked dense copies "
            "(loop and torch._grouped_mm), per-ticket BSR and the unmasked dense op, over rows, K, density, mask "
            "structure, routing distribution and dtype. Writes <device>-<date>.json/.md, PNG plots and LATEST.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="axis values and sweeps (quick: CI-class CPU, a few minutes)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device to run on (cpu, cuda, cuda:1)")
    axes = p.add_argument_group("axis overrides (comma-separated; replace the preset's values)")
    for axis in AXES:
        axes.add_argument(f"--{axis}", type=_csv(_CASTS.get(axis, str)), default=None, help=_AXIS_HELP[axis])
    axes.add_argument("--grid", action="store_true", help="full cross product of all axes instead of the preset's sweeps")
    axes.add_argument(
        "--tile", type=_pair, default=None, help="tile of tile-structured masks and BSR blocks, e.g. 32x32 (default: preset's)"
    )
    axes.add_argument("--conv-shape", default=None, help="conv2d layer CinxCoutxHWxk, e.g. 64x64x16x3 (default: preset's)")
    p.add_argument("--approaches", type=_csv(str), default=None, help="only these approaches (see --list); default: all")
    p.add_argument("--list", action="store_true", help="list the cases and approaches this invocation would run, then exit")
    p.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode of the naive_compiled baseline (e.g. max-autotune-no-cudagraphs on GPU)",
    )
    t = p.add_argument_group("timing")
    t.add_argument("--warmup", type=float, default=0.05, help="warm-up seconds per approach and case")
    t.add_argument("--min-time", type=float, default=0.2, help="measured seconds per approach and case (at least --min-repeats calls)")
    t.add_argument("--min-repeats", type=int, default=5, help="fewest timed calls")
    t.add_argument("--max-repeats", type=int, default=200, help="most timed calls")
    t.add_argument("--rounds", type=int, default=4, help="interleaved rounds: each visits every approach of a case in turn")
    t.add_argument("--rotations", type=int, default=4, help="distinct (x, routes) sets cycled between calls")
    t.add_argument("--no-l2-flush", action="store_true", help="GPU: do not flush L2 between calls")
    t.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="CPU timer: wall time, or process CPU time (needs --threads 1; for shared machines, leaves out time spent descheduled)",
    )
    t.add_argument(
        "--cpu-flush-mib",
        type=int,
        default=0,
        help="CPU: zero a buffer of this many MiB before each timed call so weights are not served from cache (0: off)",
    )
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--copy-mib", type=int, default=256, help="size of the bandwidth probe's copy (MiB)")
    t.add_argument("--matmul-size", type=int, default=None, help="side of the matmul probe (default 2048 on CPU, 8192 on GPU)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop starting new cases after this many seconds and report the ones that ran (default: run every case)",
    )
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="directory for the result files")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (they need matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _command(args: argparse.Namespace) -> str:
    """The invocation as a reproducible command line (only the options that were given)."""
    parts = ["rtl-kernels bench", f"--preset {args.preset}", f"--device {args.device}"]
    for axis in AXES:
        values = getattr(args, axis)
        if values is not None:
            parts.append(f"--{axis} {','.join(str(v) for v in values)}")
    if args.grid:
        parts.append("--grid")
    if args.tile:
        parts.append(f"--tile {args.tile[0]}x{args.tile[1]}")
    if args.conv_shape:
        parts.append(f"--conv-shape {args.conv_shape}")
    if args.approaches:
        parts.append(f"--approaches {','.join(args.approaches)}")
    if args.threads:
        parts.append(f"--threads {args.threads}")
    if args.clock != "wall":
        parts.append(f"--clock {args.clock}")
    if args.cpu_flush_mib:
        parts.append(f"--cpu-flush-mib {args.cpu_flush_mib}")
    if args.time_budget is not None:
        parts.append(f"--time-budget {args.time_budget:g}")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    from ..benchmarks.baselines import approach_factories
    from ..benchmarks.report import time_table, write_report
    from ..benchmarks.runner import RunConfig, run_benchmark

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise ValueError(
            f"--clock: 'cpu' needs --device cpu and --threads 1, got device {args.device} with {torch.get_num_threads()} threads"
        )
    overrides = {axis: getattr(args, axis) for axis in AXES if getattr(args, axis) is not None}
    config = RunConfig(
        preset=args.preset,
        overrides=overrides,
        grid=args.grid,
        device=args.device,
        approaches=args.approaches,
        compile_mode=args.compile_mode,
        timer=TimerConfig(
            warmup_s=args.warmup,
            min_time_s=args.min_time,
            min_repeats=args.min_repeats,
            max_repeats=args.max_repeats,
            flush_l2=not args.no_l2_flush,
            rounds=args.rounds,
            clock=args.clock,
            cpu_flush_bytes=args.cpu_flush_mib << 20,
        ),
        rotations=args.rotations,
        copy_bytes=args.copy_mib << 20,
        matmul_size=args.matmul_size or (8192 if device.type == "cuda" else 2048),
        tile=args.tile,
        conv_shape=args.conv_shape,
        time_budget_s=args.time_budget,
    )
    if args.list:
        factories, excluded = approach_factories(device, compile_mode=args.compile_mode)
        cases = build_cases(args.preset, overrides, grid=args.grid, tile=args.tile, conv_shape=args.conv_shape)
        print(f"{len(cases)} cases:")
        for case in cases:
            print(f"  {case.key()}")
        print("approaches: " + ", ".join(factories))
        for name, reason in excluded.items():
            print(f"not timed: backend {name}: {reason}")
        return 0
    doc = run_benchmark(config, progress=not args.no_progress, command=_command(args))
    paths = write_report(doc, args.out, plots=not args.no_plots)
    print("\n".join(time_table(doc)))
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return 0
