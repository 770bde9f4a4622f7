"""Routers: ``router(x) -> LongTensor [B]`` of ticket ids, on ``x``'s device.

``OracleRouter`` maps known labels (or a context) to tickets, as in the paper; ``CentroidRouter``
picks the nearest subset centroid in a feature space; ``LinearRouter`` is a small trained gate.
The learned ones report routing accuracy (``evaluate``) and plot a confusion matrix.
"""

from .centroid import CentroidRouter
from .entropy import EntropyRouter
from .linear import LinearRouter
from .metrics import confusion_matrix, plot_confusion, routing_report
from .oracle import OracleRouter

__all__ = ["CentroidRouter", "EntropyRouter", "LinearRouter", "OracleRouter", "confusion_matrix", "plot_confusion", "routing_report"]
