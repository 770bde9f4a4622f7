"""Shared training helpers: seeded batches from any Dataset, the routed forward, one masked step."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset, default_collate

from ..models.routing import routing
from .batching import DEFAULT, Batching, logits_of, to_device
from .optim import MaskedAdam, masked_step

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class NonFiniteLossError(RuntimeError):
    """A non-finite training loss: the message names the stage, the ticket(s) and the round or epoch."""


def routes_label(routes: int | torch.Tensor) -> str:
    """``"ticket 3"`` for a whole-batch route, ``"tickets [0, 2]"`` for per-row routes."""
    if isinstance(routes, torch.Tensor):
        return f"tickets {sorted(routes.unique().tolist())}"
    return f"ticket {routes}"


def derived_seed(seed: int, *parts: int) -> int:
    """A reproducible seed for one unit of work (round, ticket, ...), independent of the order or rank it runs on."""
    value = int(seed) & 0xFFFFFFFF
    for p in parts:
        value = (value * 1_000_003 + int(p) + 1) % (2**31 - 1)
    return value


def check_subsets(subsets: object, only: Sequence[int] | None = None) -> list[Dataset]:
    """``subsets`` as a list, each (or each of ``only``) a non-empty dataset."""
    if not isinstance(subsets, Sequence) or isinstance(subsets, (str, bytes)) or len(subsets) == 0:
        raise TypeError(f"subsets: expected a non-empty sequence of K torch Datasets, got {type(subsets).__name__}")
    for i in range(len(subsets)) if only is None else only:
        s = subsets[i]
        if not hasattr(s, "__getitem__") or not hasattr(s, "__len__"):
            raise TypeError(f"subsets[{i}]: expected a torch Dataset of (input, target) pairs, got {type(s).__name__}")
        if len(s) == 0:
            raise ValueError(f"subsets[{i}]: expected a non-empty dataset, got 0 samples")
    return list(subsets)


def check_positive(name: str, value: object, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, (kind, int)) or value <= 0:
        raise ValueError(f"{name}: expected a positive {kind.__name__}, got {value!r}")


def fetch(dataset: Dataset, index: torch.Tensor, collate_fn: Callable[[list], Any] | None = None) -> Any:
    """The samples at ``index`` as a batch (fast path for tensor datasets and their subsets; ``collate_fn`` replaces default_collate)."""
    if collate_fn is not None:
        return collate_fn([dataset[int(i)] for i in index])
    base, idx = dataset, index
    while isinstance(base, Subset):
        idx = torch.as_tensor(base.indices)[idx]
        base = base.dataset
    if isinstance(base, TensorDataset):
        return tuple(t[idx] for t in base.tensors)  # type: ignore[return-value]
    return default_collate([dataset[int(i)] for i in index])


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, length: int | None = None) -> list[torch.Tensor]:
    """Shuffled index batches over ``n`` samples, cycled to ``length`` batches when given (Alg. 2 balancing)."""
    batches = list(torch.randperm(n, generator=generator).split(batch_size))
    if length is None:
        return batches
    return [batches[i % len(batches)] for i in range(length)]


def concat(subsets: Sequence[Dataset]) -> Dataset:
    """All subsets as one dataset (one ``Subset`` when they index the same base, so batches stay fast)."""
    if len(subsets) == 1:
        return subsets[0]
    if all(isinstance(s, Subset) for s in subsets) and len({id(s.dataset) for s in subsets}) == 1:
        return Subset(subsets[0].dataset, [i for s in subsets for i in s.indices])
    return ConcatDataset(list(subsets))


def routed_loss(
    model: nn.Module, batch: Any, routes: int | torch.Tensor, loss_fn: LossFn, device: torch.device, batching: Batching = DEFAULT
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of one batch under ``routes``, and the model's output (its logits for Hugging Face outputs)."""
    x, y, kwargs = to_device(batching.split(batch), device)
    with routing(model, routes.to(device) if isinstance(routes, torch.Tensor) else routes):
        out = logits_of(model(x, **kwargs))
    return loss_fn(out, y), out


def _culprits(routes: int | torch.Tensor, out: object) -> str:
    """The ticket(s) whose rows made a loss non-finite: rows with non-finite outputs, else every ticket in the batch."""
    if isinstance(routes, torch.Tensor) and isinstance(out, torch.Tensor) and out.shape[:1] == routes.shape:
        bad = ~torch.isfinite(out.detach()).reshape(out.shape[0], -1).all(1)
        if bad.any():
            return routes_label(routes[bad.cpu()])
    return routes_label(routes)


def make_optimizer(model: nn.Module, lr: float, optimizer: OptimizerFactory | None) -> torch.optim.Optimizer:
    """Adam at ``lr`` with masked updates (:class:`MaskedAdam`) unless a factory ``params -> optimizer`` is given."""
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer is None:
        return MaskedAdam(params, lr=lr)
    if not callable(optimizer):
        raise TypeError(
            f"optimizer: expected a callable params -> torch.optim.Optimizer (e.g. functools.partial(torch.optim.SGD, lr=0.1)), got {type(optimizer).__name__}"
        )
    built = optimizer(params)
    if not isinstance(built, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected the factory to return a torch.optim.Optimizer, got {type(built).__name__}")
    return built


def train_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    steps: Iterator[tuple[tuple[torch.Tensor, torch.Tensor], int | torch.Tensor, Mapping[nn.Parameter, torch.Tensor] | None]],
    loss_fn: LossFn,
    where: str = "training",
    batching: Batching = DEFAULT,
) -> float:
    """Run (batch, routes, update masks) steps; returns the mean loss.

    A non-finite loss raises :class:`NonFiniteLossError` (naming ``where``, the ticket(s) and the
    step) before its gradient reaches the weights.
    """
    device = next(model.parameters()).device
    total, n = 0.0, 0
    for batch, routes, update_masks in steps:
        opt.zero_grad(set_to_none=True)
        loss, out = routed_loss(model, batch, routes, loss_fn, device, batching)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"loss: expected a finite training loss, got {value} in {where}, {_culprits(routes, out)}, step {n} of the epoch "
                "(NaN/Inf inputs or a learning rate that is too high?); the model was restored to its state before the call"
            )
        loss.backward()
        masked_step(opt, update_masks)
        total += value
        n += 1
    return total / max(n, 1)


@torch.no_grad()
def predict(
    model: nn.Module, dataset: Dataset, routes: torch.Tensor | int, batch_size: int = 512, batching: Batching = DEFAULT
) -> torch.Tensor:
    """Model outputs for every sample of ``dataset`` (eval mode), routed per sample."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outs = []
    n = len(dataset)
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        x, _, kwargs = to_device(batching.split(fetch(dataset, idx, batching.collate_fn)), device)
        r = routes[idx].to(device) if isinstance(routes, torch.Tensor) else routes
        with routing(model, r):
            outs.append(logits_of(model(x, **kwargs)).cpu())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)
