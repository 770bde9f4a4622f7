"""Ticket masks: bit packing and similarity."""

from .packed import PackedMasks, pack_masks
from .similarity import jaccard

__all__ = ["PackedMasks", "jaccard", "pack_masks"]
