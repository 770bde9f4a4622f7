"""Model-level masks: read them all, set them all, by module name."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..masks.packed import PackedMasks
from ..nn.base import RTLLayer


def named_rtl_layers(model: nn.Module) -> dict[str, RTLLayer]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if isinstance(m, RTLLayer)}


def replace_modules(model: nn.Module, replaced: Mapping[int, nn.Module]) -> None:
    """Swap every reference to a module whose ``id`` is in ``replaced`` (a module shared by two parents stays shared)."""
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replaced:
                parent._modules[child_name] = replaced[id(child)]


def converted_layers(model: nn.Module) -> tuple[dict[str, RTLLayer], set[int]]:
    """The model's RTL layers and the set of their ticket counts; a model with none is an error."""
    layers = named_rtl_layers(model)
    if not layers:
        raise ValueError("model: expected a converted model (rtl.convert(model, K)), found no RTL layers")
    return layers, {layer.num_tickets for layer in layers.values()}


def masks_of(model: nn.Module) -> dict[str, PackedMasks]:
    """``{module name: PackedMasks}`` for every RTL layer (views of the layers' buffers)."""
    return {name: layer.packed_masks for name, layer in named_rtl_layers(model).items()}


def set_masks(model: nn.Module, masks: Mapping[str, torch.Tensor | PackedMasks], *, strict: bool = True) -> None:
    """Set the masks of the named RTL layers; with ``strict`` every RTL layer must be named."""
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks: expected a dict of module name -> bool tensor or PackedMasks, got {type(masks).__name__}")
    layers = named_rtl_layers(model)
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        raise ValueError(f"masks: names {unknown} are not RTL layers of the model (its RTL layers: {sorted(layers)[:8]}...)")
    missing = sorted(set(layers) - set(masks))
    if strict and missing:
        raise ValueError(f"masks: expected masks for every RTL layer, missing {missing} (pass strict=False for a partial update)")
    for name, value in masks.items():
        try:
            layers[name].set_masks(value)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"masks[{name!r}]: {exc}") from None
