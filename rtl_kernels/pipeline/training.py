"""Shared training helpers: seeded batches from any Dataset, the routed forward, one masked step."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset, default_collate

from ..models.routing import routing
from .optim import MaskedAdam, masked_step

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def derived_seed(seed: int, *parts: int) -> int:
    """A reproducible seed for one unit of work (round, ticket, ...), independent of the order or rank it runs on."""
    value = int(seed) & 0xFFFFFFFF
    for p in parts:
        value = (value * 1_000_003 + int(p) + 1) % (2**31 - 1)
    return value


def check_subsets(subsets: object) -> list[Dataset]:
    if not isinstance(subsets, Sequence) or isinstance(subsets, (str, bytes)) or len(subsets) == 0:
        raise TypeError(f"subsets: expected a non-empty sequence of K torch Datasets, got {type(subsets).__name__}")
    for i, s in enumerate(subsets):
        if not hasattr(s, "__getitem__") or not hasattr(s, "__len__"):
            raise TypeError(f"subsets[{i}]: expected a torch Dataset of (input, target) pairs, got {type(s).__name__}")
        if len(s) == 0:
            raise ValueError(f"subsets[{i}]: expected a non-empty dataset, got 0 samples")
    return list(subsets)


def check_positive(name: str, value: object, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, (kind, int)) or value <= 0:
        raise ValueError(f"{name}: expected a positive {kind.__name__}, got {value!r}")


def fetch(dataset: Dataset, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples at ``index`` as a batch (fast path for tensor datasets and their subsets)."""
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
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], routes: int | torch.Tensor, loss_fn: LossFn, device: torch.device
) -> torch.Tensor:
    x, y = batch[0].to(device), batch[1].to(device)
    with routing(model, routes.to(device) if isinstance(routes, torch.Tensor) else routes):
        out = model(x)
    return loss_fn(out, y)


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
) -> float:
    """Run (batch, routes, update masks) steps; returns the mean loss."""
    device = next(model.parameters()).device
    total, n = 0.0, 0
    for batch, routes, update_masks in steps:
        opt.zero_grad(set_to_none=True)
        loss = routed_loss(model, batch, routes, loss_fn, device)
        loss.backward()
        masked_step(opt, update_masks)
        total += float(loss.detach())
        n += 1
    return total / max(n, 1)


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, routes: torch.Tensor | int, batch_size: int = 512) -> torch.Tensor:
    """Model outputs for every sample of ``dataset`` (eval mode), routed per sample."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outs = []
    n = len(dataset)
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        x, _ = fetch(dataset, idx)
        r = routes[idx].to(device) if isinstance(routes, torch.Tensor) else routes
        with routing(model, r):
            outs.append(model(x.to(device)).cpu())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)
