"""Datasets by name for the pipeline and CLI: the built-ins, and any the user registers.

A factory is called with keywords ``seed``, ``data_dir`` and ``max_train`` and returns ``(train, test)``
TensorDatasets of ``(inputs, targets)``, exactly as a ``--data module:factory`` plug-in does.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import TensorDataset

from .cifar10 import load_cifar10
from .digits import load_digits
from .mnist import load_mnist_5k, load_mnist_idx

DatasetFactory = Callable[..., tuple[TensorDataset, TensorDataset]]


def _digits(*, seed: int, data_dir: str, max_train: int) -> tuple[TensorDataset, TensorDataset]:
    return load_digits(seed=seed)


def _mnist(*, seed: int, data_dir: str, max_train: int) -> tuple[TensorDataset, TensorDataset]:
    return load_mnist_idx(data_dir) if data_dir else load_mnist_5k(seed=seed)


def _cifar10(*, seed: int, data_dir: str, max_train: int) -> tuple[TensorDataset, TensorDataset]:
    return load_cifar10(data_dir, max_train=max_train)


DATASETS: dict[str, DatasetFactory] = {"digits": _digits, "mnist": _mnist, "cifar10": _cifar10}


def register_dataset(name: str, factory: DatasetFactory) -> None:
    """Make ``factory(seed=..., data_dir=..., max_train=...) -> (train, test)`` loadable as ``dataset = name``."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"name: expected a non-empty dataset name without ':', got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory: expected a callable returning (train, test) TensorDatasets, got {type(factory).__name__}")
    DATASETS[name] = factory
