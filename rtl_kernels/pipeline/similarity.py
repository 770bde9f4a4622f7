"""The subnetwork similarity score (Jaccard overlap of ticket masks) and the collapse controller."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..masks.packed import PackedMasks
from ..masks.similarity import jaccard
from ..models.state import masks_of

MaskDict = Mapping[str, torch.Tensor | PackedMasks]


def mean_others(matrix: torch.Tensor) -> torch.Tensor:
    """Each ticket's mean Jaccard overlap with the other tickets (1.0 when K = 1)."""
    k = matrix.shape[0]
    if k == 1:
        return torch.ones(1, dtype=matrix.dtype)
    return (matrix.sum(1) - matrix.diagonal()) / (k - 1)


def similarity(masks: MaskDict | nn.Module) -> dict:
    """K×K Jaccard (model-level and per layer), each ticket's score (mean overlap with the others) and its mean.

    ``masks`` is a dict ``name -> bool [K, ...] | PackedMasks`` or a converted model. Returns
    ``{"jaccard": [K, K], "per_layer": {name: [K, K]}, "score": [K], "per_layer_score": {name: [K]}, "mean_score": float}``.
    """
    if isinstance(masks, nn.Module):
        masks = masks_of(masks)
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks: expected a dict of name -> masks or a converted model, got {type(masks).__name__}")
    glob = jaccard(masks)
    per_layer = {name: jaccard(value) for name, value in masks.items()}
    score = mean_others(glob)
    return {
        "jaccard": glob,
        "per_layer": per_layer,
        "score": score,
        "per_layer_score": {name: mean_others(j) for name, j in per_layer.items()},
        "mean_score": float(score.mean()),
    }


def to_json(sim: dict) -> dict:
    """The similarity dict with tensors as lists (for JSON files)."""
    return {
        "jaccard": sim["jaccard"].tolist(),
        "per_layer": {k: v.tolist() for k, v in sim["per_layer"].items()},
        "score": sim["score"].tolist(),
        "mean_score": sim["mean_score"],
    }


@dataclass
class CollapseController:
    """Stops pruning when the similarity score moves too fast as sparsity grows (an extension of the paper).

    After every round from the second pruned one on, the slope ``|ΔS| / Δsparsity`` of the mean
    similarity score S is compared with ``threshold``. The first round that exceeds it triggers
    ``action``: ``"stop"`` keeps that round's masks and ends the search, ``"revert"`` goes back to the
    previous round's masks (the target is relaxed to that sparsity). The first pruning round is not
    judged: S always drops from 1.0 there.
    """

    threshold: float
    action: str = "stop"
    history: list[tuple[float, float]] = field(default_factory=list)
    triggered: dict | None = None

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"threshold: expected a positive slope |ΔS|/Δsparsity, got {self.threshold!r}")
        if self.action not in ("stop", "revert"):
            raise ValueError(f"action: expected 'stop' or 'revert', got {self.action!r}")

    def observe(self, round_index: int, sparsity: float, score: float) -> bool:
        """Record a round; True when pruning must stop here."""
        self.history.append((sparsity, score))
        if len(self.history) < 2 or round_index < 1:
            return False
        (s0, v0), (s1, v1) = self.history[-2], self.history[-1]
        slope = abs(v1 - v0) / max(s1 - s0, 1e-12)
        if slope > self.threshold:
            self.triggered = {"round": round_index, "sparsity": s1, "previous_sparsity": s0, "slope": slope, "action": self.action}
            return True
        return False


def collapse_point(sparsities: list[float], scores: list[float]) -> int | None:
    """Index where the score changes fastest per unit sparsity.

    ``sparsities``/``scores`` start at the dense masks (sparsity 0, score 1); the step from there
    to the first pruning round is not judged (the score always drops there).
    """
    if len(scores) < 3:
        return None
    slopes = [abs(scores[i] - scores[i - 1]) / max(sparsities[i] - sparsities[i - 1], 1e-12) for i in range(2, len(scores))]
    return 2 + max(range(len(slopes)), key=slopes.__getitem__)
