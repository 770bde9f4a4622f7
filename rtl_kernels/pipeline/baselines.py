"""Baselines run next to RTL: single-mask IMP (one ticket on all data) and multi-model IMP (K separate models).

Multi-model IMP's masks are RTL's extraction masks: extraction already trains every ticket on
its own copy from θ0, so the K independent searches are the same computation. The baseline
differs in retraining: K separate weight tensors, each trained on its subset alone.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from ..masks.packed import ones_bits
from ..models.norms import set_norm_tickets
from ..models.state import named_rtl_layers


def with_num_tickets(model: nn.Module, num_tickets: int) -> nn.Module:
    """A deep copy of a converted model with ``num_tickets`` all-ones masks per RTL layer (routed BatchNorms:
    every ticket with the pooled statistics)."""
    out = copy.deepcopy(model)
    for layer in named_rtl_layers(out).values():
        layer.mask_bits = ones_bits(num_tickets, layer.weight.shape, device=layer.weight.device)
    set_norm_tickets(out, num_tickets, keep=False)
    return out


def param_counts(masks: Mapping[str, torch.Tensor]) -> dict:
    """Prunable-weight accounting: kept per ticket, RTL's union of masks, K separate models, the dense count."""
    per_ticket = sum(m.reshape(m.shape[0], -1).sum(1) for m in masks.values())
    union = sum(int(m.any(0).sum()) for m in masks.values())
    dense = sum(m[0].numel() for m in masks.values())
    return {"per_ticket": [int(c) for c in per_ticket], "rtl_union": union, "multi_model": int(per_ticket.sum()), "dense": dense}


def dense_param_count(model: nn.Module) -> int:
    """Parameters that no mask covers (biases, BatchNorm, excluded layers): shared by every ticket."""
    prunable = {id(layer.weight) for layer in named_rtl_layers(model).values()}
    return sum(p.numel() for p in model.parameters() if id(p) not in prunable)
