"""Functional routed ops (differentiable in x, weight and bias) and the helper that declares them."""

from .conv import routed_conv2d
from .define import RoutedOp, define_routed_op
from .linear import routed_linear

__all__ = ["RoutedOp", "define_routed_op", "routed_conv2d", "routed_linear"]
