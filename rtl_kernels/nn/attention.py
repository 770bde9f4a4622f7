"""``RTLMultiheadAttention``: a drop-in ``nn.MultiheadAttention`` whose projections are routed and masked.

``nn.MultiheadAttention`` reads ``in_proj_weight`` and ``out_proj.weight`` directly inside
``F.multi_head_attention_forward``, so converting ``out_proj`` alone would leave its masks unused.
This module keeps the same Parameters under the same names (``in_proj_weight``, ``in_proj_bias``,
``out_proj.weight``, ...): the layer itself masks ``in_proj_weight`` (its ``weight``) and
``out_proj`` is an :class:`RTLLinear`. Only the packed q/k/v layout (``kdim == vdim == embed_dim``)
is supported; :func:`rtl_kernels.convert` skips the others with a reason.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..masks.packed import PackedMasks
from ..ops.linear import routed_linear
from ..routing_plans.plan import RoutingPlan, check_plan, make_plan
from .base import RTLLayer, check_num_tickets
from .linear import RTLLinear
from .overrides import override_of

Routes = int | torch.Tensor | RoutingPlan


def sequence_first_routes(routes: Routes | None, x: torch.Tensor, batch_first: bool) -> Routes | None:
    """``routes`` for a layer input ``x``: per-sample routes (a ``[B]`` tensor or a plan over B rows) of a
    sequence-first ``[L, B, ...]`` input become routes for all ``L·B`` rows (row ``l·B + b`` gets sample b's
    ticket); anything else is returned unchanged (batch-first inputs already take ``[B]`` as a prefix)."""
    if batch_first or x.dim() < 3 or routes is None:
        return routes
    length, batch = x.shape[0], x.shape[1]
    if isinstance(routes, torch.Tensor) and routes.dim() == 1 and routes.shape[0] == batch:
        return routes.unsqueeze(0).expand(length, batch)
    if isinstance(routes, RoutingPlan) and routes.num_rows == batch and length > 1:
        if not routes._consistent:
            check_plan(routes, routes.num_tickets)
        return make_plan(routes.routes.repeat(length), routes.num_tickets)
    return routes


class RTLMultiheadAttention(RTLLayer):
    """Routed masked multi-head attention, built from an ``nn.MultiheadAttention`` with :meth:`from_dense`."""

    in_proj_weight: nn.Parameter

    @property
    def weight(self) -> nn.Parameter:  # what RTLLayer masks: the packed q/k/v projection [3E, E]
        return self.in_proj_weight

    @classmethod
    def from_dense(cls, module: nn.MultiheadAttention, num_tickets: int) -> RTLMultiheadAttention:
        """An RTL attention that shares ``module``'s Parameter objects, with all-ones masks."""
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"module: expected an nn.MultiheadAttention, got {type(module).__name__}")
        if not module._qkv_same_embed_dim:
            raise ValueError("module: expected kdim == vdim == embed_dim (packed in_proj_weight); separate q/k/v weights are not supported")
        check_num_tickets(num_tickets)
        layer = cls.__new__(cls)
        RTLLayer.__init__(layer)
        for attr in (
            "embed_dim",
            "kdim",
            "vdim",
            "num_heads",
            "dropout",
            "batch_first",
            "head_dim",
            "add_zero_attn",
            "_qkv_same_embed_dim",
        ):
            setattr(layer, attr, getattr(module, attr))
        layer.in_proj_weight = module.in_proj_weight
        layer.in_proj_bias = module.in_proj_bias
        layer.bias_k, layer.bias_v = module.bias_k, module.bias_v
        layer.out_proj = RTLLinear.from_dense(module.out_proj, num_tickets)
        layer._init_masks(num_tickets)
        layer.train(module.training)
        return layer

    def _project(self, x: torch.Tensor, part: slice, routes: Routes) -> torch.Tensor:
        e = self.embed_dim
        rows = slice(part.start * e, part.stop * e)
        special = override_of(self)
        if special is not None:  # an attention override projects with the in_proj rows it is given
            return special(x, routes, rows)
        masks = PackedMasks.trusted(self.mask_bits[:, rows].contiguous(), (rows.stop - rows.start, e))
        bias = None if self.in_proj_bias is None else self.in_proj_bias[rows]
        y = self._seeded_output(x, masks, routes, bias, rows)  # a seeded weight: these rows regenerated in the kernel
        if y is not None:
            return y
        return routed_linear(x, self.in_proj_weight[rows], masks, routes, bias, backend=self.backend)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        routes: Routes | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same arguments and results as ``nn.MultiheadAttention.forward``; ``routes`` as in :class:`RTLLinear`."""
        if is_causal and attn_mask is None:
            raise ValueError(
                "attn_mask: is_causal=True is a hint and needs the causal attn_mask too (as in nn.MultiheadAttention), got None"
            )
        routes = self._resolve_routes(routes)
        # projections run in the input's own layout, so routes follow the same prefix rule as RTLLinear
        # ([B] or [B, L] batch-first, [L, B] sequence-first, [L] or an int unbatched), except that
        # per-sample routes [B] of sequence-first inputs route every token of sample b
        q_routes = sequence_first_routes(routes, query, self.batch_first)
        if query is key and key is value:
            q, k, v = self._project(query, slice(0, 3), q_routes).chunk(3, dim=-1)
        else:
            q, k, v = (
                self._project(query, slice(0, 1), q_routes),
                self._project(key, slice(1, 2), sequence_first_routes(routes, key, self.batch_first)),
                self._project(value, slice(2, 3), sequence_first_routes(routes, value, self.batch_first)),
            )
        unbatched = query.dim() == 2
        if unbatched and key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
        q, k, v = (self._heads(z, unbatched) for z in (q, k, v))  # [B, H, L, D]
        b, h, t, d = q.shape
        mask = _additive_mask(attn_mask, key_padding_mask, b, h, t, k.shape[2], q.dtype)
        extra = []
        if self.bias_k is not None:
            extra.append((self.bias_k.reshape(1, h, 1, d).expand(b, h, 1, d), self.bias_v.reshape(1, h, 1, d).expand(b, h, 1, d)))
        if self.add_zero_attn:
            extra.append((q.new_zeros(b, h, 1, d), q.new_zeros(b, h, 1, d)))
        for ek, ev in extra:
            k, v = torch.cat([k, ek], dim=2), torch.cat([v, ev], dim=2)
            mask = None if mask is None else F.pad(mask, (0, 1))
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * d**-0.5) @ k.transpose(-1, -2)
            if mask is not None:
                scores = scores + mask
            probs = torch.softmax(scores, dim=-1)
            if dropout > 0:
                probs = F.dropout(probs, p=dropout)
            out = probs @ v
            weights = probs.mean(dim=1) if average_attn_weights else probs
            if unbatched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out_proj(self._merge_heads(out, unbatched), q_routes), weights

    def _heads(self, z: torch.Tensor, unbatched: bool) -> torch.Tensor:
        """[B, L, E] / [L, B, E] / [L, E] -> [B, H, L, D]."""
        h, d = self.num_heads, self.head_dim
        if unbatched:
            return z.reshape(z.shape[0], h, d).transpose(0, 1).unsqueeze(0)
        if self.batch_first:
            return z.reshape(z.shape[0], z.shape[1], h, d).transpose(1, 2)
        return z.reshape(z.shape[0], z.shape[1], h, d).permute(1, 2, 0, 3)

    def _merge_heads(self, out: torch.Tensor, unbatched: bool) -> torch.Tensor:
        """[B, H, L, D] -> the input's layout with E = H * D."""
        b, h, t, d = out.shape
        if unbatched:
            return out[0].transpose(0, 1).reshape(t, h * d)
        if self.batch_first:
            return out.transpose(1, 2).reshape(b, t, h * d)
        return out.permute(2, 0, 1, 3).reshape(t, b, h * d)

    def to_dense(self, ticket: int) -> nn.MultiheadAttention:
        """A plain ``nn.MultiheadAttention`` with ticket ``ticket``'s masks baked into copies of both projections."""
        w = self._masked_weight(ticket)
        dense = nn.MultiheadAttention(
            self.embed_dim, self.num_heads, dropout=self.dropout, bias=self.in_proj_bias is not None,
            add_bias_kv=self.bias_k is not None, add_zero_attn=self.add_zero_attn, batch_first=self.batch_first,
            device=w.device, dtype=w.dtype,
        )  # fmt: skip
        with torch.no_grad():
            dense.in_proj_weight.copy_(w)
            if self.in_proj_bias is not None:
                dense.in_proj_bias.copy_(self.in_proj_bias)
            if self.bias_k is not None:
                dense.bias_k.copy_(self.bias_k)
                dense.bias_v.copy_(self.bias_v)
        dense.out_proj = self.out_proj.to_dense(ticket)
        dense.train(self.training)
        return dense

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}, num_tickets={self.num_tickets}"


