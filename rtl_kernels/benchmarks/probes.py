"""Machine probes run in the same benchmark run: achievable memory bandwidth and matmul peak.

The roofline columns divide each approach's bytes and FLOPs by these measured figures, not by
datasheet numbers, so they say how close an approach gets to what this machine really does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .timing import TimerConfig, time_rotating


@dataclass(frozen=True)
class Probes:
    """Measured copy bandwidth (bytes/s, read + write) and dense matmul rate (FLOP/s) per dtype."""

    bandwidth_Bps: float
    copy_bytes: int
    matmul_flops: dict[str, float]
    matmul_size: int

    def as_dict(self) -> dict:
        return asdict(self)


def dtype_of(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16`` (only the float dtypes the ops accept)."""
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
    if name not in table:
        raise ValueError(f"dtype: expected one of {sorted(table)}, got {name!r}")
    return table[name]


def bandwidth_probe(device: torch.device, nbytes: int, config: TimerConfig) -> float:
    """Bytes per second of a large device-memory copy (counting the read and the write)."""
    n = max(nbytes // 4, 1)
    src = [torch.ones(n, dtype=torch.float32, device=device), torch.full((n,), 2.0, device=device)]
    dst = torch.empty(n, dtype=torch.float32, device=device)
    timing = time_rotating(lambda s: dst.copy_(s), [(s,) for s in src], device, config)
    return 2 * n * 4 / timing.median_s


def matmul_probe(device: torch.device, dtype: torch.dtype, size: int, config: TimerConfig) -> float:
    """FLOP/s of a square ``torch.mm`` of side ``size`` in ``dtype``."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = [torch.randn(size, size, generator=gen).to(device=device, dtype=dtype) for _ in range(2)]
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    timing = time_rotating(lambda x: torch.mm(x, b), [(x,) for x in a], device, config)
    return 2.0 * size**3 / timing.median_s


def run_probes(device: torch.device, dtypes: list[str], *, copy_bytes: int, matmul_size: int, config: TimerConfig) -> Probes:
    """Both probes, the matmul one for every dtype the cases use."""
    with torch.inference_mode():
        bw = bandwidth_probe(device, copy_bytes, config)
        flops = {name: matmul_probe(device, dtype_of(name), matmul_size, config) for name in dtypes}
    return Probes(bandwidth_Bps=bw, copy_bytes=copy_bytes, matmul_flops=flops, matmul_size=matmul_size)
