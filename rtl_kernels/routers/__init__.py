"""Routers: ``router(x) -> LongTensor [B]`` of ticket ids, on ``x``'s device.

``OracleRouter`` maps known labels (or a context) to tickets, as in the paper; ``CentroidRouter``
picks the nearest subset centroid in a feature space; ``LinearRouter`` is a small trained gate.
The learned ones report routing accuracy (``evaluate``) and plot a confusion matrix.
``save_router`` / ``load_router`` keep a router as safetensors + JSON (``router_state`` of each class).
"""

from .centroid import CentroidRouter
from .entropy import EntropyRouter
from .linear import LinearRouter
from .metrics import confusion_matrix, plot_confusion, routing_report
from .oracle import OracleRouter
from .store import load_router, register_router_class, save_router

__all__ = [
    "CentroidRouter",
    "EntropyRouter",
    "LinearRouter",
    "OracleRouter",
    "confusion_matrix",
    "load_router",
    "plot_confusion",
    "register_router_class",
    "routing_report",
    "save_router",
]
