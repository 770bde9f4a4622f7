"""Triton kernels for the routed masked ops (grouped, decode, weight-gradient and conv implicit GEMM)."""
