"""Merging K fine-tuned models: task arithmetic, TIES, EMR, TALL masks and FDA, served as one routed model.

``merge_experts`` is the entry point (see the contract); the methods also work on task vectors
directly (``task_vectors`` → ``task_arithmetic`` / ``ties`` / ``emr`` / ``tall`` → :class:`MaskedMerge`).
"""

from .api import METHODS, merge_experts
from .build import convert_delta, dense_model, routed_model
from .fda import FDAOptions, adapt, adapt_masked, construct_anchors, layer_anchors
from .methods import MaskedMerge, emr, tall, task_arithmetic, ties
from .vectors import task_vectors

__all__ = [
    "METHODS",
    "FDAOptions",
    "MaskedMerge",
    "adapt",
    "adapt_masked",
    "construct_anchors",
    "convert_delta",
    "dense_model",
    "emr",
    "layer_anchors",
    "merge_experts",
    "routed_model",
    "tall",
    "task_arithmetic",
    "task_vectors",
    "ties",
]
