"""Strong tickets by edge-popup: K score tensors over one frozen weight; only the masks come out.

Per ticket and RTL layer a real score tensor (Kaiming-uniform, a = √5, as in edge-popup) ranks the
weights; the forward keeps the top ``1 − sparsity`` fraction by ``|score|`` (per tensor or over all
RTL layers) and the backward is straight-through: ``dL/dS = (dL/dW_eff ⊙ W) · sign(S)``. Model
parameters and buffers are never changed (buffers such as BatchNorm statistics are put back).

``mixed=True`` trains all K tickets in one step on a batch that mixes them, through the routed
kernels (:mod:`.strong_mixed`): the layer's forward is the routed op, its ``dx`` the routed
backward, and ticket ``k``'s score gradient is (ticket k's weight gradient over the rows routed to
``k``) ⊙ W — ``(dY_kᵀ X_k) ⊙ W`` for a linear layer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from ..masks.packed import ones_bits
from ..models.routing import routing
from ..models.state import converted_layers, set_masks
from ..nn.base import RTLLayer
from ..nn.overrides import forward_overrides
from .progress import bar
from .pruning import SCOPES, keep_counts
from .strong_mixed import MIXED_LAYERS, mixed_forward
from .training import LossFn, NonFiniteLossError, OptimizerFactory, check_positive, check_subsets, derived_seed, epoch_batches, fetch

logger = logging.getLogger(__name__)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
LR_SCHEDULES = ("constant", "cosine")


def check_open_sparsity(value: object) -> float:
    """A sparsity (fraction of weights removed) strictly inside (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"sparsity: expected the fraction of weights removed, strictly in (0, 1), got {value!r}")
    return float(value)


class _TopK(torch.autograd.Function):
    """Rows of ``scores`` [T, n] → 1.0 at each row's ``keep`` largest entries; gradient passed straight through."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, keep: int) -> torch.Tensor:
        out = torch.zeros_like(scores)
        if keep > 0:
            out.scatter_(1, torch.topk(scores, keep, dim=1, sorted=False).indices, 1.0)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def ste_masks(scores: dict[str, torch.Tensor], keep: dict[str, int] | int) -> dict[str, torch.Tensor]:
    """Float masks ``[T, *shape]`` from scores ``[T, *shape]`` (T tickets): top-|score| per tensor or overall."""
    if isinstance(keep, dict):
        return {n: _TopK.apply(s.abs().reshape(s.shape[0], -1), keep[n]).reshape(s.shape) for n, s in scores.items()}
    names = list(scores)
    flat = torch.cat([scores[n].abs().reshape(scores[n].shape[0], -1) for n in names], dim=1)
    parts = _TopK.apply(flat, keep).split([scores[n][0].numel() for n in names], dim=1)
    return {n: p.reshape(scores[n].shape) for n, p in zip(names, parts)}


def init_scores(layers: dict[str, RTLLayer], num_tickets: int, seed: int) -> list[dict[str, nn.Parameter]]:
    """One Kaiming-uniform (a = √5) score tensor per ticket and layer, seeded from ``(seed, ticket)``."""
    out = []
    for k in range(num_tickets):
        gen = torch.Generator().manual_seed(derived_seed(seed, k, 7))
        scores = {}
        for name, layer in layers.items():
            s = torch.empty(layer.weight.shape, dtype=torch.float32)
            nn.init.kaiming_uniform_(s, a=math.sqrt(5), generator=gen)
            scores[name] = nn.Parameter(s.to(layer.weight.device))
        out.append(scores)
    return out


def _param_key(name: str, attr: str) -> str:
    return f"{name}.{attr}" if name else attr


def _weight_attr(layer: RTLLayer) -> str:
    return next(n for n, p in layer.named_parameters(recurse=False) if p is layer.weight)


def _norm_affine(model: nn.Module) -> dict[str, torch.Tensor]:
    """Ones/zeros standing in for every normalisation layer's affine parameters (non-affine norms)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _NORMS):
            for attr, fill in (("weight", 1.0), ("bias", 0.0)):
                p = getattr(m, attr, None)
                if isinstance(p, torch.Tensor):
                    out[_param_key(name, attr)] = torch.full_like(p, fill).detach()
    return out


def _check_finite(loss: torch.Tensor, ticket: int, epoch: int) -> None:
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"loss: ticket {ticket} reached a non-finite training loss ({float(loss.detach())}) in epoch {epoch}; "
            "the model's masks and buffers were restored (lower lr, or check the data)"
        )


