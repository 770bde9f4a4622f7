"""Choosing merge coefficients on validation data: score a set of parameters on a task's dataset."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

Metric = Callable[[torch.Tensor, torch.Tensor], float]


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Number of correct argmax predictions for integer targets; minus the squared error otherwise (higher is better)."""
    if targets.dtype.is_floating_point:
        return -float(((outputs - targets) ** 2).sum())
    return float((outputs.argmax(-1) == targets).sum())


def check_validation(validation: object, num_tasks: int) -> list[Dataset] | None:
    """``validation`` as K datasets of ``(input, target)`` (or None)."""
    if validation is None:
        return None
    if not isinstance(validation, Sequence) or isinstance(validation, (str, bytes, Dataset)):
        raise TypeError(f"validation: expected a sequence of {num_tasks} datasets of (input, target), got {type(validation).__name__}")
    if len(validation) != num_tasks:
        raise ValueError(f"validation: expected one dataset per expert ({num_tasks}), got {len(validation)}")
    for i, ds in enumerate(validation):
        if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__") or len(ds) == 0:
            raise ValueError(f"validation[{i}]: expected a non-empty dataset of (input, target) pairs, got {type(ds).__name__}")
    return list(validation)


@torch.no_grad()
def score(model: nn.Module, state: Mapping[str, torch.Tensor], dataset: Dataset, metric: Metric = accuracy, batch_size: int = 512) -> float:
    """Mean ``metric`` of ``model`` run with parameters ``state`` (by key; others as in the model) over ``dataset``."""
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for x, y in DataLoader(dataset, batch_size=batch_size):
            out = torch.func.functional_call(model, dict(state), (x,))
            total += metric(out, y)
            count += len(y)
    finally:
        model.train(was_training)
    return total / max(count, 1)


def best(candidates: Sequence, evaluate: Callable[[object], float]) -> tuple[object, float]:
    """The candidate with the highest score (the first on ties) and that score."""
    scored = [(evaluate(c), i) for i, c in enumerate(candidates)]
    value, index = max(scored, key=lambda p: (p[0], -p[1]))
    return candidates[index], value
