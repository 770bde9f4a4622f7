"""Task vectors: what fine-tuning changed, ``τ_t = θ_t − θ_0``, checked against the base's architecture."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

State = dict[str, torch.Tensor]


def float_state(model: nn.Module, name: str = "base") -> State:
    """The floating-point entries of ``model``'s state dict (parameters and float buffers), detached."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name}: expected an nn.Module, got {type(model).__name__}")
    return {k: v.detach() for k, v in model.state_dict().items() if v.is_floating_point()}


def check_experts(base: nn.Module, experts: Sequence[nn.Module]) -> tuple[State, list[State]]:
    """Float states of ``base`` and of each expert, after checking every expert has the base's keys, shapes and dtypes."""
    base_state = float_state(base, "base")
    if isinstance(experts, nn.Module) or not isinstance(experts, Sequence):
        raise TypeError(f"experts: expected a sequence of K models fine-tuned from base, got {type(experts).__name__}")
    if len(experts) == 0:
        raise ValueError("experts: expected K >= 1 fine-tuned models, got K = 0")
    states = []
    for i, expert in enumerate(experts):
        state = float_state(expert, f"experts[{i}]")
        missing, extra = sorted(set(base_state) - set(state)), sorted(set(state) - set(base_state))
        if missing or extra:
            raise ValueError(
                f"experts[{i}]: expected the base's architecture ({type(base).__name__}), got a {type(expert).__name__} "
                f"with missing keys {missing[:6]} and unexpected keys {extra[:6]}"
            )
        for key, value in base_state.items():
            other = state[key]
            if other.shape != value.shape:
                raise ValueError(f"experts[{i}]: expected {key!r} of shape {list(value.shape)} (as in base), got {list(other.shape)}")
            if other.dtype != value.dtype:
                raise TypeError(f"experts[{i}]: expected {key!r} of dtype {value.dtype} (as in base), got {other.dtype}")
            if other.device != value.device:
                raise ValueError(f"experts[{i}]: expected {key!r} on {value.device} (as in base), got {other.device}")
        states.append(state)
    return base_state, states


def task_vectors(base: nn.Module, experts: Sequence[nn.Module]) -> tuple[State, list[State]]:
    """``(θ_0, [τ_1 … τ_K])`` over the float state-dict entries (checked with :func:`check_experts`)."""
    base_state, states = check_experts(base, experts)
    return base_state, [{k: s[k] - v for k, v in base_state.items()} for s in states]


def flatten(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """All entries of ``state`` as one 1-D tensor (key order of the mapping)."""
    if not state:
        return torch.zeros(0)
    return torch.cat([v.reshape(-1) for v in state.values()])


def unflatten(flat: torch.Tensor, like: Mapping[str, torch.Tensor]) -> State:
    """The inverse of :func:`flatten` for a state shaped like ``like``."""
    out, start = {}, 0
    for key, value in like.items():
        piece = flat[start : start + value.numel()].view(value.shape)
        out[key] = piece if piece.dtype == value.dtype or piece.dtype == torch.bool else piece.to(value.dtype)
        start += value.numel()
    return out
