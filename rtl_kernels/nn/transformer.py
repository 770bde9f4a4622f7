"""RTL versions of ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``.

PyTorch's encoder layer has a fused inference fast path that reads ``self_attn``, ``linear1`` and
``linear2`` weights directly, so routed masks on those children would be ignored. These layers hold
the very same children under the same names (same Parameters, same ``state_dict`` keys) and always
compute through them, as PyTorch's own slow path does: with all-ones masks the output equals the
original's up to float rounding. :func:`rtl_kernels.convert` swaps them in, then converts the
children (``self_attn``/``multihead_attn`` to :class:`RTLMultiheadAttention`, ``linear1``/``linear2``
to :class:`RTLLinear`) like any other layer, so ``ignore`` and ``filter_fn`` apply to them.

Routes: per-sample routes ``[B]`` route every token of sample b, also in ``batch_first=False``
layers, where the batch is dim 1 (see :func:`~rtl_kernels.nn.attention.sequence_first_routes`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Routes, sequence_first_routes
from .base import RTLLayer


def _call(module: nn.Module, x: torch.Tensor, routes: Routes | None, batch_first: bool) -> torch.Tensor:
    """``module(x)``, with routes (adapted to ``x``'s layout) when it is an RTL layer."""
    if isinstance(module, RTLLayer):
        return module(x, sequence_first_routes(routes, x, batch_first))
    return module(x)


def _attend(attn: nn.Module, q, kv, attn_mask, key_padding_mask, is_causal: bool, routes: Routes | None) -> torch.Tensor:
    """Attention as PyTorch's slow path calls it (no weights); an RTL attention gets the routes."""
    extra = {"routes": routes} if isinstance(attn, RTLLayer) else {}
    return attn(q, kv, kv, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False, is_causal=is_causal, **extra)[0]


class _RTLTransformerLayer(nn.Module):
    """What the encoder and decoder layers share: adopting the dense layer's children, resolving routes."""

    norm_first: bool
    _DENSE: type[nn.Module]
    _ROUTED: tuple[str, ...]

    @classmethod
    def from_dense(cls, module: nn.Module):
        """A layer that holds ``module``'s children (the same objects, so the same Parameters and keys)."""
        if not isinstance(module, cls._DENSE):
            raise TypeError(f"module: expected an {cls._DENSE.__name__}, got {type(module).__name__}")
        layer = cls()
        for name, child in module.named_children():
            layer.add_module(name, child)
        layer.norm_first = module.norm_first
        layer.activation = module.activation  # a module is a child already; a function is a plain attribute
        layer.activation_relu_or_gelu = getattr(module, "activation_relu_or_gelu", 0)
        layer.train(module.training)
        return layer

    @property
    def batch_first(self) -> bool:
        return bool(self.self_attn.batch_first)

    def _routes(self, routes: Routes | None) -> Routes | None:
        """The routes of this call: given, or those the RTL children see (``rtl.routing``), or None if none is RTL."""
        for name in self._ROUTED:
            child = getattr(self, name)
            if isinstance(child, RTLLayer):
                return child._resolve_routes(routes)
        return routes

    def _ff_block(self, x: torch.Tensor, routes: Routes | None, dropout: nn.Module) -> torch.Tensor:
        hidden = self.dropout(self.activation(_call(self.linear1, x, routes, self.batch_first)))
        return dropout(_call(self.linear2, hidden, routes, self.batch_first))


class RTLTransformerEncoderLayer(_RTLTransformerLayer):
    """``nn.TransformerEncoderLayer`` computed through its (routed) children; same arguments, plus ``routes``."""

    _DENSE = nn.TransformerEncoderLayer
    _ROUTED = ("self_attn", "linear1", "linear2")

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        routes: Routes | None = None,
    ) -> torch.Tensor:
        src_key_padding_mask = F._canonical_mask(
            mask=src_key_padding_mask, mask_name="src_key_padding_mask", other_type=F._none_or_dtype(src_mask),
            other_name="src_mask", target_type=src.dtype,
        )  # fmt: skip
        src_mask = F._canonical_mask(
            mask=src_mask, mask_name="src_mask", other_type=None, other_name="", target_type=src.dtype, check_other=False
        )
        routes = self._routes(routes)
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal, routes)
            x = x + self._ff_block(self.norm2(x), routes, self.dropout2)
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal, routes))
            x = self.norm2(x + self._ff_block(x, routes, self.dropout2))
        return x

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal, routes) -> torch.Tensor:
        return self.dropout1(_attend(self.self_attn, x, x, attn_mask, key_padding_mask, is_causal, routes))


class RTLTransformerDecoderLayer(_RTLTransformerLayer):
    """``nn.TransformerDecoderLayer`` with routed children; same arguments, plus ``routes``."""

    _DENSE = nn.TransformerDecoderLayer
    _ROUTED = ("self_attn", "multihead_attn", "linear1", "linear2")

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        tgt_key_padding_mask: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
        routes: Routes | None = None,
    ) -> torch.Tensor:
        routes = self._routes(routes)
        x = tgt
        if self.norm_first:
            h = self.norm1(x)
            x = x + self.dropout1(_attend(self.self_attn, h, h, tgt_mask, tgt_key_padding_mask, tgt_is_causal, routes))
            x = x + self.dropout2(
                _attend(self.multihead_attn, self.norm2(x), memory, memory_mask, memory_key_padding_mask, memory_is_causal, routes)
            )
            x = x + self._ff_block(self.norm3(x), routes, self.dropout3)
        else:
            x = self.norm1(x + self.dropout1(_attend(self.self_attn, x, x, tgt_mask, tgt_key_padding_mask, tgt_is_causal, routes)))
            x = self.norm2(
                x + self.dropout2(_attend(self.multihead_attn, x, memory, memory_mask, memory_key_padding_mask, memory_is_causal, routes))
            )
            x = self.norm3(x + self._ff_block(x, routes, self.dropout3))
        return x
