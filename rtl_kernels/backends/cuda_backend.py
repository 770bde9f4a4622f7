"""CUDA backend: a C++ routed GEMV for small batches (decode), weight streamed once per call.

The kernel (``csrc/cuda/routed_gemv.cu``) handles up to ``max_rows`` (64) rows in fp16 / bf16 /
fp32; the backward pass uses the reference per-ticket ops (no backward kernel yet). The
extension is built on first use, only when torch has CUDA and a CUDA toolkit is installed.
"""

from __future__ import annotations

import torch

from . import extension, reference
from .registry import Backend, Call, register_backend

DTYPES = (torch.float16, torch.bfloat16)
MAX_ROWS = 64  # rtl_cuda::kMaxRows


def is_available(device: torch.device) -> bool:
    """CUDA devices with a buildable extension."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.version.cuda is not None and extension.load_cuda() is not None


def supports(call: Call) -> bool:
    return call.op == "linear" and call.device.type == "cuda" and call.dtype in DTYPES and 1 <= call.rows <= MAX_ROWS


def linear_forward(x, weight, masks, plan, bias):
    ext = extension.load_cuda()
    if ext is None:
        raise RuntimeError("backend 'cuda': the CUDA extension is not available on this machine")
    if x.shape[0] == 0 or x.shape[0] > ext.max_rows:
        return reference.linear_forward(x, weight, masks, plan, bias)
    return ext.forward(x, weight, masks.bits.contiguous(), plan.perm.contiguous(), plan.offsets.contiguous(), bias)


register_backend(
    Backend(
        name="cuda",
        is_available=is_available,
        # below the Triton kernels until GPU timings say otherwise (no GPU measurement yet)
        priority=lambda device: 5 if device.type == "cuda" else -1,
        supports=supports,
        linear_forward=linear_forward,
        linear_backward=reference.linear_backward,
    )
)
