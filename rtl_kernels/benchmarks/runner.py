"""Run a benchmark: probes, then every case x approach (checked against float64, then timed)."""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from .baselines import Approach, Unsupported, approach_factories
from .cases import Case, build_cases
from .machine import machine_info, utc_now, versions
from .peak import cpu_peak
from .probes import run_probes
from .problem import Problem, build_problem, reference_rows, relative_error
from .roofline import Geometry, approach_bytes, approach_flops, geometry
from .timing import TimerConfig, Timing, time_interleaved

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TOLERANCE = {"float32": 1e-3, "float16": 5e-3, "bfloat16": 2e-2}  # CONTRACT.md, ‖out − ref‖ / ‖ref‖


@dataclass
class RunConfig:
    """Everything a run depends on (stored in the result file so the run can be reproduced)."""

    preset: str = "quick"
    overrides: dict[str, list] = field(default_factory=dict)
    grid: bool = False
    device: str = "cpu"
    approaches: list[str] | None = None  # None: all
    compile_mode: str = "default"
    timer: TimerConfig = field(default_factory=TimerConfig)
    rotations: int = 4
    seed: int = 0
    copy_bytes: int = 256 << 20
    matmul_size: int = 2048
    tile: tuple[int, int] | None = None
    conv_shape: str | None = None
    time_budget_s: float | None = None  # stop starting new cases after this many seconds (None: run all)

    def as_dict(self) -> dict:
        return asdict(self)


def _select(factories: dict[str, Callable], wanted: Sequence[str] | None) -> dict[str, Callable]:
    if wanted is None:
        return factories
    unknown = [w for w in wanted if w not in factories]
    if unknown:
        raise ValueError(f"approaches: expected names among {list(factories)}, got unknown {unknown}")
    return {name: factories[name] for name in factories if name in wanted}


def _check(approach: Approach, problem: Problem, ref: tuple[int, torch.Tensor]) -> tuple[float | None, bool | None]:
    """Relative error of the first rows against float64 and whether it is within tolerance."""
    if approach.kind == "dense":
        return None, None  # ignores routes: a time floor, not an answer
    n, expected = ref
    out = approach.fn(*problem.inputs[0])
    err = relative_error(out[:n], expected)
    return err, err <= TOLERANCE[problem.case.dtype]


def _figures(approach: Approach, timing: Timing, geo: Geometry, dtype: str, probes: dict) -> dict:
    nbytes, flops = approach_bytes(approach.kind, geo), approach_flops(approach.kind, geo)
    t_bw = nbytes / probes["bandwidth_Bps"]
    # the compute bound: the CPU's physical peak (ISA x clock x cores) where known, else the matmul probe
    t_flop = flops / probes.get("peak_flops", probes["matmul_flops"])[dtype]
    return {
        "kind": approach.kind,
        "time": timing.as_dict(),
        "median_us": timing.median_s * 1e6,
        "bytes": nbytes,
        "flops": flops,
        "bw_time_us": t_bw * 1e6,
        "flop_time_us": t_flop * 1e6,
        "pct_bw_roofline": 100.0 * t_bw / timing.median_s,
        "pct_compute_peak": 100.0 * t_flop / timing.median_s,
        "pct_matmul_peak": 100.0 * flops / probes["matmul_flops"][dtype] / timing.median_s,
        "footprint_bytes": approach.footprint_bytes,
    }


def _failure(exc: Exception) -> str:
    return f"failed here: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def _time_all(ready: dict, problem: Problem, config: RunConfig, results: dict) -> dict[str, Timing]:
    """Interleaved timings; if that fails, each approach alone, recording the ones that fail (e.g. out of memory)."""
    device = torch.device(config.device)
    fns = {name: entry[0].fn for name, entry in ready.items()}
    if not fns:
        return {}
    try:
        return time_interleaved(fns, problem.inputs, device, config.timer)
    except (RuntimeError, NotImplementedError, ValueError, TypeError):
        timings = {}
        for name, fn in fns.items():
            try:
                timings[name] = time_interleaved({name: fn}, problem.inputs, device, config.timer)[name]
            except (RuntimeError, NotImplementedError, ValueError, TypeError) as exc:
                logger.info("%s on %s failed while timed: %s", name, problem.case.key(), exc)
                results[name] = {"skipped": _failure(exc)}
        return timings


