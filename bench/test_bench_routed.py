"""pytest-benchmark view of the harness: every approach on a few fixed cases.

Run with ``pytest bench/ --benchmark-enable`` (the default configuration disables timing, and the
default test run does not collect bench/). Each test first checks the approach's output against
float64, then times it with the (x, routes) sets rotated between calls.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from rtl_kernels.benchmarks.baselines import Unsupported, approach_factories
from rtl_kernels.benchmarks.cases import Case
from rtl_kernels.benchmarks.problem import build_problem, reference_rows, relative_error
from rtl_kernels.benchmarks.runner import TOLERANCE

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FACTORIES, EXCLUDED = approach_factories(DEVICE)

CASES = [
    Case("linear", "1024x1024", 16, 8, 0.2, "unstructured", "uniform", "float32"),
    Case("linear", "1024x1024", 256, 8, 0.2, "tile", "zipf", "float32"),
    Case("linear", "1024x1024", 256, 8, 0.2, "unstructured", "uniform", "bfloat16"),
    Case("conv2d", "64x64x16x3", 8, 8, 0.2, "unstructured", "uniform", "float32"),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.key().replace("/", "-"))
def problem(request):
    return build_problem(request.param, DEVICE)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_approach(benchmark, problem, name):
    with torch.inference_mode():
        try:
            approach = FACTORIES[name](problem)
        except Unsupported as exc:
            pytest.skip(str(exc))
        n, ref = reference_rows(problem)
        out = approach.fn(*problem.inputs[0])
        if approach.kind != "dense":
            assert relative_error(out[:n], ref) <= TOLERANCE[problem.case.dtype]
        cycle = itertools.cycle(problem.inputs)
        benchmark.group = problem.case.key()
        benchmark.extra_info.update(case=problem.case.key(), footprint_bytes=approach.footprint_bytes, device=str(DEVICE))

        def call():
            approach.fn(*next(cycle))
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()

        benchmark(call)
