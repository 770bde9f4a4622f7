"""Conv2d semantics shared by every layer: the static arguments, the output size and layout.

The lowest layer of the package (it imports only torch): the public op, the custom op's fake,
the backends and the Triton geometry all take the formula from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ConvParams:
    """Static conv2d arguments (already normalised to pairs)."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length along one spatial dim, as ``F.conv2d`` computes it."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_output_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when ``x`` is channels_last but not plain contiguous, else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
