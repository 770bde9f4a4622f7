"""rtl_kernels: fast routed sparse subnetworks (Routing the Lottery) for PyTorch.

K binary masks ("tickets") share one weight tensor; every row of a batch is routed to its
ticket. See ``CONTRACT.md`` for the public surface; ``rtl.available_backends(device)`` lists the
kernels that run on a device.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

from . import nn  # noqa: E402
from .backends.registry import available_backends  # noqa: E402
from .masks import PackedMasks, jaccard, pack_masks  # noqa: E402
from .models import LoadError, RoutedModel, convert, load, masks_of, routing, save, set_masks  # noqa: E402
from .ops import routed_conv2d, routed_linear  # noqa: E402
from .routing_plans.plan import RoutingPlan  # noqa: E402
from .routing_plans.routes import plan_routes, set_route_checks  # noqa: E402

__all__ = [
    "LoadError",
    "PackedMasks",
    "RoutedModel",
    "RoutingPlan",
    "__version__",
    "available_backends",
    "convert",
    "jaccard",
    "load",
    "masks_of",
    "nn",
    "pack_masks",
    "plan_routes",
    "routed_conv2d",
    "routed_linear",
    "routing",
    "save",
    "set_masks",
    "set_route_checks",
]


def __getattr__(name: str):
    # heavy or optional parts load on first use
    import importlib

    if name in ("routers", "pipeline", "init", "merge", "serve"):
        return importlib.import_module(f".{name}", __name__)
    if name == "warmup":  # needs Triton: pre-compiles every kernel a deployment uses
        return importlib.import_module(".backends.triton_backend", __name__).warmup
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
