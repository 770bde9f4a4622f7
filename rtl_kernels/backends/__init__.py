"""Kernel backends behind the routed ops; see :mod:`.registry` for how one plugs in."""

from ..conv_params import ConvParams
from .registry import Backend, Call, available_backends, get_backend, register_backend

__all__ = ["Backend", "Call", "ConvParams", "available_backends", "get_backend", "register_backend"]
