"""Timer: warm-up, many repeats, median, inputs rotated so caches do not flatter the result.

CPU: ``time.perf_counter`` around each call. CUDA: one pair of CUDA events per call, with the L2
cache flushed (a large buffer zeroed) before each call, like ``triton.testing.do_bench``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class TimerConfig:
    """How long to warm up and measure (seconds), and the repeat bounds."""

    warmup_s: float = 0.05
    min_time_s: float = 0.2
    min_repeats: int = 5
    max_repeats: int = 200
    flush_l2: bool = True


@dataclass(frozen=True)
class Timing:
    """Per-call times in seconds: median (the reported figure), spread, and how many repeats."""

    median_s: float
    p10_s: float
    p90_s: float
    mean_s: float
    min_s: float
    repeats: int
    method: str

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(samples: Sequence[float], method: str) -> Timing:
    """Median, 10th/90th percentiles, mean and minimum of per-call times."""
    if not samples:
        raise ValueError("samples: expected at least one time, got none")
    ordered = sorted(samples)
    n = len(ordered)
    return Timing(
        median_s=statistics.median(ordered),
        p10_s=ordered[int(0.1 * (n - 1))],
        p90_s=ordered[round(0.9 * (n - 1))],
        mean_s=statistics.fmean(ordered),
        min_s=ordered[0],
        repeats=n,
        method=method,
    )


def time_rotating(fn: Callable[..., object], inputs: Sequence[tuple], device: torch.device, config: TimerConfig = TimerConfig()) -> Timing:
    """Time ``fn(*inputs[i % len(inputs)])`` call by call after a warm-up; returns the summary."""
    if not inputs:
        raise ValueError("inputs: expected at least one argument tuple to rotate through, got none")
    if device.type == "cuda":
        return _time_cuda(fn, inputs, device, config)
    return _time_host(fn, inputs, config)


def _time_host(fn: Callable[..., object], inputs: Sequence[tuple], config: TimerConfig) -> Timing:
    n = len(inputs)
    i = 0
    start = time.perf_counter()
    while True:  # warm-up: at least one pass over every input set
        fn(*inputs[i % n])
        i += 1
        if i >= n and time.perf_counter() - start >= config.warmup_s:
            break
    samples: list[float] = []
    begin = time.perf_counter()
    while len(samples) < config.max_repeats and (len(samples) < config.min_repeats or time.perf_counter() - begin < config.min_time_s):
        args = inputs[i % n]
        t0 = time.perf_counter()
        fn(*args)
        samples.append(time.perf_counter() - t0)
        i += 1
    return summarize(samples, "perf_counter")


def _time_cuda(fn: Callable[..., object], inputs: Sequence[tuple], device: torch.device, config: TimerConfig) -> Timing:
    n = len(inputs)
    flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=device) if config.flush_l2 else None
    i = 0
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    while True:
        fn(*inputs[i % n])
        i += 1
        if i >= n:
            torch.cuda.synchronize(device)
            if time.perf_counter() - start >= config.warmup_s:
                break
    # estimate the per-call time to pick the repeat count, then record events for every call
    t0 = time.perf_counter()
    for j in range(n):
        fn(*inputs[(i + j) % n])
    torch.cuda.synchronize(device)
    est = max((time.perf_counter() - t0) / n, 1e-6)
    reps = int(min(config.max_repeats, max(config.min_repeats, config.min_time_s / est)))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for begin, end in events:
        if flush is not None:
            flush.zero_()
        args = inputs[i % n]
        begin.record()
        fn(*args)
        end.record()
        i += 1
    torch.cuda.synchronize(device)
    return summarize([b.elapsed_time(e) / 1e3 for b, e in events], "cuda_events" + ("+l2flush" if flush is not None else ""))
