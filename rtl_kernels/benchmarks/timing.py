"""Timer: warm-up, many repeats, median, inputs rotated so caches do not flatter the result.

Several approaches of one case are timed *interleaved*: the measurement is split into rounds and
every round times each approach in turn, so a burst of load from other processes hits all of them
alike instead of whichever was running at the time.

CPU: ``time.perf_counter`` around each call, or with ``clock="cpu"`` the process CPU time (only
meaningful with one torch thread: on a shared machine it leaves out time spent descheduled). CUDA: one pair of CUDA events per call, with the L2
cache flushed (a large buffer zeroed) before each call, like ``triton.testing.do_bench``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

FLUSH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class TimerConfig:
    """Warm-up and measured seconds per approach, repeat bounds, rounds of interleaving."""

    warmup_s: float = 0.05
    min_time_s: float = 0.2
    min_repeats: int = 5
    max_repeats: int = 200
    flush_l2: bool = True
    rounds: int = 4
    clock: str = "wall"  # CPU only: "cpu" = process CPU time (with one thread: time not spent descheduled)
    cpu_flush_bytes: int = 0  # CPU only: zero a buffer this large before each call to evict the caches (0: off)


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


class _Rotation:
    """One callable, the input sets it cycles through, and its samples so far."""

    def __init__(
        self, fn: Callable[..., object], inputs: Sequence[tuple], device: torch.device, flush: torch.Tensor | None, clock: str
    ) -> None:
        self.fn, self.inputs, self.device, self.flush, self.clock = fn, inputs, device, flush, clock
        self.i = 0
        self.samples: list[float] = []
        self.estimate_s = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _next(self) -> tuple:
        args = self.inputs[self.i % len(self.inputs)]
        self.i += 1
        return args

    def warmup(self, seconds: float) -> None:
        """At least one pass over every input set and ``seconds``; estimates the per-call time."""
        start = time.perf_counter()
        calls = 0
        while calls < len(self.inputs) or time.perf_counter() - start < seconds:
            self.fn(*self._next())
            calls += 1
            if calls >= len(self.inputs):
                self._sync()
        self._sync()
        t0 = time.perf_counter()
        for _ in range(len(self.inputs)):
            self.fn(*self._next())
        self._sync()
        self.estimate_s = max((time.perf_counter() - t0) / len(self.inputs), 1e-7)

    def measure(self, calls: int) -> None:
        """Time ``calls`` more calls, one sample each."""
        if self.device.type == "cuda":
            events = []
            for _ in range(calls):
                if self.flush is not None:
                    self.flush.zero_()
                args = self._next()
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                self.fn(*args)
                end.record()
                events.append((begin, end))
            torch.cuda.synchronize(self.device)
            self.samples += [b.elapsed_time(e) / 1e3 for b, e in events]
            return
        clock = time.process_time if self.clock == "cpu" else time.perf_counter
        for _ in range(calls):
            if self.flush is not None:
                self.flush.zero_()
            args = self._next()
            t0 = clock()
            self.fn(*args)
            self.samples.append(clock() - t0)


def time_interleaved(
    fns: Mapping[str, Callable[..., object]], inputs: Sequence[tuple], device: torch.device, config: TimerConfig = TimerConfig()
) -> dict[str, Timing]:
    """Time each ``fn(*inputs[i % len(inputs)])`` call by call, in interleaved rounds; summary per name."""
    if not inputs:
        raise ValueError("inputs: expected at least one argument tuple to rotate through, got none")
    if config.clock not in ("wall", "cpu"):
        raise ValueError(f"clock: expected 'wall' or 'cpu', got {config.clock!r}")
    flush = None
    if device.type == "cuda" and config.flush_l2:
        flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=device)
    elif device.type != "cuda" and config.cpu_flush_bytes > 0:
        flush = torch.empty(config.cpu_flush_bytes // 4, dtype=torch.int32)
    rotations = {name: _Rotation(fn, inputs, device, flush, config.clock) for name, fn in fns.items()}
    for rot in rotations.values():
        rot.warmup(config.warmup_s)
    rounds = max(1, config.rounds)
    for r in range(rounds):
        for rot in rotations.values():
            want = min(config.max_repeats, max(config.min_repeats, int(config.min_time_s / rot.estimate_s)))
            share = want * (r + 1) // rounds - want * r // rounds  # split ``want`` calls over the rounds
            rot.measure(share)
    if device.type == "cuda":
        method = "cuda_events" + ("+l2flush" if flush is not None else "")
    else:
        method = ("process_time" if config.clock == "cpu" else "perf_counter") + ("+cacheflush" if flush is not None else "")
    return {name: summarize(rot.samples, method) for name, rot in rotations.items()}


def time_rotating(fn: Callable[..., object], inputs: Sequence[tuple], device: torch.device, config: TimerConfig = TimerConfig()) -> Timing:
    """Time one callable (see :func:`time_interleaved`)."""
    return time_interleaved({"fn": fn}, inputs, device, config)["fn"]


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time, "thread": time.thread_time}


def time_rounds(fns: Mapping[str, Callable[[], object]], rounds: int, min_round_s: float, clock: str = "wall") -> dict[str, list[float]]:
    """Seconds per call of each function in each round; a round runs every function back to back.

    For paired ratios: a ratio taken within one round compares like with like even when a shared
    machine's speed drifts between rounds. Each function repeats enough calls to fill ``min_round_s``
    (``clock``: ``"wall"``, ``"cpu"`` process time or ``"thread"`` CPU time).
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock: expected one of {sorted(CLOCKS)}, got {clock!r}")
    now = CLOCKS[clock]
    reps = {}
    for name, fn in fns.items():
        fn()
        t0 = now()
        fn()
        reps[name] = max(1, int(min_round_s / max(now() - t0, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = now()
            for _ in range(reps[name]):
                fn()
            times[name].append((now() - t0) / reps[name])
    return times
