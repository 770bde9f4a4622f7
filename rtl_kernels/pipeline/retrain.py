"""Joint retraining (the paper's Algorithm 2): one shared weight, each ticket's updates masked by its own mask.

``mode="sequential"`` (the paper): batches hold one subset; for every batch index the K tickets
take one step each, round-robin, and smaller subsets are cycled so every ticket gets the same
number of steps per epoch. ``mode="fused"``: mixed batches (equal rows per subset per epoch),
per-row routes through the routed ops, one step per batch whose update is masked by the union
of the masks of the tickets in that batch. The two agree only to first order: sequential steps
see each other's updates, a fused step sums the tickets' gradients at one point.

Dense parameters (biases, BatchNorm, layers excluded at conversion) are shared and updated on
every step; BatchNorm running statistics therefore mix all subsets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..models.state import named_rtl_layers
from .batching import Batching, cat_batches, check_batching, take
from .progress import bar
from .training import (
    LossFn,
    NonFiniteLossError,
    OptimizerFactory,
    check_positive,
    check_subsets,
    derived_seed,
    epoch_batches,
    fetch,
    make_optimizer,
    train_steps,
)

MODES = ("sequential", "fused")


def ticket_update_masks(model: nn.Module) -> list[dict[nn.Parameter, torch.Tensor]]:
    """For each ticket, ``weight parameter -> bool mask`` of every RTL layer (what that ticket may update)."""
    layers = named_rtl_layers(model)
    k_total = next(iter(layers.values())).num_tickets
    unpacked = {layer.weight: layer.get_masks() for layer in layers.values()}
    return [{p: m[k] for p, m in unpacked.items()} for k in range(k_total)]


def _sequential(subsets, batch_size, gen, masks, collate_fn):
    longest = max(-(-len(s) // batch_size) for s in subsets)
    plans = [epoch_batches(len(s), batch_size, gen, longest) for s in subsets]
    for m in range(longest):
        for k, s in enumerate(subsets):
            yield fetch(s, plans[k][m], collate_fn), k, masks[k]


def _fused(subsets, batch_size, gen, masks, collate_fn):
    longest = max(len(s) for s in subsets)
    rows = []
    for k, s in enumerate(subsets):
        order = torch.randperm(len(s), generator=gen)
        idx = order[torch.arange(longest) % len(s)]
        rows.append(torch.stack([torch.full_like(idx, k), idx], 1))
    table = torch.cat(rows)[torch.randperm(longest * len(subsets), generator=gen)]
    for chunk in table.split(batch_size):
        routes = chunk[:, 0]
        present = routes.unique().tolist()
        parts = [fetch(subsets[k], chunk[routes == k, 1], collate_fn) for k in present]
        order = torch.cat([torch.nonzero(routes == k).squeeze(1) for k in present])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel())
        union = {p: torch.stack([masks[k][p] for k in present]).any(0) for p in masks[0]}
        yield take(cat_batches(parts), inverse), routes, union


def joint_retrain(
    model: nn.Module,
    subsets: Sequence[torch.utils.data.Dataset],
    *,
    epochs: int,
    loss_fn: LossFn,
    lr: float,
    batch_size: int,
    mode: str = "sequential",
    progress: bool = True,
    optimizer: OptimizerFactory | None = None,
    seed: int = 0,
    log: Callable[[dict], None] | None = None,
    batching: Batching | None = None,
) -> list[float]:
    """Train the shared weights of a converted model, ticket ``k`` on ``subsets[k]`` only, masked updates; returns the loss per epoch.

    A weight outside ticket k's mask never moves on ticket k's steps, and a weight outside the
    union of masks never moves at all; masks are not changed. Adam at ``lr`` (:class:`MaskedAdam`,
    update and moments masked per ticket) unless ``optimizer`` gives a factory ``params -> optimizer``.
    A non-finite loss raises :class:`NonFiniteLossError` naming the ticket(s) and the epoch, after
    restoring every weight, mask and BatchNorm statistic to its value before the call.
    ``batching`` (:class:`Batching`) reads dict samples, custom collation and forward keywords.
    """
    subsets = check_subsets(subsets)
    batching = check_batching(batching)
    check_positive("epochs", epochs)
    check_positive("batch_size", batch_size)
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    masks = ticket_update_masks(model)
    if len(masks) != len(subsets):
        raise ValueError(f"subsets: expected one subset per ticket (the model has K = {len(masks)}), got {len(subsets)}")
    torch.manual_seed(derived_seed(seed, 7))
    gen = torch.Generator().manual_seed(derived_seed(seed, 8))
    opt = make_optimizer(model, lr, optimizer)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    losses = []
    epochs_bar = bar(epochs, f"joint retrain ({mode})", 0, progress)
    for epoch in range(epochs):
        plan = _sequential if mode == "sequential" else _fused
        steps = plan(subsets, batch_size, gen, masks, batching.collate_fn)
        try:
            loss = train_steps(model, opt, steps, loss_fn, f"joint_retrain epoch {epoch}", batching)
        except NonFiniteLossError:
            with torch.no_grad():
                model.load_state_dict(before)
            model.train(was_training)
            epochs_bar.close()
            raise
        losses.append(loss)
        if log is not None:
            log({"stage": "retrain", "epoch": epoch, "train_loss": loss})
        epochs_bar.update(1)
        epochs_bar.set_postfix(loss=f"{loss:.3f}")
    epochs_bar.close()
    return losses
