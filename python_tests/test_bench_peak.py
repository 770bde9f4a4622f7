"""The roofline's compute peak comes from the ISA (FMA pipes x lanes x clock x cores), not from torch.mm."""

from rtl_kernels.benchmarks import peak


def test_pipes_and_lanes_by_microarchitecture():
    assert peak.pipes_and_lanes("AuthenticAMD", 0x1A, {"avx512f", "fma"})[:2] == (2, 16)  # Zen 5: full-width AVX-512
    assert peak.pipes_and_lanes("AuthenticAMD", 0x19, {"avx512f", "fma"})[:2] == (2, 8)  # Zen 4: 256-bit pipes
    assert peak.pipes_and_lanes("GenuineIntel", 6, {"avx512f", "fma"})[:2] == (2, 16)
    assert peak.pipes_and_lanes("GenuineIntel", 6, {"avx2", "fma"})[:2] == (2, 8)


def test_cpu_peak_is_pipes_times_lanes_times_clock_times_cores():
    p = peak.cpu_peak(2)
    assert p.cores == 2
    if p.clock_hz > 0:
        assert p.flops["float32"] == p.fma_pipes * p.fp32_lanes_per_pipe * 2 * p.clock_hz * 2
        assert p.flops["bfloat16"] >= p.flops["float32"]
    assert "FMA pipes" in p.describe()
