"""BatchNorm recalibration: each ticket's running statistics recomputed from its own data, after training.

Joint retraining with shared BatchNorm leaves statistics that mix every subset; a routed
BatchNorm (per-ticket statistics) can be given, after the fact, the statistics of exactly the
data each ticket serves. Nothing else changes: no gradient, no weight, no other ticket's statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..models.norms import named_routed_norms
from ..models.routing import routing, rtl_layers
from .batching import Batching, check_batching, to_device
from .imp import check_tickets
from .progress import bar
from .training import check_positive, check_subsets, fetch


@torch.no_grad()
def recalibrate_norms(
    model: nn.Module,
    subsets: Sequence[torch.utils.data.Dataset],
    *,
    batch_size: int = 256,
    tickets: Sequence[int] | None = None,
    batching: Batching | None = None,
    progress: bool = False,
) -> list[int]:
    """Recompute every routed BatchNorm's running statistics of ticket ``k`` from ``subsets[k]``; returns the tickets done.

    Each ticket's statistics are reset and rebuilt as the cumulative average over its subset's
    batches (in order, near-equal sizes of at most ``batch_size``), with the rest of the model in
    eval mode (dropout off; shared BatchNorms keep their statistics) and no gradient. ``tickets``
    limits it to some tickets (the others' statistics, and so their outputs, stay bit for bit; their
    subsets may be None). Every module's training mode and every momentum are restored afterwards.
    Non-finite statistics (NaN/Inf in a subset) raise a ValueError naming the subset, with every
    ticket's statistics restored.
    """
    batching = check_batching(batching)
    check_positive("batch_size", batch_size)
    norms = list(named_routed_norms(model).values())
    if not norms:
        raise ValueError(
            "model: expected routed BatchNorms to recalibrate (rtl.convert(..., routed_norms=True) or rtl.models.convert_norms), found none"
        )
    k_total = rtl_layers(model)[0].num_tickets
    if not isinstance(subsets, Sequence) or isinstance(subsets, (str, bytes)) or len(subsets) != k_total:
        got = len(subsets) if isinstance(subsets, Sequence) else type(subsets).__name__
        raise ValueError(f"subsets: expected one dataset per ticket (the model has K = {k_total}), got {got}")
    done = check_tickets(tickets, k_total)
    subsets = check_subsets(subsets, only=done)
    device = next(model.parameters()).device
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(n, n.momentum) for n in norms]
    saved = [(n, n.running_mean.clone(), n.running_var.clone(), n.num_batches_tracked.clone()) for n in norms]
    tickets_bar = bar(len(done), "recalibrating BatchNorm", 0, progress)
    try:
        model.eval()
        for n in norms:
            n.train()
            n.momentum = None  # cumulative average
        for k in done:
            for n in norms:
                n.running_mean[k] = 0.0
                n.running_var[k] = 1.0
                n.num_batches_tracked[k] = 0
            count = len(subsets[k])
            for idx in torch.arange(count).tensor_split(math.ceil(count / batch_size)):
                x, _, kwargs = to_device(batching.split(fetch(subsets[k], idx, batching.collate_fn)), device)
                with routing(model, k):
                    model(x, **kwargs)
            if not all(bool(torch.isfinite(n.running_mean[k]).all() and torch.isfinite(n.running_var[k]).all()) for n in norms):
                for n, mean, var, tracked in saved:
                    n.running_mean.copy_(mean)
                    n.running_var.copy_(var)
                    n.num_batches_tracked.copy_(tracked)
                raise ValueError(
                    f"subsets[{k}]: recalibrating ticket {k} gave non-finite BatchNorm statistics (NaN/Inf inputs?); "
                    "every ticket's statistics were restored"
                )
            tickets_bar.update(1)
    finally:
        for m, training in modes:
            m.training = training
        for n, momentum in momenta:
            n.momentum = momentum
        tickets_bar.close()
    return done
