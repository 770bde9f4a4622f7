"""``masked_delta_linear``: a shared base plus, per row, its ticket's masked and scaled delta.

``y = x @ (base + scale[r] · (delta ⊙ M[r])).T + bias`` with ``r`` the row's route: the serving form
of mask-based model merging (TALL, EMR), where K experts share ``base`` and ``delta`` and differ
only by a bit mask and a scalar. Differentiable in ``x``, ``base``, ``delta``, ``scales`` and ``bias``.
"""

from __future__ import annotations

import torch

from ..backends import masked_delta_backends as backends
from ..backends.reference import accumulation_dtype
from ..masks.packed import PackedMasks
from ..routing_plans.plan import RoutingPlan
from ..routing_plans.routes import plan_for_rows
from .checks import as_packed_masks, check_device, check_float, check_tensor
from .define import define_routed_op

Tensor = torch.Tensor


def _check_scales(scales: object, num_tickets: int, x: Tensor) -> Tensor:
    scales = check_tensor("scales", scales, 1)
    if scales.shape[0] != num_tickets:
        raise ValueError(f"scales: expected shape [{num_tickets}] (one per ticket of masks), got {list(scales.shape)}")
    check_float("scales", scales)
    check_device("scales", scales, x.device)
    return scales


def _check_bias(bias: object, num_tickets: int, out_features: int, x: Tensor) -> Tensor | None:
    if bias is None:
        return None
    bias = check_tensor("bias", bias, (1, 2))
    if tuple(bias.shape) not in ((out_features,), (num_tickets, out_features)):
        raise ValueError(f"bias: expected shape [{out_features}] or [{num_tickets}, {out_features}] (per ticket), got {list(bias.shape)}")
    check_float("bias", bias, x)
    check_device("bias", bias, x.device)
    return bias


def _forward(
    x: Tensor,
    base: Tensor,
    delta: Tensor,
    bits: Tensor,
    scales: Tensor,
    routes: Tensor,
    perm: Tensor,
    offsets: Tensor,
    bias: Tensor | None,
    backend: str,
) -> Tensor:
    masks = PackedMasks.trusted(bits, base.shape)
    return backends.resolve(backend, x).forward(x, base, delta, masks, scales, RoutingPlan(routes, perm, offsets), bias)


def _fake(x, base, delta, bits, scales, routes, perm, offsets, bias, backend):
    return x.new_empty((x.shape[0], base.shape[0]))


def _backward(dy, x, base, delta, bits, scales, routes, perm, offsets, bias, backend, *, needs):
    need_dx, need_dbase, need_dd, need_ds, need_db = needs
    dy = dy.contiguous()
    dx = dd = ds = dbase = db = None
    if need_dx or need_dd or need_ds:
        plan, masks = RoutingPlan(routes, perm, offsets), PackedMasks.trusted(bits, base.shape)
        dx, dd, ds = backends.resolve(backend, x).backward(dy, x, base, delta, masks, scales, plan, need_dx, need_dd, need_ds)
    acc = accumulation_dtype(dy.dtype)
    if need_dbase:
        dbase = (dy.to(acc).T @ x.to(acc)).to(base.dtype)
    if need_db:
        if bias.dim() == 1:
            db = dy.sum(0, dtype=acc)
        else:
            db = torch.zeros(bias.shape, dtype=acc, device=dy.device).index_add_(0, routes, dy.to(acc))
        db = db.to(bias.dtype)
    return dx, dbase, dd, ds, db


masked_delta_op = define_routed_op(
    "masked_delta_linear", _forward, fake=_fake, backward=_backward, differentiable=("x", "base", "delta", "scales", "bias")
)
"""``masked_delta_linear(x[M, Kin], base, delta, bits, scales, routes, perm, offsets, bias, backend)`` on checked inputs."""


def masked_delta_linear(
    x: Tensor,
    base: Tensor,
    delta: Tensor,
    masks: Tensor | PackedMasks,
    scales: Tensor,
    routes: int | Tensor | RoutingPlan,
    bias: Tensor | None = None,
    *,
    backend: str = "auto",
    check_routes: bool | None = None,
) -> Tensor:
    """``y[..., :] = x[...] @ (base + scales[r] · (delta ⊙ masks[r])).T + bias`` with ``r`` the row's route.

    ``base``/``delta``: ``[out, in]``; ``masks``: bool ``[K, out, in]`` or :class:`PackedMasks`;
    ``scales``: ``[K]``; ``bias``: ``[out]`` or one per ticket ``[K, out]``; ``routes`` as for
    :func:`rtl_kernels.routed_linear`. Base, delta and mask bits are each read once per call by the
    fused kernels; ``backend`` is ``"auto" | "cpu" | "triton" | "reference"``.
    """
    x = check_tensor("x", x)
    base = check_tensor("base", base, 2)
    delta = check_tensor("delta", delta, 2)
    if x.dim() < 1 or x.shape[-1] != base.shape[1]:
        raise ValueError(f"x: expected shape [..., {base.shape[1]}] (base is {list(base.shape)}), got {list(x.shape)}")
    if delta.shape != base.shape:
        raise ValueError(f"delta: expected the shape of base {list(base.shape)}, got {list(delta.shape)}")
    check_float("x", x)
    for name, t in (("base", base), ("delta", delta)):
        check_float(name, t, x)
        check_device(name, t, x.device)
    packed = as_packed_masks(masks, base)
    k = packed.num_tickets
    scales = _check_scales(scales, k, x)
    bias = _check_bias(bias, k, base.shape[0], x)
    backends.check_name(backend)
    return apply_checked(x, base, delta, packed.bits, scales, routes, bias, backend, check_routes)


def apply_checked(
    x: Tensor,
    base: Tensor,
    delta: Tensor,
    bits: Tensor,
    scales: Tensor,
    routes: int | Tensor | RoutingPlan,
    bias: Tensor | None,
    backend: str,
    check_routes: bool | None = None,
) -> Tensor:
    """The op on arguments already checked against each other (a layer's own parameters); only
    ``routes`` are checked and planned here."""
    lead = x.shape[:-1]
    plan = plan_for_rows(routes, int(bits.shape[0]), lead, x.device, check=check_routes)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    y = masked_delta_op(x2, base.contiguous(), delta.contiguous(), bits, scales, plan.routes, plan.perm, plan.offsets, bias, backend)
    return y.reshape(*lead, base.shape[0])
