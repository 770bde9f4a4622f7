"""What ``/proc/cpuinfo`` says about this CPU: its model name and the vector ISA level the kernels use."""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

# the CPU extension's ISA names (csrc/cpu/binding.cpp), best first, with the flags each needs
ISA_FLAGS = (
    ("avx512_bf16", {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "fma"}),
    ("avx512", {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"}),
    ("avx2", {"avx2", "fma"}),
)


@cache
def fields() -> dict[str, str]:
    """The first processor's ``key: value`` lines (empty where there is no /proc/cpuinfo)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                key, val = (s.strip() for s in line.split(":", 1))
                info.setdefault(key, val)
    except OSError:
        pass
    return info


def cpu_model() -> str:
    """The CPU model name (falls back to ``platform.processor()``)."""
    return fields().get("model name") or platform.processor() or platform.machine()


def isa_level() -> str:
    """The best ISA the CPU kernels can run here, by the extension's names (``generic`` without AVX2)."""
    flags = set(fields().get("flags", "").split())
    return next((name for name, need in ISA_FLAGS if need <= flags), "generic")
