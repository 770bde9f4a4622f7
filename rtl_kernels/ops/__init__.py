"""Functional routed ops (differentiable in x, weight and bias)."""

from .conv import routed_conv2d
from .linear import routed_linear

__all__ = ["routed_conv2d", "routed_linear"]