def run_case(case: Case, factories: dict[str, Callable[[Problem], Approach]], config: RunConfig, probes: dict) -> dict:
    """Build one case's data, check every approach against float64, then time them interleaved."""
    device = torch.device(config.device)
    problem = build_problem(case, device, rotations=config.rotations, seed=config.seed)
    ref = reference_rows(problem)
    results: dict[str, dict] = {}
    ready: dict[str, tuple[Approach, float | None, bool | None]] = {}
    with torch.inference_mode():
        for name, make in factories.items():
            try:
                approach = make(problem)
                ready[name] = (approach, *_check(approach, problem, ref))
            except Unsupported as exc:
                results[name] = {"skipped": str(exc)}
            except (RuntimeError, NotImplementedError, ValueError, TypeError) as exc:
                logger.info("%s on %s failed: %s", name, case.key(), exc)
                results[name] = {"skipped": _failure(exc)}
        timings = _time_all(ready, problem, config, results)
    geo = geometry(problem)
    for name, (approach, err, correct) in ready.items():
        if name not in timings:
            continue
        results[name] = {**_figures(approach, timings[name], geo, case.dtype, probes), "rel_err": err, "correct": correct}
    record = {
        "key": case.key(),
        "case": case.as_dict(),
        "active_tickets": geo.active_tickets,
        "rotations": len(problem.inputs),
        "results": {name: results[name] for name in factories},
    }
    del ready, problem
    gc.collect()
    return record


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def run_benchmark(config: RunConfig, *, progress: bool = False, command: str = "") -> dict:
    """Probe the machine, run every case, and return the result document (see report.py)."""
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: expected an available device, got {config.device!r} but CUDA is not available")
    cases = build_cases(config.preset, config.overrides, grid=config.grid, tile=config.tile, conv_shape=config.conv_shape)
    factories, excluded = approach_factories(device, compile_mode=config.compile_mode)
    factories = _select(factories, config.approaches)
    started, load_start = utc_now(), _load_average()
    dtypes = sorted({c.dtype for c in cases})
    probes = run_probes(device, dtypes, copy_bytes=config.copy_bytes, matmul_size=config.matmul_size, config=config.timer).as_dict()
    if device.type == "cpu":
        peak = cpu_peak(torch.get_num_threads())
        probes.update(
            peak_flops={d: peak.flops[d] for d in dtypes if d in peak.flops}, peak=peak.as_dict(), peak_description=peak.describe()
        )
    logger.info(
        "probes: %.1f GB/s copy, matmul %s",
        probes["bandwidth_Bps"] / 1e9,
        {k: f"{v / 1e9:.0f} GFLOP/s" for k, v in probes["matmul_flops"].items()},
    )
    iterator = cases
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(cases, desc="bench", unit="case")
    deadline = None if config.time_budget_s is None else time.monotonic() + config.time_budget_s
    records = []
    for case in iterator:
        if deadline is not None and time.monotonic() > deadline:
            logger.warning("time budget of %.0f s spent: %d of %d cases run", config.time_budget_s, len(records), len(cases))
            break
        records.append(run_case(case, factories, config, probes))
    machine = machine_info(device)
    machine["load_average"] = [load_start, _load_average()]  # 1-minute load: others sharing the machine skew timings
    return {
        "schema": SCHEMA_VERSION,
        "command": command or f"rtl-kernels bench --preset {config.preset}",
        "date": started.isoformat(),
        "finished": utc_now().isoformat(),
        "machine": machine,
        "versions": versions(),
        "config": config.as_dict(),
        "probes": probes,
        "backends": {"timed": [n.removeprefix("rtl:") for n in factories if n.startswith("rtl:")], "excluded": excluded},
        "approaches": list(factories),
        "cases": records,
        "cases_planned": len(cases),
    }
