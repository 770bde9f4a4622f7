"""``scale_qk_``: the SLTH initialisation scaling of query and key projections (Otsuka et al., §2.4).

Finds every attention layer: ``nn.MultiheadAttention``, :class:`RTLMultiheadAttention`, and
Hugging Face attention modules built from ``nn.Linear``/``Conv1D`` projections (converted or
not). A module that looks like attention (its class name says so and it owns projections) but
whose layout is not recognised is named in an error, never skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..nn.attention import RTLMultiheadAttention
from ..nn.base import RTLLayer
from ..nn.hf_conv1d import is_hf_conv1d
from .seeded import apply_spec, recorded_spec, spec_of

# (query child, key child) names of Hugging Face attention layouts with separate projections
_SEPARATE = (("query", "key"), ("q_proj", "k_proj"), ("q_lin", "k_lin"), ("q", "k"), ("to_q", "to_k"))
# packed q/k/v in one nn.Linear [3E, E] (rows q, k, v)
_PACKED = ("qkv", "Wqkv", "qkv_proj", "in_proj")
_HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size", "d_kv")


@dataclass(frozen=True)
class Part:
    """Chunk ``chunk`` of ``chunks`` equal chunks along ``axis`` of ``owner.attr`` (the whole tensor when chunks == 1)."""

    owner: nn.Module
    attr: str
    axis: int = 0
    chunk: int = 0
    chunks: int = 1


def _is_projection(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, RTLLayer)) or is_hf_conv1d(m)


def _out_axis(m: nn.Module) -> int:
    """Axis of the projection weight that holds output features: 1 for Conv1D ``[in, out]``."""
    from ..nn.hf_conv1d import RTLConv1DLinear

    return 1 if is_hf_conv1d(m) or isinstance(m, RTLConv1DLinear) else 0


def _head_dim(m: nn.Module) -> int | None:
    for attr in _HEAD_DIM_ATTRS:
        v = getattr(m, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    for e_attr, h_attr in (("embed_dim", "num_heads"), ("all_head_size", "num_attention_heads"), ("hidden_size", "num_heads")):
        e, h = getattr(m, e_attr, None), getattr(m, h_attr, None)
        if isinstance(e, int) and isinstance(h, int) and h > 0:
            return e // h
    return None


def find_qk(module: nn.Module) -> list[Part] | None:
    """The query and key weight parts of one attention module, or None when it is not one we recognise."""
    if isinstance(module, (nn.MultiheadAttention, RTLMultiheadAttention)):
        if getattr(module, "_qkv_same_embed_dim", True):
            return [Part(module, "in_proj_weight", 0, 0, 3), Part(module, "in_proj_weight", 0, 1, 3)]
        return [Part(module, "q_proj_weight"), Part(module, "k_proj_weight")]
    children = dict(module.named_children())
    for q, k in _SEPARATE:
        if _is_projection(children.get(q)) and _is_projection(children.get(k)):
            return [Part(children[q], "weight"), Part(children[k], "weight")]
    c_attn = children.get("c_attn")
    if c_attn is not None and _is_projection(c_attn):
        axis = _out_axis(c_attn)
        if _is_projection(children.get("q_attn")):  # GPT-2 cross-attention: q_attn is q, c_attn holds k and v
            return [Part(children["q_attn"], "weight"), Part(c_attn, "weight", axis, 0, 2)]
        return [Part(c_attn, "weight", axis, 0, 3), Part(c_attn, "weight", axis, 1, 3)]
    for name in _PACKED:
        if _is_projection(children.get(name)):
            p = children[name]
            return [Part(p, "weight", _out_axis(p), 0, 3), Part(p, "weight", _out_axis(p), 1, 3)]
    return None


def _looks_like_attention(module: nn.Module) -> bool:
    return "attention" in type(module).__name__.lower() and any(_is_projection(c) for c in module.children())


@torch.no_grad()
def _scale(part: Part, factor: float) -> None:
    owner = part.owner
    spec = spec_of(owner) if isinstance(owner, RTLLayer) and part.attr == _weight_name(owner) else None
    if spec is not None and spec.axis == part.axis:
        n = math.lcm(len(spec.scales), part.chunks)
        scales = [s for s in spec.scales for _ in range(n // len(spec.scales))]
        per = n // part.chunks
        for i in range(part.chunk * per, (part.chunk + 1) * per):
            scales[i] *= factor
        apply_spec(owner, replace(spec, scales=tuple(scales)))
        return
    w = getattr(owner, part.attr)
    size = w.shape[part.axis]
    if size % part.chunks:
        raise ValueError(f"{part.attr}: expected dimension {part.axis} ({size}) to split into {part.chunks} equal q/k/v parts")
    step = size // part.chunks
    w.narrow(part.axis, part.chunk * step, step).mul_(factor)
    if isinstance(owner, RTLLayer) and recorded_spec(owner) is not None:
        object.__setattr__(owner, "_rtl_seeded", None)  # scaled off its seed: saved with its tensor from now on


def _weight_name(layer: RTLLayer) -> str:
    return next((n for n, p in layer.named_parameters(recurse=False) if p is layer.weight), "weight")


def scale_qk_(model: nn.Module, factor: float | None = None) -> nn.Module:
    """Multiply every attention layer's query and key projection weights by ``factor`` (default ``head_dim ** 0.25``).

    Seeded layers stay seeded: the factor joins their per-chunk scale (q, k and v kept apart when
    they share one tensor). Returns the model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if factor is not None and (
        isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0
    ):
        raise ValueError(f"factor: expected a positive finite float or None (head_dim ** 0.25), got {factor!r}")
    found: list[tuple[str, nn.Module, list[Part]]] = []
    unknown: list[str] = []
    claimed: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in claimed:
            continue
        parts = find_qk(module)
        if parts is not None:
            found.append((name, module, parts))
            claimed.update(id(m) for m in module.modules())
        elif _looks_like_attention(module):
            kids = [f"{n}: {type(c).__name__}" for n, c in module.named_children() if _is_projection(c)]
            unknown.append(f"{name or '<root>'} ({type(module).__name__}; projections {kids})")
    if unknown:
        raise ValueError(
            f"model: attention layers whose query/key projections scale_qk_ cannot identify: {unknown}; "
            f"known layouts are nn.MultiheadAttention, RTLMultiheadAttention and children named {[q for q, _ in _SEPARATE]}/{[k for _, k in _SEPARATE]}, "
            f"c_attn (GPT-2) or packed {list(_PACKED)}"
        )
    if not found:
        raise ValueError(
            "model: expected at least one attention layer (nn.MultiheadAttention, RTLMultiheadAttention or HF attention), found none"
        )
    for name, module, parts in found:
        f = factor
        if f is None:
            hd = _head_dim(module)
            if hd is None:
                raise ValueError(
                    f"factor: cannot read the head dimension of attention layer {name!r} ({type(module).__name__}); pass factor="
                )
            f = hd**0.25
        for part in parts:
            _scale(part, float(f))
    return model
