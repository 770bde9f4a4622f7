"""Small models for the pipeline: an MLP for the digits and a truncated GhostNet for CIFAR."""

from .ghostnet import MiniGhostNet
from .mlp import MLP

__all__ = ["MLP", "MiniGhostNet", "build_model"]


def build_model(name: str, *, in_features: int, num_classes: int, hidden: int = 128):
    """A zoo model by name: ``"mlp"`` (flat inputs) or ``"ghostnet"`` (3-channel images)."""
    if name == "mlp":
        return MLP(in_features, num_classes, hidden=hidden)
    if name == "ghostnet":
        return MiniGhostNet(num_classes)
    raise ValueError(f"model: expected 'mlp' or 'ghostnet', got {name!r}")
