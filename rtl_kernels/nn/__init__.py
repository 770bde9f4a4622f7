"""RTL layers: drop-in ``nn.Linear`` / ``nn.Conv2d`` with K routed masks over one shared weight."""

from .base import RTLLayer
from .conv import RTLConv2d
from .linear import RTLLinear

__all__ = ["RTLConv2d", "RTLLayer", "RTLLinear"]
