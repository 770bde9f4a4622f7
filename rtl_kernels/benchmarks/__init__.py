"""Kernel benchmark harness behind ``rtl-kernels bench``: our backends against every honest baseline.

Modules: ``cases`` (axes and presets), ``problem`` (generated data), ``baselines`` (approaches),
``timing`` (timer), ``probes`` (bandwidth and matmul peak), ``roofline`` (bytes and FLOPs),
``runner`` (one run), ``report`` (JSON, Markdown, plots), ``machine`` (hardware and versions).
"""

from __future__ import annotations

from .cases import PRESETS, Case, build_cases
from .runner import RunConfig, run_benchmark
from .timing import TimerConfig

__all__ = ["PRESETS", "Case", "RunConfig", "TimerConfig", "build_cases", "run_benchmark"]
