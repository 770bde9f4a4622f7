"""Small models for the pipeline, by name: an MLP (digits), LeNet-300-100 and a small CNN (MNIST), a truncated GhostNet (CIFAR).

``MODELS`` maps a name to a factory ``(in_features, num_classes, hidden) -> nn.Module``; add your
own with :func:`register_model` (or give the CLI ``--model module:factory``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .ghostnet import MiniGhostNet
from .mlp import MLP
from .mnist import LeNet300100, SmallCNN

__all__ = ["MLP", "MODELS", "LeNet300100", "MiniGhostNet", "SmallCNN", "build_model", "register_model"]

ModelFactory = Callable[..., nn.Module]

MODELS: dict[str, ModelFactory] = {
    "mlp": lambda *, in_features, num_classes, hidden=128: MLP(in_features, num_classes, hidden=hidden),
    "lenet300": lambda *, in_features, num_classes, hidden=128: LeNet300100(in_features, num_classes),
    "cnn": lambda *, in_features, num_classes, hidden=128: SmallCNN(num_classes),
    "ghostnet": lambda *, in_features, num_classes, hidden=128: MiniGhostNet(num_classes),
}


def register_model(name: str, factory: ModelFactory) -> None:
    """Make ``factory(in_features=..., num_classes=..., hidden=...)`` buildable as ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty model name, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory: expected a callable returning an nn.Module, got {type(factory).__name__}")
    MODELS[name] = factory


def build_model(name: str, *, in_features: int, num_classes: int, hidden: int = 128) -> nn.Module:
    """A model by registered name (``MODELS``) or by ``"module:factory"`` (imported, called with the same keywords)."""
    if name in MODELS:
        factory = MODELS[name]
    elif ":" in name:
        from ..plugins import load_object

        factory = load_object(name, "model")
    else:
        raise ValueError(f"model: expected one of {sorted(MODELS)} or 'module:factory', got {name!r}")
    model = factory(in_features=in_features, num_classes=num_classes, hidden=hidden)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected {name!r} to build an nn.Module, got {type(model).__name__}")
    return model
