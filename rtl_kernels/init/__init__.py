"""Seeded frozen random weights (``seeded_``) and the SLTH query/key scaling (``scale_qk_``).

The weights come from Philox4x32-10 keyed by ``(seed, layer name, element index)``: the same bits
on every backend, device and thread count, so a save stores the seed instead of the tensor.
"""

from .attention import scale_qk_
from .philox import DISTS, GENERATOR, GENERATOR_VERSION
from .seeded import SeededWeightError, SeedSpec, is_seeded, layer_id, seeded_

__all__ = ["DISTS", "GENERATOR", "GENERATOR_VERSION", "SeedSpec", "SeededWeightError", "is_seeded", "layer_id", "scale_qk_", "seeded_"]
