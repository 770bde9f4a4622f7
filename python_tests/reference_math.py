"""Float64 oracles written independently of the library (einsum / F.conv2d per sample)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

TOLERANCE = {torch.float32: 1e-3, torch.float16: 5e-3, torch.bfloat16: 2e-2, torch.float64: 1e-10}


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖out − ref‖ / ‖ref‖`` in float64 (0 when both are empty or zero)."""
    out, ref = out.detach().double(), ref.detach().double()
    diff = torch.linalg.vector_norm(out - ref)
    norm = torch.linalg.vector_norm(ref)
    if norm == 0:
        return float(diff)
    return float(diff / norm)


def linear_ref(x: torch.Tensor, weight: torch.Tensor, masks: torch.Tensor, routes: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``y[m] = x[m] @ (W ⊙ masks[routes[m]]).T + b`` for rows ``x: [M, Kin]`` (float64)."""
    w = weight.double().unsqueeze(0) * masks[routes].double()
    y = torch.einsum("mi,mni->mn", x.double(), w)
    return y if bias is None else y + bias.double()


def conv_ref(x, weight, masks, routes, bias, stride, padding, dilation, groups) -> torch.Tensor:
    """Per-image float64 conv with that image's masked filter."""
    outs = [
        F.conv2d(
            x[b : b + 1].double(),
            weight.double() * masks[int(routes[b])],
            None if bias is None else bias.double(),
            stride,
            padding,
            dilation,
            groups,
        )
        for b in range(x.shape[0])
    ]
    return torch.cat(outs)
