"""Physical compute peak of a CPU from its ISA: FMA pipes x fp32 lanes per pipe x 2 FLOPs x clock x cores.

The roofline divides FLOPs by this figure rather than by a measured ``torch.mm`` rate (which says
how good the BLAS is, not what the chip can do, and showed >100% where our kernels beat MKL).
The flags come from ``/proc/cpuinfo``; the FMA pipe count and width per microarchitecture are
not in it, so they come from a small table (vendor, family, ISA). The clock is the highest one the
OS reports (``lscpu``'s max MHz, cpufreq's maximum, else cpuinfo's current MHz); a CPU that boosts
above it can exceed 100%, and the report names the clock and where it came from.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import cpuinfo


@dataclass(frozen=True)
class CpuPeak:
    """Per dtype FLOP/s and how they were derived."""

    flops: dict[str, float]
    clock_hz: float
    clock_source: str
    cores: int
    fma_pipes: int
    fp32_lanes_per_pipe: int
    bf16_flops_per_cycle: int  # per core
    isa: str

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.fma_pipes} FMA pipes x {self.fp32_lanes_per_pipe} fp32 lanes x 2 x {self.clock_hz / 1e9:.2f} GHz ({self.clock_source}) "
            f"x {self.cores} cores ({self.isa})"
        )


def _clock(info: dict[str, str]) -> tuple[float, str]:
    if shutil.which("lscpu"):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"CPU max MHz:\s*([\d.]+)", out)
        if m and float(m.group(1)) > 0:
            return float(m.group(1)) * 1e6, "lscpu max MHz"
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz * 1e3, "cpufreq max"
    except (OSError, ValueError):
        pass
    if "cpu MHz" in info:
        return float(info["cpu MHz"]) * 1e6, "cpuinfo MHz"
    return 0.0, "unknown"


def pipes_and_lanes(vendor: str, family: int, flags: set[str]) -> tuple[int, int, str]:
    """(FMA pipes per core, fp32 lanes per pipe, ISA name) for a vendor / family / flag set."""
    avx512 = "avx512f" in flags
    if vendor == "AuthenticAMD":
        # Zen 5 (family 0x1a): two full-width 512-bit FMA pipes; Zen 2-4: two 256-bit pipes (AVX-512 double-pumped)
        if family >= 0x1A:
            return 2, 16 if avx512 else 8, "avx512" if avx512 else "avx2"
        return 2, 8, "avx512 (256-bit pipes)" if avx512 else "avx2"
    if avx512:
        return 2, 16, "avx512"  # server Xeons since Skylake-SP: two 512-bit FMA units
    if "fma" in flags:
        return 2, 8, "avx2"
    return 1, 4, "sse"


def cpu_peak(threads: int) -> CpuPeak:
    """The physical fp32/bf16 peak of ``threads`` cores of this CPU."""
    info = cpuinfo.fields()
    flags = set(info.get("flags", "").split())
    family = int(info.get("cpu family", "0") or 0)
    pipes, lanes, isa = pipes_and_lanes(info.get("vendor_id", ""), family, flags)
    clock, source = _clock(info)
    fp32_per_cycle = pipes * lanes * 2
    if "amx_bf16" in flags:
        bf16_per_cycle, isa = 1024, isa + " + AMX"  # one AMX tile unit: 1024 bf16 FLOPs per cycle
    elif "avx512_bf16" in flags:
        bf16_per_cycle, isa = 2 * fp32_per_cycle, isa + " + AVX512-BF16"  # vdpbf16ps: two bf16 products per fp32 lane
    else:
        bf16_per_cycle = fp32_per_cycle
    fp16_per_cycle = 2 * fp32_per_cycle if "avx512_fp16" in flags else fp32_per_cycle
    per_core = {"float32": fp32_per_cycle, "bfloat16": bf16_per_cycle, "float16": fp16_per_cycle}
    return CpuPeak(
        flops={k: v * clock * threads for k, v in per_core.items()},
        clock_hz=clock,
        clock_source=source,
        cores=threads,
        fma_pipes=pipes,
        fp32_lanes_per_pipe=lanes,
        bf16_flops_per_cycle=bf16_per_cycle,
        isa=isa,
    )
