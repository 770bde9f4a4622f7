"""Input checks shared by the routed ops: every message names the argument, the expectation and what came."""

from __future__ import annotations

import torch

from ..masks.packed import PackedMasks, pack_masks

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_num_tickets(num_tickets: object) -> int:
    """``num_tickets`` if it is a positive int (layers, routers and conversion all take a K)."""
    if isinstance(num_tickets, bool) or not isinstance(num_tickets, int) or num_tickets < 1:
        raise ValueError(f"num_tickets: expected a positive int, got {num_tickets!r}")
    return num_tickets


def check_tensor(name: str, value: object, ndim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else ndim
        if value.dim() not in dims:
            want = " or ".join(f"{d}-D" for d in dims)
            raise ValueError(f"{name}: expected a {want} tensor, got shape {list(value.shape)}")
    return value


def check_float(name: str, value: torch.Tensor, like: torch.Tensor | None = None) -> None:
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32, float16, bfloat16 or float64, got {value.dtype}")
    if like is not None and value.dtype != like.dtype:
        raise TypeError(f"{name}: expected dtype {like.dtype} (the dtype of x), got {value.dtype}")


def check_device(name: str, value: torch.Tensor, device: torch.device) -> None:
    if value.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the device of x), got one on {value.device}")


def check_bias(bias: object, out_features: int, x: torch.Tensor) -> torch.Tensor | None:
    if bias is None:
        return None
    bias = check_tensor("bias", bias, 1)
    if bias.shape[0] != out_features:
        raise ValueError(f"bias: expected shape [{out_features}] (weight.shape[0]), got {list(bias.shape)}")
    check_float("bias", bias, x)
    check_device("bias", bias, x.device)
    return bias


def as_packed_masks(masks: object, weight: torch.Tensor) -> PackedMasks:
    """``masks`` as :class:`PackedMasks` matching ``weight`` in shape and device."""
    if isinstance(masks, torch.Tensor):
        if masks.dtype != torch.bool:
            raise TypeError(f"masks: expected a bool tensor [K, *weight.shape] or PackedMasks, got dtype {masks.dtype}")
        if masks.dim() != weight.dim() + 1 or tuple(masks.shape[1:]) != tuple(weight.shape):
            raise ValueError(
                f"masks: expected shape [K, {', '.join(map(str, weight.shape))}] (K masks of weight's shape), got {list(masks.shape)}"
            )
        if masks.shape[0] < 1:
            raise ValueError("masks: expected at least one ticket (K >= 1), got K = 0")
        check_device("masks", masks, weight.device)
        return pack_masks(masks)
    if isinstance(masks, PackedMasks):
        if tuple(masks.weight_shape) != tuple(weight.shape):
            raise ValueError(f"masks: expected PackedMasks for weight shape {list(weight.shape)}, got {list(masks.weight_shape)}")
        check_device("masks", masks.bits, weight.device)
        return masks
    raise TypeError(f"masks: expected a bool tensor [K, *weight.shape] or PackedMasks, got {type(masks).__name__}")
