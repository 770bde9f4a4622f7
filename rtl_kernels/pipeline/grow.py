"""Adding tickets to a converted model later (a new data cluster gets its own ticket, the others stay as they are)."""

from __future__ import annotations

import torch
from torch import nn

from ..masks.packed import ones_bits
from ..models.norms import set_norm_tickets
from ..models.state import converted_layers


def add_tickets(model: nn.Module, count: int = 1) -> list[int]:
    """Grow K by ``count`` in place: existing masks are kept bit for bit, new tickets start all ones; returns the new ids.

    Routed BatchNorms grow too: existing tickets keep their running statistics bit for bit, new
    ones start from the pooled statistics of the old ones (recalibrate them with
    ``recalibrate_norms(model, subsets, tickets=new_ids)`` once their masks are found).

    Search masks for the new tickets with ``find_tickets(model, subsets, tickets=new_ids, ...)``;
    ticket ``k < K`` computes exactly what it computed before.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count: expected a positive int, got {count!r}")
    layers, ks = converted_layers(model)
    if len(ks) != 1:
        raise ValueError(f"model: expected every RTL layer to have the same K, got {sorted(ks)}")
    k_old = ks.pop()
    for layer in layers.values():
        extra = ones_bits(count, layer.weight.shape, device=layer.mask_bits.device)
        layer.mask_bits = torch.cat([layer.mask_bits, extra])
    set_norm_tickets(model, k_old + count)
    return list(range(k_old, k_old + count))
