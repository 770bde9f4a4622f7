"""From a :class:`MaskedMerge` to a model: routed (one :class:`RTLDeltaLinear` per ``nn.Linear``, one
:class:`RTLDeltaConv2d` per ``nn.Conv2d``) or dense."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ..nn.base import check_num_tickets
from ..nn.delta import RTLDeltaConv2d, RTLDeltaLayer, RTLDeltaLinear
from .methods import MaskedMerge
from .vectors import State

logger = logging.getLogger(__name__)

# the dense layers a merge routes (matched by exact type: a subclass may compute something else)
DELTA_LAYERS = {nn.Linear: RTLDeltaLinear, nn.Conv2d: RTLDeltaConv2d}


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def delta_layers(model: nn.Module) -> dict[str, RTLDeltaLayer]:
    """The merged layers of ``model`` (:class:`RTLDeltaLinear` and :class:`RTLDeltaConv2d`) by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, RTLDeltaLayer)}


def convert_delta(model: nn.Module, num_tickets: int) -> nn.Module:
    """Replace every ``nn.Linear`` and ``nn.Conv2d`` of ``model`` (exactly those types) in place by an
    :class:`RTLDeltaLinear` / :class:`RTLDeltaConv2d` with that base and a zero delta.

    This is the skeleton ``rtl.load`` fills: ``rtl.load(path, rtl.merge.convert_delta(Arch(), K))``.
    The layers share one ``scales`` Parameter (a merge's per-task scale holds for the whole model), so
    a save stores the K scales once.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    check_num_tickets(num_tickets)
    names = [name for name, m in model.named_modules() if type(m) in DELTA_LAYERS]
    if not names:
        raise ValueError(f"model: expected a model with nn.Linear or nn.Conv2d layers to merge, found none in {type(model).__name__}")
    dense = [model.get_submodule(name) for name in names]
    layers = [DELTA_LAYERS[type(m)].from_dense(m, num_tickets) for m in dense]
    for name, layer in zip(names, layers):
        layer.scales = layers[0].scales
        _swap(model, name, layer)
    return model


def _load_state(model: nn.Module, state: State) -> None:
    with torch.no_grad():
        own = model.state_dict()
        for key, value in state.items():
            own[key].copy_(value)


def routed_model(base: nn.Module, merge: MaskedMerge) -> nn.Module:
    """A copy of ``base`` whose linear and conv layers hold ``merge`` (ticket k = merged expert k); other
    float tensors (norms, other layer types) are shared, set to the mean of the K tickets."""
    model = convert_delta(copy.deepcopy(base), merge.num_tickets)
    layers = delta_layers(model)
    covered = set()
    for name, layer in layers.items():
        prefix = f"{name}." if name else ""
        wkey, bkey = f"{prefix}weight", f"{prefix}bias"
        with torch.no_grad():
            layer.weight.copy_(merge.base[wkey])
            if layer.bias is not None:
                layer.bias.copy_(merge.base[bkey])
        layer.set_merge(
            merge.delta[wkey],
            merge.masks[wkey] if wkey in merge.masks else torch.ones((merge.num_tickets, *layer.weight.shape), dtype=torch.bool),
            merge.scales,
            merge.delta.get(bkey),
            merge.masks.get(bkey),
        )
        covered.update({wkey, bkey})
    rest = [key for key in merge.base if key not in covered]
    states = [merge.ticket_state(t) for t in range(merge.num_tickets)] if rest else []
    differing = [key for key in rest if any(not torch.equal(states[0][key], s[key]) for s in states[1:])]
    if differing:
        logger.warning(
            "merge: %d tensors outside the linear and conv layers are shared by all tickets (their mean): %s", len(differing), differing[:6]
        )
    _load_state(model, {key: torch.stack([s[key] for s in states]).mean(0) for key in rest})
    return model


def dense_model(base: nn.Module, state: State) -> nn.Module:
    """A copy of ``base`` (same class) with ``state`` loaded."""
    model = copy.deepcopy(base)
    _load_state(model, state)
    return model
