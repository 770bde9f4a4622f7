"""``rtl-kernels tune``: time candidate launch configs of the Triton kernels and write the best as a JSON table.

For every linear shape, dtype and row count it times each candidate of each kernel (grouped
forward, dX, dW, decode) on random routes and masks, keeps the fastest, and merges the winners
into ``<gpu name>.json`` (keyed by shape bucket) in the user's config directory
(``$RTL_KERNELS_CONFIG_DIR``, default ``~/.cache/rtl_kernels/configs``, never the installed
package), where the Triton backend reads them. Each candidate runs through the backend's own
launch recipe (``triton_backend.linear_launch`` / ``dw_launch``), so the tuned configs are
measured on the code that serves. On CPU it runs the interpreter (only useful to test the command).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CANDIDATES = {
    "fwd": {
        "BLOCK_M": (16, 32, 64, 128),
        "BLOCK_N": (32, 64, 128, 256),
        "BLOCK_K": (32, 64, 128),
        "num_warps": (4, 8),
        "num_stages": (2, 3, 4),
    },
    "dx": {
        "BLOCK_M": (16, 32, 64, 128),
        "BLOCK_N": (32, 64, 128, 256),
        "BLOCK_K": (32, 64, 128),
        "num_warps": (4, 8),
        "num_stages": (2, 3, 4),
    },
    "dw": {
        "BLOCK_M": (16, 32, 64, 128),
        "BLOCK_N": (64, 128),
        "BLOCK_K": (32, 64, 128),
        "SPLIT": (0, 1, 4),
        "num_warps": (4, 8),
        "num_stages": (2, 3),
    },
    "decode": {
        "BLOCK_N": (16, 32, 64, 128),
        "BLOCK_K": (64, 128, 256),
        "SPLIT_K": (0, 1, 2, 4, 8),
        "num_warps": (4,),
        "num_stages": (2, 3, 4),
    },
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="autotune the Triton kernels' launch configs for this GPU",
        description="Time candidate block sizes / warps / stages per kernel, shape bucket and dtype through the backend's own "
        "launch code and write the fastest to <config dir>/<gpu>.json, where the triton backend reads it before the shipped "
        "tables. The config dir is $RTL_KERNELS_CONFIG_DIR, else ~/.cache/rtl_kernels/configs. Run warmup() afterwards in serving processes.",
    )
    p.add_argument(
        "--linear", action="append", required=True, metavar="IN:OUT", help="a linear shape in_features:out_features (repeatable)"
    )
    p.add_argument("--rows", default="1,4,16,64,256,1024,4096", help="comma-separated row counts (default %(default)s)")
    p.add_argument("--tickets", type=int, default=8, help="number of tickets K (default %(default)s)")
    p.add_argument("--density", type=float, default=0.2, help="mask density of the random masks (default %(default)s)")
    p.add_argument("--dtype", action="append", choices=sorted(DTYPES), help="dtype(s) to tune (default bfloat16)")
    p.add_argument("--kernels", default="fwd,dx,dw,decode", help="comma-separated subset of fwd,dx,dw,decode (default all)")
    p.add_argument("--device", default="cuda", help="device (default cuda; cpu uses the Triton interpreter)")
    p.add_argument("--max-candidates", type=int, default=0, help="time at most this many candidates per kernel and bucket (0: all)")
    p.add_argument("--reps", type=int, default=10, help="timed repetitions per candidate on CPU (default %(default)s)")
    p.add_argument(
        "--output-dir", type=Path, help="directory for the table (default: $RTL_KERNELS_CONFIG_DIR, else ~/.cache/rtl_kernels/configs)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _parse_shape(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--linear: expected IN:OUT with two positive integers, got {text!r}") from None
    if a < 1 or b < 1:
        raise ValueError(f"--linear: expected positive sizes, got {text!r}")
    return a, b


def candidates(kernel: str, rows: int, limit: int = 0) -> list[dict]:
    """Candidate configs of ``kernel`` for ``rows`` rows (row tiles no taller than needed), at most ``limit``."""
    space = CANDIDATES[kernel]
    keys = list(space)
    out = []
    for values in itertools.product(*(space[k] for k in keys)):
        cfg = dict(zip(keys, values))
        if "BLOCK_M" in cfg and cfg["BLOCK_M"] > max(16, 1 << max(rows - 1, 0).bit_length()):
            continue
        out.append(cfg)
    if limit > 0 and len(out) > limit:
        step = len(out) / limit
        out = [out[int(i * step)] for i in range(limit)]
    return out


def _timer(device: torch.device, reps: int) -> Callable[[Callable[[], object]], float]:
    """Median ms of a closure, from :mod:`rtl_kernels.benchmarks.timing` (CUDA events with L2 flush on GPU)."""
    from ..benchmarks.timing import TimerConfig, time_rotating

    gpu = device.type == "cuda"
    config = TimerConfig(
        warmup_s=0.005 if gpu else 0.0,
        min_time_s=0.025 if gpu else 0.0,
        min_repeats=reps,
        max_repeats=max(reps, 1000 if gpu else reps),
        rounds=1,
    )
    return lambda fn: time_rotating(fn, [()], device, config).median_s * 1e3


def _runner(kernel: str, cfg: dict, problem: dict) -> Callable[[], object]:
    """The serving launch of ``kernel`` with ``cfg`` on ``problem`` (the backend's own recipe; imports Triton lazily)."""
    from ..backends import triton_backend as tb
    from ..kernels.triton.geometry import linear_geometry

    x, w, dy, masks, plan = problem["x"], problem["w"], problem["dy"], problem["masks"], problem["plan"]
    if kernel == "dw":
        return tb.dw_launch(cfg, dy, x, masks, plan, linear_geometry(x.shape[0], x.shape[1], w.shape[0]), w.dtype)
    return tb.linear_launch(kernel, cfg, dy if kernel == "dx" else x, w, masks, plan)


def _problem(rows: int, kin: int, n: int, k: int, density: float, dtype: torch.dtype, device: torch.device) -> dict:
    from ..masks.packed import pack_masks
    from ..routing_plans.plan import make_plan

    gen = torch.Generator().manual_seed(0)
    masks = pack_masks((torch.rand(k, n, kin, generator=gen) < density).to(device))
    routes = torch.randint(0, k, (rows,), generator=gen).to(device)
    return {
        "x": torch.randn(rows, kin, generator=gen).to(dtype).to(device),
        "w": torch.randn(n, kin, generator=gen).to(dtype).to(device),
        "dy": torch.randn(rows, n, generator=gen).to(dtype).to(device),
        "masks": masks,
        "plan": make_plan(routes, k),
    }


def tune_table(args: argparse.Namespace) -> dict:
    """Time every candidate and return the updated table for this device."""
    from ..backends.triton_backend import is_available
    from ..kernels.triton import configs

    device = torch.device(args.device)
    if not is_available(device):
        raise ValueError(f"--device: the triton backend is not available on {device} (CPU needs TRITON_INTERPRET=1)")
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    bad = [k for k in kernels if k not in CANDIDATES]
    if bad:
        raise ValueError(f"--kernels: expected a subset of {sorted(CANDIDATES)}, got {bad}")
    rows_list = sorted({int(r) for r in args.rows.split(",") if r.strip()})
    if not rows_list or rows_list[0] < 1:
        raise ValueError(f"--rows: expected positive integers, got {args.rows!r}")
    shapes = [_parse_shape(s) for s in args.linear]
    dtypes = [DTYPES[d] for d in (args.dtype or ["bfloat16"])]
    stem = configs.device_key(device)
    table = _load_existing(args.output_dir, stem) or {"configs": {}}
    table["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "Triton interpreter (CPU)"
    limits = configs.dispatch_limits(device)
    timer = _timer(device, args.reps)
    jobs = [(d, s, r, kern) for d in dtypes for s in shapes for r in rows_list for kern in kernels]
    for dtype, (kin, n), rows, kernel in tqdm(jobs, disable=args.quiet, desc="tune"):
        if kernel == "decode" and rows > limits["decode_max_rows"]:
            continue
        problem = _problem(rows, kin, n, args.tickets, args.density, dtype, device)
        best, best_ms = None, math.inf
        for cfg in candidates(kernel, rows, args.max_candidates):
            try:
                ms = timer(_runner(kernel, cfg, problem))
            except Exception as exc:  # e.g. out of shared memory for this tile shape
                logger.debug("config %s of %s failed: %s", cfg, kernel, exc)
                continue
            if ms < best_ms:
                best, best_ms = cfg, ms
        if best is None:
            logger.warning("no working config for %s %s rows=%d shape=%dx%d", kernel, dtype, rows, kin, n)
            continue
        # same keys the backend looks up: (rows, output features, reduction); dW as (rows, N, K_in)
        bucket = configs.shape_bucket(rows, kin, n) if kernel == "dx" else configs.shape_bucket(rows, n, kin)
        entry = table["configs"].setdefault(kernel, {}).setdefault(configs.dtype_key(dtype), {})
        entry[bucket] = {**best, "ms": round(best_ms, 5)}
        logger.info("%s %s %s: %s (%.4f ms)", kernel, configs.dtype_key(dtype), bucket, best, best_ms)
    import triton

    table["triton_version"] = triton.__version__
    table["torch_version"] = torch.__version__
    return table


def _load_existing(output_dir: Path | None, stem: str) -> dict:
    import json

    from ..kernels.triton import configs

    path = (output_dir or configs.user_config_dir()) / f"{stem}.json"
    if path.is_file():
        return json.loads(path.read_text())
    return json.loads(json.dumps(configs.load_table(stem)))  # a copy of what the backend reads now: tuning one shape keeps the rest


def run(args: argparse.Namespace) -> int:

    from ..kernels.triton import configs

    table = tune_table(args)
    stem = configs.device_key(torch.device(args.device))
    path = configs.write_table(stem, table, args.output_dir)
    n_entries = sum(len(v) for per_kernel in table["configs"].values() for v in per_kernel.values())
    print(f"wrote {n_entries} tuned entries to {path}")
    return 0