def _additive_mask(
    attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, b: int, h: int, t: int, s: int, dtype: torch.dtype
) -> torch.Tensor | None:
    """``attn_mask`` ([T, S] or [B*H, T, S]) and ``key_padding_mask`` ([B, S]) merged into one float mask [B, H, T, S]."""

    def as_float(m: torch.Tensor) -> torch.Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        return m.to(dtype)

    mask = None
    if attn_mask is not None:
        m = as_float(attn_mask)
        if m.dim() == 2:
            if tuple(m.shape) != (t, s):
                raise ValueError(f"attn_mask: expected shape [{t}, {s}] or [{b * h}, {t}, {s}], got {list(m.shape)}")
            mask = m.expand(b, h, t, s)
        elif m.dim() == 3 and tuple(m.shape) == (b * h, t, s):
            mask = m.reshape(b, h, t, s)
        else:
            raise ValueError(f"attn_mask: expected shape [{t}, {s}] or [{b * h}, {t}, {s}], got {list(m.shape)}")
    if key_padding_mask is not None:
        if tuple(key_padding_mask.shape) != (b, s):
            raise ValueError(f"key_padding_mask: expected shape [{b}, {s}], got {list(key_padding_mask.shape)}")
        kp = as_float(key_padding_mask).reshape(b, 1, 1, s)
        mask = kp.expand(b, h, t, s) if mask is None else mask + kp
    return mask
