"""One description of the GEMM each routed op computes: a linear layer is a 1×1 conv on 1×1 images."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...conv_params import conv_output_size


@dataclass(frozen=True)
class Geometry:
    """Sizes of a (grouped) conv2d; ``is_linear`` marks the 1×1-on-1×1 case whose rows need no pixel math."""

    batch: int
    c_in: int
    h: int
    w: int
    c_out: int
    ho: int
    wo: int
    kh: int = 1
    kw: int = 1
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    is_linear: bool = False

    @property
    def cig(self) -> int:
        return self.c_in // self.groups

    @property
    def cog(self) -> int:
        return self.c_out // self.groups

    @property
    def row_len(self) -> int:
        """Columns of the weight's ``[C_out, R]`` view (the packed-mask row length)."""
        return self.cig * self.kh * self.kw

    def constexprs(self) -> dict:
        return {
            "KH": self.kh,
            "KW": self.kw,
            "SH": self.stride[0],
            "SW": self.stride[1],
            "PH": self.padding[0],
            "PW": self.padding[1],
            "DH": self.dilation[0],
            "DW": self.dilation[1],
            "IS_LINEAR": self.is_linear,
        }


def linear_geometry(rows: int, in_features: int, out_features: int) -> Geometry:
    return Geometry(batch=rows, c_in=in_features, h=1, w=1, c_out=out_features, ho=1, wo=1, is_linear=True)


def conv_geometry(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups: int) -> Geometry:
    b, c, h, w = x.shape
    co, _, kh, kw = weight.shape
    ho = conv_output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = conv_output_size(w, kw, stride[1], padding[1], dilation[1])
    return Geometry(b, c, h, w, co, ho, wo, kh, kw, tuple(stride), tuple(padding), tuple(dilation), groups, False)


def strides4(t: torch.Tensor) -> tuple[int, int, int, int]:
    """(batch, channel, h, w) element strides; a 2-D ``[rows, features]`` tensor has no pixel strides."""
    if t.dim() == 2:
        return t.stride(0), t.stride(1), 0, 0
    return tuple(t.stride())
