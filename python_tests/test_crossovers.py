"""The cpu backend's crossover table: one measured set per machine class, and which set a machine reads."""

from __future__ import annotations

import torch

from rtl_kernels import cpuinfo
from rtl_kernels.backends import cpu_backend, crossovers
from rtl_kernels.nn import delta

LIMITS = {
    "linear": {"direct_rows_per_ticket": True, "backward_direct_rows_per_ticket": True, "gemm_max_rows_one_ticket": False},
    "conv2d": {"kernel_max_images_per_ticket": True, "backward_kernel_max_images_per_ticket": True},
    "delta_conv2d": {"per_ticket_min_macs_per_ticket_channel": True},
}


def _is_limit(v) -> bool:
    return v is None or (isinstance(v, int) and v >= 0)


def test_every_stored_set_is_complete_and_the_default_exists():
    doc = crossovers.table()
    assert doc["default"] in doc["machines"]
    for key, entry in doc["machines"].items():
        assert " / " in key, key
        for op, keys in LIMITS.items():
            assert entry[op]["measured"], (key, op)
            for name, per_dtype in keys.items():
                v = entry[op][name]
                if per_dtype:
                    assert set(v) == {"float32", "bfloat16"} and all(_is_limit(x) for x in v.values()), (key, name, v)
                else:
                    assert _is_limit(v), (key, name, v)


def test_a_machine_reads_its_own_set_else_one_of_its_isa_else_the_default():
    doc = {
        "default": "Intel X / avx512_bf16",
        "machines": {"Intel X / avx512_bf16": {"id": 1}, "AMD Y / avx512_bf16": {"id": 2}, "AMD Z / avx2": {"id": 3}},
    }
    assert crossovers.select(doc, "AMD Y / avx512_bf16") == {"id": 2}
    assert crossovers.select(doc, "Intel W / avx2") == {"id": 3}  # same ISA level
    assert crossovers.select(doc, "Arm N / generic") == {"id": 1}  # nothing alike: the default


def test_the_key_is_this_cpus_model_and_isa_level():
    assert crossovers.machine_key() == f"{cpuinfo.cpu_model()} / {cpuinfo.isa_level()}"
    assert crossovers.machine_key("M", "avx2") == "M / avx2"
    assert cpuinfo.isa_level() in {"generic", *(name for name, _ in cpuinfo.ISA_FLAGS)}


def test_the_backend_runs_on_this_machines_set():
    entry = crossovers.current()
    want = {getattr(torch, n): crossovers.NO_LIMIT if v is None else v for n, v in entry["linear"]["direct_rows_per_ticket"].items()}
    assert cpu_backend.DIRECT_ROWS_PER_TICKET == want
    one = entry["linear"]["gemm_max_rows_one_ticket"]
    assert cpu_backend.GEMM_MAX_ROWS_ONE_TICKET == (crossovers.NO_LIMIT if one is None else one)
    conv = entry["conv2d"]["kernel_max_images_per_ticket"]
    assert cpu_backend.CONV_KERNEL_IMAGES_PER_TICKET == {
        getattr(torch, n): crossovers.NO_LIMIT if v is None else v for n, v in conv.items()
    }
    per_ticket = entry["delta_conv2d"]["per_ticket_min_macs_per_ticket_channel"]
    assert delta.PER_TICKET_MIN_MACS == {getattr(torch, n): crossovers.NO_LIMIT if v is None else v for n, v in per_ticket.items()}


def test_the_per_ticket_crossover_is_where_that_form_wins_from_then_on():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "cpu_crossovers.py"
    spec = importlib.util.spec_from_file_location("cpu_crossovers_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.first_win_onwards({1: (1, 2), 2: (2, 1), 4: (2, 3), 8: (3, 2), 16: (5, 3)}) == 8  # a noisy early win is ignored
    assert bench.first_win_onwards({1: (2, 1), 2: (2, 1)}) == 1
    assert bench.first_win_onwards({1: (2, 1), 2: (1, 2)}) is None
