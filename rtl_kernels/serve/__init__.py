"""Serving routed models: :class:`Batcher` (dynamic mixed-ticket micro-batching), an HTTP server
(``rtl-kernels serve``, FastAPI + uvicorn, ``pip install "rtl-kernels[serve]"``) and a Ray Serve
deployment for scale-out (:func:`ray_deployment`, needs ``ray[serve]``).
"""

from __future__ import annotations

from .batcher import Batcher, BatchStats
from .loading import load_served_model

__all__ = ["BatchStats", "Batcher", "create_app", "load_served_model", "ray_deployment"]


def __getattr__(name: str):
    # the optional engines load on first use
    if name == "create_app":
        from .http import create_app

        return create_app
    if name == "ray_deployment":
        from .ray import ray_deployment

        return ray_deployment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