def find_strong_tickets(
    model: nn.Module,
    subsets: Sequence[torch.utils.data.Dataset],
    *,
    sparsity: float,
    epochs: int,
    loss_fn: LossFn,
    lr: float,
    batch_size: int,
    scope: str = "layer",
    seed: int = 0,
    progress: bool = True,
    optimizer: OptimizerFactory | None = None,
    mixed: bool = False,
    nonaffine_norms: bool = False,
    lr_schedule: str = "constant",
    log: Callable[[dict], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Edge-popup per subset: one ticket per subset over the model's frozen weights; sets and returns the masks.

    Each ticket keeps exactly ``round((1 − sparsity) · n)`` weights per tensor (``scope="layer"``)
    or over all RTL layers (``"global"``). Scores train with Adam at ``lr`` unless ``optimizer``
    (a factory ``params -> Optimizer``) is given. ``mixed=True`` trains the K tickets together on
    mixed batches through the routed kernels (linear, conv2d, HF Conv1D and attention layers). ``nonaffine_norms=True``
    computes the normalisation layers without their affine parameters (edge-popup's non-affine BN).
    ``lr_schedule="cosine"`` anneals the lr per epoch as edge-popup does, ``0.5 (1 + cos(π e / epochs)) lr``.
    Returns ``name -> bool [K, *weight.shape]``.
    """
    subsets = check_subsets(subsets)
    layers, ks = converted_layers(model)
    k_total = len(subsets)
    if ks != {k_total}:
        raise ValueError(f"subsets: expected one subset per ticket (the model has K = {sorted(ks)}), got {k_total}")
    sparsity = check_open_sparsity(sparsity)
    check_positive("epochs", epochs)
    check_positive("batch_size", batch_size)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr: expected a positive float, got {lr!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {SCOPES}, got {scope!r}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule: expected one of {LR_SCHEDULES}, got {lr_schedule!r}")
    if mixed:
        others = sorted({type(m).__name__ for m in layers.values() if type(m) not in MIXED_LAYERS})
        if others:
            names = ", ".join(t.__name__ for t in MIXED_LAYERS)
            raise ValueError(f"mixed: expected only {names} layers for mixed-ticket steps, the model also has {others}; use mixed=False")
    keep = keep_counts({n: m.weight.numel() for n, m in layers.items()}, sparsity, scope)
    saved_masks = {n: m.mask_bits.detach().clone() for n, m in layers.items()}
    saved_buffers = {n: b.detach().clone() for n, b in model.named_buffers() if not n.endswith("mask_bits")}
    was_training = model.training
    scores = init_scores(layers, k_total, seed)
    run = _Search(keep, epochs, loss_fn, lr, batch_size, seed, progress, optimizer, nonaffine_norms, lr_schedule, log)
    ok = False
    try:
        model.train()
        if mixed:
            _train_mixed(model, layers, subsets, scores, run)
        else:
            for k in range(k_total):
                _train_one(model, layers, subsets[k], k, scores[k], run)
        with torch.no_grad():
            final = {n: torch.stack([s[n].detach() for s in scores]) for n in layers}
            masks = {n: m.to("cpu") > 0.5 for n, m in ste_masks(final, keep).items()}
        ok = True
    finally:
        _restore(model, layers, saved_masks, saved_buffers, restore_masks=not ok)
        model.train(was_training)
    set_masks(model, masks)
    return masks


@torch.no_grad()
def _restore(model, layers, saved_masks, saved_buffers, *, restore_masks: bool) -> None:
    buffers = dict(model.named_buffers())
    for n, value in saved_buffers.items():
        if not torch.equal(buffers[n], value):
            buffers[n].copy_(value)
    if restore_masks:
        for n, layer in layers.items():
            layer.mask_bits.copy_(saved_masks[n])


@dataclass(frozen=True)
class _Search:
    """The checked settings of one ``find_strong_tickets`` call."""

    keep: dict[str, int] | int
    epochs: int
    loss_fn: LossFn
    lr: float
    batch_size: int
    seed: int
    progress: bool
    optimizer: OptimizerFactory | None
    nonaffine: bool
    lr_schedule: str
    log: Callable[[dict], None] | None


def _make_opt(params: list[nn.Parameter], run: _Search) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The optimizer over ``params`` and, for ``lr_schedule="cosine"``, its per-epoch cosine schedule."""
    opt = _build_opt(params, run.lr, run.optimizer)
    if run.lr_schedule == "cosine":
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5 * (1.0 + math.cos(math.pi * e / run.epochs)))
    return opt, None


def _build_opt(params: list[nn.Parameter], lr: float, optimizer: OptimizerFactory | None) -> torch.optim.Optimizer:
    if optimizer is None:
        return torch.optim.Adam(params, lr=lr)
    if not callable(optimizer):
        raise TypeError(f"optimizer: expected a callable params -> torch.optim.Optimizer, got {type(optimizer).__name__}")
    built = optimizer(params)
    if not isinstance(built, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected the factory to return a torch.optim.Optimizer, got {type(built).__name__}")
    return built


def _train_one(model, layers, subset, k: int, scores: dict[str, nn.Parameter], run: _Search) -> None:
    """Edge-popup for ticket ``k`` alone: the layers see ``W ⊙ mask(S_k)`` and all-ones masks."""
    device = next(iter(layers.values())).weight.device
    opt, schedule = _make_opt(list(scores.values()), run)
    gen = torch.Generator().manual_seed(derived_seed(run.seed, k, 1))
    weights = {n: m.weight.detach() for n, m in layers.items()}
    keys = {n: _param_key(n, _weight_attr(m)) for n, m in layers.items()}
    fixed = {_param_key(n, "mask_bits"): ones_bits(m.num_tickets, m.weight.shape, device) for n, m in layers.items()}
    if run.nonaffine:
        fixed.update(_norm_affine(model))
    epoch_bar = bar(run.epochs, f"strong ticket {k}", 0, run.progress)
    for epoch in range(run.epochs):
        total, count = 0.0, 0
        for idx in epoch_batches(len(subset), run.batch_size, gen):
            x, y = fetch(subset, idx)
            masks = ste_masks({n: s.unsqueeze(0) for n, s in scores.items()}, run.keep)
            tensors = {keys[n]: weights[n] * masks[n][0].to(weights[n].dtype) for n in layers}
            with routing(model, k):
                out = functional_call(model, {**tensors, **fixed}, (x.to(device),), strict=False)
            loss = run.loss_fn(out, y.to(device))
            _check_finite(loss, k, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()), count + 1
        if schedule is not None:
            schedule.step()
        epoch_bar.update(1)
        epoch_bar.set_postfix(loss=f"{total / max(count, 1):.3f}")
        if run.log is not None:
            run.log({"stage": "strong_tickets", "ticket": k, "epoch": epoch, "train_loss": total / max(count, 1)})
    epoch_bar.close()


def _train_mixed(model, layers, subsets, scores: list[dict[str, nn.Parameter]], run: _Search) -> None:
    """All K tickets per step: one batch of each subset, concatenated and routed; per-ticket score gradients."""
    k_total = len(subsets)
    device = next(iter(layers.values())).weight.device
    opt, schedule = _make_opt([p for s in scores for p in s.values()], run)
    gens = [torch.Generator().manual_seed(derived_seed(run.seed, k, 1)) for k in range(k_total)]
    steps = max(-(-len(s) // run.batch_size) for s in subsets)
    fixed = _norm_affine(model) if run.nonaffine else {}
    epoch_bar = bar(run.epochs, "strong tickets (mixed)", 0, run.progress)
    for epoch in range(run.epochs):
        batches = [epoch_batches(len(s), run.batch_size, g, steps) for s, g in zip(subsets, gens)]
        totals = [0.0] * k_total
        for step in range(steps):
            parts = [fetch(subsets[k], batches[k][step]) for k in range(k_total)]
            x = torch.cat([p[0] for p in parts]).to(device)
            routes = torch.cat([torch.full((len(p[1]),), k, dtype=torch.int64) for k, p in enumerate(parts)]).to(device)
            stacked = {n: torch.stack([s[n] for s in scores]) for n in layers}
            masks = ste_masks(stacked, run.keep)
            with forward_overrides({layers[n]: mixed_forward(layers[n], masks[n]) for n in layers}), routing(model, routes):
                out = functional_call(model, fixed, (x,), strict=False) if fixed else model(x)
            loss = out.new_zeros(())
            start = 0
            for k, p in enumerate(parts):
                y = p[1].to(device)
                lk = run.loss_fn(out[start : start + len(y)], y)
                _check_finite(lk, k, epoch)
                totals[k] += float(lk.detach())
                loss = loss + lk
                start += len(y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if schedule is not None:
            schedule.step()
        epoch_bar.update(1)
        if run.log is not None:
            run.log({"stage": "strong_tickets", "epoch": epoch, "train_loss": [t / steps for t in totals]})
    epoch_bar.close()
